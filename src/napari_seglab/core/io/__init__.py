"""Files in and out: image reading with axes and pixel sizes, the checks an untrusted file passes, atomic writes, paths.

Modules: ``_formats`` (:func:`read_image` of TIFF / OME-TIFF, ND2, LIF and CZI files: scenes, channels),
``_tiff`` (TIFF reading, axes, value checks), ``_atomic`` (a write completes or leaves
nothing), ``_paths`` (paths normalised once at the edge, folder scans, never an input overwritten), ``_zarr``
(lazy 2D input from OME-Zarr / TIFF, OME-Zarr output published atomically).
"""

from ._atomic import atomic_path, check_output_path, is_disk_full, write_csv, write_tiff
from ._formats import FORMATS, IMAGE_PATTERNS, image_format, read_image, reading_note
from ._paths import (
    check_pattern,
    check_regular_file,
    ensure_not_input,
    folder_path,
    resolved,
    safe_child,
    scan_folder,
)
from ._tiff import (
    check_image_values,
    file_axes,
    guess_axes,
    memory_headroom,
    normalize_axes,
    probe_tiff,
    read_labels,
    read_pixel_sizes,
    restore_singletons,
    spatial_pixel_size,
)
from ._zarr import LazyImage, OmeZarrWriter, is_zarr_path, open_lazy, write_tiff_tiled

__all__ = [
    "FORMATS", "IMAGE_PATTERNS", "image_format", "reading_note",
    "LazyImage", "OmeZarrWriter", "is_zarr_path", "open_lazy", "write_tiff_tiled",
    "atomic_path", "check_image_values", "check_output_path", "check_pattern", "check_regular_file",
    "ensure_not_input", "file_axes", "folder_path", "guess_axes", "is_disk_full", "memory_headroom", "normalize_axes", "probe_tiff",
    "read_image", "read_labels", "read_pixel_sizes", "resolved", "restore_singletons", "safe_child", "scan_folder", "spatial_pixel_size",
    "write_csv", "write_tiff",
]
