"""Batch jobs: a folder of images in, labels, probabilities, tables and a manifest out; Dask tasks.

:func:`iter_run_batch` is the generator (the blocking twin is
:func:`napari_seglab.core.api.run_batch`). Modules: ``_run`` (the job), ``_task`` (one file, as a
worker runs it), ``_dask`` (local clusters and schedulers), ``_manifest`` (the run's manifest),
``_outputs`` (output names, object tables), ``_blocks`` (large files and OME-Zarr block by block:
which files, and one such file's prediction, measurements and outputs).
"""

from ._dask import open_client
from ._manifest import (
    MANIFEST_COLUMNS,
    ManifestWriter,
    join_outputs,
    quote_name,
    read_manifest,
    split_outputs,
    unquote_name,
)
from ._outputs import measure_labels, object_columns
from ._run import iter_run_batch
from ._task import usable_cpus

__all__ = [
    "MANIFEST_COLUMNS", "ManifestWriter", "iter_run_batch", "join_outputs", "measure_labels",
    "object_columns", "open_client", "quote_name", "read_manifest", "split_outputs", "unquote_name", "usable_cpus",
]
