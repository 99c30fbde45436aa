"""Prediction and batch settings, declared once (see :mod:`napari_seglab.core.settings`).

:class:`ModelRunOptions` holds what every run of a model over an image chooses (device,
tiling, test-time augmentation, detection threshold); :class:`PredictOptions` adds splitting
touching objects, :class:`BatchOptions` what a folder run needs. Each field is declared once and
inherited; the fields carry the help text and ranges that ``seglab predict`` / ``seglab batch``
build their options from and the Predict and Batch docks their tooltips and ranges from;
``check()`` applies the rules, and :func:`~napari_seglab.core.predict._image.iter_predict_image` and
:func:`~napari_seglab.core.batch.iter_run_batch` call it, so Python callers get the same answer as the
command line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..settings import check_fields, setting

#: block-wise prediction (``_blocks``): the block side and the halo decoded around it, in pixels; here,
#: without torch, for the command line's options
DEFAULT_BLOCK = 1024
DEFAULT_HALO = 128
#: images above this many pixels (4096 x 4096) go block-wise by themselves, in ``seglab predict`` and in
#: the Predict dock: an 8192 x 8192 flows prediction then peaked at 1.22 GB instead of about 5.9 GB
#: (docs/large-images.md)
AUTO_BLOCK_PIXELS = 4096 * 4096
#: the smallest block side a batch takes (the tile grid's alignment is 32; tests use 64-pixel blocks)
MIN_BLOCK = 64

def _dense(card) -> bool:
    """Families whose network gives a value per pixel (U-Net, FCN): what flips, splitting and probabilities need."""
    return card.kind.dense


#: the families :func:`_dense` accepts, in words (the model catalogue is below this package)
DENSE_TEXT = "per-pixel models (U-Net, FCN)"


def _detects(card) -> bool:
    """Families that score their detections (Mask R-CNN, the box detectors): what a score threshold needs."""
    return not card.kind.dense


DETECTS_TEXT = "models that score their detections (Mask R-CNN, the box detectors)"

#: 3D blocks of the orthogonal method (``_volume_blocks``), in voxels of the decoding grid: the smallest core
#: side (a block is decoded on its own: a core much smaller than a nucleus is mostly halo) and the default
#: side, here without torch for the command line's help
MIN_VOLUME_BLOCK = 8
DEFAULT_VOLUME_BLOCK = 192


def check_volume_blocks(block, halo) -> tuple[int | None, int | None]:
    """``(block, halo)`` of the 3D blocks checked: None (automatic), or whole voxels; InputError otherwise.

    ``block``: 0 (the whole volume at once) or at least :data:`MIN_VOLUME_BLOCK`; ``halo``: 0 or more.
    """
    for name, value in (("block", block), ("halo", halo)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise InputError(f"3D {name} must be a whole number of voxels; got {value!r}")
    if block is not None and block != 0 and not block >= MIN_VOLUME_BLOCK:
        raise InputError(f"3D block side must be 0 (the whole volume at once) or at least {MIN_VOLUME_BLOCK} "
                         f"voxels; got {block}")
    if halo is not None and halo < 0:
        raise InputError(f"3D block halo must be 0 or more voxels; got {halo}")
    return (None if block is None else int(block)), (None if halo is None else int(halo))


#: tile sides: 0 (automatic) or from MIN_TILE to MAX_TILE pixels
MIN_TILE, MAX_TILE = 32, 16384


@dataclass(frozen=True)
class ModelRunOptions:
    """The settings a single prediction and a folder run share; ``check()`` refuses values out of range."""

    device: str = setting("auto", label="device", choices=("auto", "cpu", "cuda", "mps"),
                          help="where to predict: auto (CUDA, then Apple MPS, then the CPU), cpu, cuda or mps")
    tile: int = setting(0, label="tile size", kind=int, low=0, high=MAX_TILE, unit="pixels", metavar="PX",
                        help=f"pixels per tile side, {MIN_TILE} or more; 0 = the largest tile that fits the "
                             "memory budget")
    overlap: float = setting(0.25, label="tile overlap", kind=float, low=0, high=1, high_open=True, metavar="F",
                             help="fraction of a tile shared with its neighbours; their outputs are blended")
    tta: bool = setting(False, label="flip averaging (TTA)", kind=bool, used_by=_dense, used_by_text=DENSE_TEXT,
                        help="test-time augmentation: also predict each tile flipped three ways and average "
                             "(U-Net / FCN; about 4x the time)")
    runtime: str = setting("auto", label="runtime", choices=("torch", "onnx", "auto"),
                           help="what runs the network: torch, onnx (onnxruntime on the CPU, U-Net / FCN; about "
                                "1.4-1.8x faster there, plus about 2 s to convert at load) or auto (torch, then "
                                "onnx once 4 megapixels are predicted in tiles above 256 px, on a CPU with "
                                "onnxruntime installed: where the conversion pays back; block by block the CPU's "
                                "256 px tiles stay with torch, for memory)")
    pixel_size: float | None = setting(None, label="pixel size", kind=float, low=1e-4, high=1e4, unit="µm",
                                       metavar="UM", auto="from the image file's metadata",
                                       help="µm per pixel of images whose file does not say; an image whose pixel "
                                            "size differs from the model's is resampled to it")
    score_threshold: float = setting(0.5, label="score threshold", kind=float, low=0, high=1, metavar="S",
                                     used_by=_detects, used_by_text=DETECTS_TEXT,
                                     help="minimum detection score (Mask R-CNN and the box detectors)")

    volume: bool = setting(False, label="3D objects", kind=bool, flag="--3d", used_by=_dense,
                           used_by_text=DENSE_TEXT,
                           help="z-stacks: objects decoded in 3D that keep one id through the planes (U-Net instance "
                                "models); T stays plane by plane")
    anisotropy: float | None = setting(None, label="anisotropy (z step / pixel)", kind=float, low=0.1, high=50,
                                       metavar="F", auto="from the file's pixel size, else 1",
                                       help="the z step over the pixel size, for --3d")
    volume_method: str = setting("auto", label="3D method", choices=("auto", "orthogonal", "linked"),
                                 flag="--3d-method",
                                 help="orthogonal: the network on YX, ZX and ZY planes, combined and decoded in 3D; "
                                      "linked: 2D objects per plane linked by overlap; auto: orthogonal for the "
                                      "flows and distance heads and for models that learnt ZX/ZY planes, "
                                      "linked for the other boundary-class models")

    def check(self):
        """Every declared field against its Setting, then the tile rule a range cannot say (0, or 32 and more).

        Returns self.
        """
        check_fields(self)
        if getattr(self, "block", None) and self.block < MIN_BLOCK:
            raise InputError(f"block side must be 0 (whole images) or {MIN_BLOCK} pixels and more; got {self.block}")
        if self.tile and self.tile < MIN_TILE:
            raise InputError(f"tile size must be 0 (automatic) or {MIN_TILE} to {MAX_TILE} pixels; got {self.tile}")
        return self


@dataclass(frozen=True)
class PredictOptions(ModelRunOptions):
    """Settings of one prediction."""

    split_instances: bool = setting(False, label="split touching objects", kind=bool, used_by=_dense,
                                    used_by_text=DENSE_TEXT,
                                    help="turn the foreground of a semantic model into one id per object: it "
                                         "snaps to the image's edges, then touching objects are split "
                                         "(watershed)")


@dataclass(frozen=True)
class BatchOptions(ModelRunOptions):
    """Settings of a folder run: the shared prediction settings and the folder's own."""

    pattern: str = setting("*.tif", label="pattern", metavar="GLOB",
                           help="file name pattern, e.g. *.tif or *_dapi.tiff; several separated by ';' "
                                "(*.tif;*.nd2;*.zarr: OME-Zarr folders match too), or 'images' for every format SegLab "
                                "reads (TIFF, ND2, LIF, CZI, OME-Zarr)")
    recursive: bool = setting(False, label="include sub-folders", kind=bool,
                              help="also look in sub-folders (mirrored in the output folder)")
    probabilities: bool = setting(False, label="write probabilities", kind=bool, used_by=_dense,
                                  used_by_text=DENSE_TEXT,
                                  help="also write <stem>_probabilities.tif")
    skip_existing: bool = setting(False, label="skip files already done", kind=bool,
                                  help="skip files whose manifest row says ok and whose outputs exist")
    workers: int | None = setting(None, label="workers", kind=int, low=0, high=4096, metavar="N",
                                  auto="one per core or GPU, as the files need",
                                  help="local worker processes; 0 = in this process, no Dask")
    block: int | None = setting(None, label="block side", kind=int, low=0, high=65536, metavar="PX",
                                auto=f"{DEFAULT_BLOCK} for OME-Zarr inputs and 2D TIFFs above 4096x4096 pixels "
                                     "(U-Net / FCN models), whole for the others",
                                help="predict and measure every file block by block, PX pixels a side (bounded "
                                     "memory; 256 or more is sensible), its labels written as "
                                     "<stem>_labels.ome.zarr; 0 = every file whole (not possible for OME-Zarr "
                                     "inputs)")
    halo: int = setting(DEFAULT_HALO, label="block halo", kind=int, low=0, high=4096, metavar="PX",
                        help="pixels around a block decoded with it (block-wise files): objects up to about this "
                             "size are found exactly as in the whole image")
