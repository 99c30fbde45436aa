"""Prediction and batch settings, declared once (see :mod:`napari_seglab.core.settings`).

:class:`PredictOptions` holds what a user chooses when predicting (device,
tiling, splitting, test-time augmentation, detection threshold);
:class:`BatchOptions` adds what a folder run needs. Their fields carry the help
text and ranges that ``seglab predict`` / ``seglab batch`` build their options
from and the Predict and Batch docks their tooltips and ranges from;
``check()`` applies the rules, and :func:`~napari_seglab.core.predict._image.iter_predict_image` and
:func:`~napari_seglab.core.batch.iter_run_batch` call it, so Python callers get the same answer as the
command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from ..settings import Setting, check_fields, setting

#: tile sides: 0 (automatic) or from MIN_TILE to MAX_TILE pixels
MIN_TILE, MAX_TILE = 32, 16384
DEVICE_HELP = "where to predict: auto (CUDA, then Apple MPS, then the CPU), cpu, cuda or mps"


def _check(options) -> None:
    """Every field against its Setting, then the tile rule a range cannot say (0, or 32 and more)."""
    check_fields(options)
    if options.tile and options.tile < MIN_TILE:
        raise InputError(f"tile size must be 0 (automatic) or {MIN_TILE} to {MAX_TILE} pixels; got {options.tile}")


#: the settings predict and batch share, declared here once
DEVICE = Setting(DEVICE_HELP, "device", choices=("auto", "cpu", "cuda", "mps"))
TILE = Setting(f"pixels per tile side, {MIN_TILE} or more; 0 = the largest tile that fits the memory budget",
               "tile size", int, low=0, high=MAX_TILE, unit="pixels", metavar="PX")
OVERLAP = Setting("fraction of a tile shared with its neighbours; their outputs are blended", "tile overlap",
                  float, low=0, high=1, high_open=True, metavar="F")
TTA = Setting("test-time augmentation: also predict each tile flipped three ways and average (U-Net / FCN; "
              "about 4x the time)", "flip averaging (TTA)", bool)


def _declared(default, declaration: Setting):
    return field(default=default, metadata={"setting": declaration})


@dataclass(frozen=True)
class PredictOptions:
    """Settings of one prediction; ``check()`` refuses values out of range (a :class:`SettingError`)."""

    device: str = _declared("auto", DEVICE)
    tile: int = _declared(0, TILE)
    overlap: float = _declared(0.25, OVERLAP)
    split_instances: bool = setting(False, label="split touching objects", kind=bool,
                                    help="turn the foreground of a semantic model into one id per object: it "
                                         "snaps to the image's edges, then touching objects are split "
                                         "(watershed)")
    tta: bool = _declared(False, TTA)
    score_threshold: float = setting(0.5, label="score threshold", kind=float, low=0, high=1, metavar="S",
                                     help="minimum detection score (Mask R-CNN and the box detectors)")

    def check(self) -> PredictOptions:
        _check(self)
        return self


@dataclass(frozen=True)
class BatchOptions:
    """Settings of a folder run; the prediction settings are :class:`PredictOptions`' own."""

    pattern: str = setting("*.tif", label="pattern", metavar="GLOB",
                           help="file name pattern, e.g. *.tif or *_dapi.tiff")
    recursive: bool = setting(False, label="include sub-folders", kind=bool,
                              help="also look in sub-folders (mirrored in the output folder)")
    probabilities: bool = setting(False, label="write probabilities", kind=bool,
                                  help="also write <stem>_probabilities.tif")
    skip_existing: bool = setting(False, label="skip files already done", kind=bool,
                                  help="skip files whose manifest row says ok and whose outputs exist")
    workers: int | None = setting(None, label="workers", kind=int, low=0, high=4096, metavar="N",
                                  auto="one per core or GPU, as the files need",
                                  help="local worker processes; 0 = in this process, no Dask")
    device: str = _declared("auto", DEVICE)
    tile: int = _declared(0, TILE)
    overlap: float = _declared(0.25, OVERLAP)
    tta: bool = _declared(False, TTA)

    def check(self) -> BatchOptions:
        _check(self)
        return self


