"""What the torchvision detectors share: Mask R-CNN and the box families (RetinaNet, FCOS, Faster R-CNN).

Not a family itself (family modules never import each other; they all import
this one). It holds:

- the detection transform without its resize step, pretrained-weight lookup
  (stock COCO weights or an ImageNet backbone from the torch hub cache, or a
  file) and loading of the tensors that fit;
- a CPU-light ResNet-18 FPN backbone for the box families;
- box targets for the box families' loss (from box rows or instance patches);
- the tile loop of the detectors' tiled prediction, and the boxes' cross-tile merge rule.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..errors import InputError
from ..events import TileDone, check_stop
from ..tiling import TilePlan
from ._family import LossInputs, Spec
from ._weights import ChannelAdapter, hub_file, load_matching, load_state_file

#: objects of fewer pixels (slivers cut by the patch border) give no training box
MIN_OBJECT_PIXELS = 4
#: a box thinner than this (pixels) after clipping to the patch is dropped from the targets
MIN_BOX_SIDE = 1.0
#: two detections of one class overlapping more than this (IoU) across tiles are one object
CROSS_TILE_IOU = 0.5
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
T = TypeVar("T")

#: options every box family may store in a checkpoint: (kind, low, high[, list length]);
#: 8192 = the largest patch
BOX_STORED_OPTIONS: Mapping[str, tuple] = {
    "patch": ("int", 32, 8192), "detections_per_img": ("int", 1, 100_000),
    "box_score_thresh": ("num", 0.0, 1.0), "nms_thresh": ("num", 0.01, 1.0),
    "anchor_sizes": ("nums", 1, 4096, 5), "image_mean": ("nums", -1e3, 1e3, 3),
    "image_std": ("nums", 1e-6, 1e3, 3),
}


def option(spec: Spec, defaults: Mapping, key: str):
    """``spec.options[key]``, or the family's default."""
    return (spec.options or {}).get(key, defaults[key])


def check_box_options(spec: Spec, defaults: Mapping) -> None:
    """InputError for options a box family cannot build with (lists of the wrong length, limits below 1)."""
    sizes = option(spec, defaults, "anchor_sizes")
    if not isinstance(sizes, (list, tuple)) or len(sizes) != 5 or min(sizes) < 1:
        raise InputError("box detectors need 5 anchor sizes of at least 1 pixel (one per FPN level)")
    if "aspect_ratios" in defaults:
        ratios = option(spec, defaults, "aspect_ratios")
        if not isinstance(ratios, (list, tuple)) or len(ratios) != 3 or min(ratios) <= 0:
            raise InputError("box detectors need 3 positive anchor aspect ratios")
    if int(option(spec, defaults, "detections_per_img")) < 1:
        raise InputError("detections_per_img must be at least 1")


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform minus the resize: images keep their pixel size."""

    def resize(self, image, target=None):
        return image, target


def no_resize(spec: Spec, defaults: Mapping) -> NoResizeTransform:
    """The transform of ``spec``: its mean/std, no resize (``patch`` only fills torchvision's unused sizes)."""
    patch = int((spec.options or {}).get("patch", 256))
    mean = [float(v) for v in option(spec, defaults, "image_mean")]
    std = [float(v) for v in option(spec, defaults, "image_std")]
    return NoResizeTransform(patch, patch, mean, std)


class DetectorModel(nn.Module):
    """Channel adapter + a torchvision detector.

    ``forward(x (B, C, H, W) float32, targets=None)``: in train mode with
    targets, torchvision's dict of losses; in eval mode, one dict of
    ``boxes`` (N, 4) x0, y0, x1, y1, ``scores`` (N,) and ``labels`` (N,) per image.
    """

    def __init__(self, detector: nn.Module, in_channels: int, n_classes: int):
        super().__init__()
        self.adapt = ChannelAdapter(in_channels)
        self.detector = detector
        self.n_classes = n_classes  # counting background: box classes are 1..n_classes - 1

    def forward(self, x: torch.Tensor, targets: list[dict] | None = None):
        return self.detector(list(self.adapt(x)), targets)


def resnet18_fpn(returned_layers: Sequence[int], extra_blocks: nn.Module | None = None,
                 out_channels: int = 256) -> nn.Module:
    """A ResNet-18 FPN backbone (``out_channels`` per level) with trainable BatchNorm, for training from scratch.

    ``returned_layers``: the ResNet stages feeding the pyramid (1-4); ``extra_blocks``: the levels above
    them (default: a max-pooled level, as torchvision's). The module layout is torchvision's
    ``resnet_fpn_backbone``'s (``body``, ``fpn``), so state dicts of either load into the other.
    """
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    layers = list(returned_layers)
    return BackboneWithFPN(resnet18(weights=None, norm_layer=nn.BatchNorm2d),
                           {f"layer{k}": str(i) for i, k in enumerate(layers)}, [64 * 2 ** (k - 1) for k in layers],
                           out_channels, extra_blocks=extra_blocks or LastLevelMaxPool())


# ----------------------------------------------------------------------------- pretrained weights


def stock_state(detector_weights, backbone_weights, arch: str, pretrained: str, allow_download: bool
                ) -> tuple[dict | None, str, str]:
    """(state dict or None, what it is, where it goes: "detector" | "backbone") for a stock weights name.

    ``detector_weights``: the torchvision COCO weights enum of ``arch`` (None
    when it has none); ``backbone_weights``: its ImageNet backbone weights.
    ``pretrained`` "imagenet" asks for the backbone, "coco" / "voc" for the
    detector, "auto" for the detector and then the backbone. Only files in the
    torch hub cache are read, unless ``allow_download``.
    """
    order = []
    if pretrained != "imagenet" and detector_weights is not None:
        order.append((detector_weights, "detector"))
    if pretrained in ("imagenet", "auto") or detector_weights is None:
        order.append((backbone_weights, "backbone"))
    for weights, target in order:
        cached = hub_file(weights.url)
        if cached.is_file():
            return load_state_file(cached), f"stock weights {weights}", target
        if allow_download:
            return weights.get_state_dict(progress=False, check_hash=True), f"stock weights {weights}", target
    names = " or ".join(os.path.basename(w.url) for w, _ in order)
    return None, (f"stock {arch} weights ({names}) are not in the torch cache {hub_file(order[0][0].url).parent}; "
                  "random initialisation"), ""


def coco_weights(arch: str, name: str, v2_name: str | None = None):
    """torchvision's COCO weights enum of a ResNet-50 ``arch`` (looked up by class name; ``v2_name`` for
    ``*_v2``), or None for our ResNet-18 architectures, which have none."""
    if "resnet50" not in arch:
        return None
    from torchvision.models import detection

    return getattr(detection, v2_name if v2_name and arch.endswith("_v2") else name).DEFAULT


def backbone_weights(arch: str):
    """The ImageNet weights of the ResNet under a detector architecture (ResNet-50, or our ResNet-18)."""
    from torchvision.models import ResNet18_Weights, ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1 if "resnet50" in arch else ResNet18_Weights.IMAGENET1K_V1


def load_pretrained(detector: nn.Module, pretrained: str | None, allow_download: bool, arch: str,
                    detector_weights, backbone_weights) -> str:
    """Load ``pretrained`` into ``detector`` (a torchvision detector); returns the weights note.

    ``pretrained``: None (random), a stock name (see :func:`stock_state`; a
    note says when the file is absent, and the model stays random), or a path
    to a state dict (a torchvision detector or one of ours). Heads whose shape
    does not fit the number of classes keep their fresh initialisation.
    """
    if not pretrained:
        return "random initialisation"
    if pretrained in ("coco", "voc", "auto", "imagenet"):
        state, note, target = stock_state(detector_weights, backbone_weights, arch, pretrained, allow_download)
        if state is not None:
            load_matching(detector.backbone.body if target == "backbone" else detector, state, note)
        return note
    state = load_state_file(pretrained)
    state = {k.removeprefix("detector."): v for k, v in state.items() if not k.startswith("adapt.")}
    n = load_matching(detector, state, str(pretrained))
    return f"weights from {pretrained} ({n} tensors)"


# ----------------------------------------------------------------------------- training targets


def object_slices(instances: np.ndarray, min_pixels: int = MIN_OBJECT_PIXELS
                  ) -> tuple[np.ndarray, list[tuple[int, tuple[slice, slice]]]]:
    """The objects of a (P, Q) integer instance patch (0 = background) that training can learn from.

    Returns (the patch with its ids renumbered 1..N in ascending order of
    the original ids, [(renumbered id, bounding slices)] of the objects of at
    least ``min_pixels`` pixels): slivers cut by the patch border give no
    target, for Mask R-CNN and the box detectors alike.
    """
    inst = np.asarray(instances)
    ids = np.unique(inst)
    ids = ids[ids > 0]
    if not ids.size:
        return np.zeros(inst.shape, np.intp), []
    compact = np.searchsorted(ids, inst) + 1
    compact[inst <= 0] = 0
    kept = [(i, sl) for i, sl in enumerate(ndi.find_objects(compact), start=1)
            if sl is not None and np.count_nonzero(compact[sl] == i) >= min_pixels]
    return compact, kept


def boxes_from_instances(instances: np.ndarray, min_pixels: int = MIN_OBJECT_PIXELS) -> np.ndarray:
    """(N, 5) float32 [y0, x0, y1, x1, 1] boxes of the objects of a (P, Q) integer instance patch.

    y1/x1 are exclusive pixel edges; objects under ``min_pixels`` pixels
    (slivers cut by the patch border) are dropped, as Mask R-CNN drops them.
    """
    _, objects = object_slices(instances, min_pixels)
    rows = [[sl[0].start, sl[1].start, sl[0].stop, sl[1].stop, 1] for _, sl in objects]
    return np.asarray(rows, np.float32).reshape(len(rows), 5)


def box_target(boxes: np.ndarray, shape: tuple[int, int], n_classes: int) -> dict:
    """torchvision's target of one patch from (N, 5) [y0, x0, y1, x1, class] rows in patch pixels.

    Boxes are clipped to the patch; those thinner than :data:`MIN_BOX_SIDE`
    after clipping are dropped (torchvision refuses empty boxes). Returns
    ``boxes`` (N, 4) float32 x0, y0, x1, y1 and ``labels`` (N,) int64.
    """
    b = np.asarray(boxes, np.float32).reshape(-1, 5)
    cls = b[:, 4]
    if b.shape[0] and (np.any(cls < 1) or np.any(cls >= n_classes) or np.any(cls != np.round(cls))):
        bad = cls[(cls < 1) | (cls >= n_classes) | (cls != np.round(cls))][0]
        raise InputError(f"box class {bad:g} does not fit a model of {n_classes - 1} object class(es) "
                         f"(classes 1..{n_classes - 1})")
    h, w = shape
    y0, y1 = np.clip(b[:, 0], 0, h), np.clip(b[:, 2], 0, h)
    x0, x1 = np.clip(b[:, 1], 0, w), np.clip(b[:, 3], 0, w)
    keep = ((y1 - y0) >= MIN_BOX_SIDE) & ((x1 - x0) >= MIN_BOX_SIDE)
    xyxy = np.stack([x0, y0, x1, y1], axis=1)[keep]
    return {"boxes": torch.from_numpy(np.ascontiguousarray(xyxy, np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(cls[keep].astype(np.int64))}


def batch_box_targets(batch: LossInputs, n_classes: int) -> list[dict]:
    """One torchvision target per image of ``batch``: from ``batch.boxes``, else one box per instance object."""
    n, shape = batch.images.shape[0], tuple(batch.images.shape[-2:])
    if batch.boxes is not None:
        rows = list(batch.boxes)
    elif batch.instances is not None:
        rows = [boxes_from_instances(inst) for inst in batch.instances]
    else:
        raise InputError("box detectors train on boxes or on instance labels (each object its own id)")
    if len(rows) != n:
        raise InputError(f"{len(rows)} box lists for a batch of {n} images")
    device = batch.images.device
    return [{k: v.to(device) for k, v in box_target(r, shape, n_classes).items()} for r in rows]


def detector_loss(model: DetectorModel, batch: LossInputs) -> torch.Tensor:
    """Sum of a box detector's losses on ``batch`` (the families' loss hook; puts ``model`` in train mode).

    Patches without boxes are negatives: they train the detector on background.
    """
    model.train()
    losses = model(batch.images, batch_box_targets(batch, model.n_classes))
    return sum(losses.values())


# ----------------------------------------------------------------------------- tiled prediction


def _score_floors(detector: nn.Module) -> list[tuple[object, float]]:
    """(object, saved value) of each ``score_thresh`` the detector filters its outputs with."""
    owners = [detector, getattr(detector, "roi_heads", None)]
    return [(o, o.score_thresh) for o in owners if o is not None and hasattr(o, "score_thresh")]


def tile_boxes(model: nn.Module, x: torch.Tensor, score_threshold: float) -> np.ndarray:
    """Detections of one (1, C, H, W) tile as (N, 6) float32 [y0, x0, y1, x1, class, score], best first.

    Candidates under ``score_threshold`` are dropped inside the detector
    (before its NMS and top-k), which is also faster; so are boxes thinner
    than :data:`MIN_BOX_SIDE` (clipped to the tile edge, they can be empty),
    and class 0: the one-stage detectors score a column for it (torchvision
    counts background among their classes), but it is never an object class.
    """
    detector = getattr(model, "detector", model)
    saved = _score_floors(detector)
    for owner, value in saved:
        owner.score_thresh = max(value, score_threshold)
    try:
        out = model(x)[0]
    finally:
        for owner, value in saved:
            owner.score_thresh = value
    boxes, scores = out["boxes"].float().cpu().numpy(), out["scores"].float().cpu().numpy()
    labels = out["labels"].cpu().numpy().astype(np.float32)
    keep = (scores >= score_threshold) & (labels >= 1) & (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE) \
        & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE)
    rows = np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2], labels, scores], axis=1)[keep]
    return rows[np.argsort(-rows[:, 5], kind="stable")].astype(np.float32).reshape(-1, 6)


def in_core(rows: np.ndarray, core: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Boolean mask of the (N, 6) plane-pixel rows whose box centre lies in ``core`` ((y lo, y hi), (x lo, x hi))."""
    (cy0, cy1), (cx0, cx1) = core
    yc, xc = (rows[:, 0] + rows[:, 2]) / 2, (rows[:, 1] + rows[:, 3]) / 2
    return (yc >= cy0) & (yc < cy1) & (xc >= cx0) & (xc < cx1)


def merge_tile_boxes(per_tile: Sequence[tuple[tuple[int, int], tuple, np.ndarray]],
                     iou: float = CROSS_TILE_IOU) -> list[dict]:
    """Merge per-tile detections into one list of plane rows, each object once.

    ``per_tile``: (tile origin (y0, x0), tile core (see
    :meth:`~napari_seglab.core.tiling.TilePlan.cores`), (N, 6) rows in tile pixels). The rule:
    a detection is kept only by the tile whose core holds its box centre (the
    cores partition the plane, and an object whose centre lies in a core is
    whole in that tile when the overlap is at least its half size); then a
    class-wise NMS at ``iou`` over the whole plane removes the duplicates two
    tiles make of one object whose two centres fall on either side of a core
    border. Returns rows y0, x0, y1, x1, class, score, best score first.
    """
    from torchvision.ops import batched_nms

    kept = []
    for (oy, ox), core, rows in per_tile:
        rows = np.asarray(rows, np.float32).reshape(-1, 6).copy()
        rows[:, [0, 2]] += oy
        rows[:, [1, 3]] += ox
        kept.append(rows[in_core(rows, core)])
    rows = np.concatenate(kept) if kept else np.zeros((0, 6), np.float32)
    if len(rows):
        t = torch.from_numpy(rows)
        order = batched_nms(t[:, [1, 0, 3, 2]], t[:, 5], t[:, 4].long(), iou).numpy()
        rows = rows[order]
    return [{"y0": round(float(r[0]), 2), "x0": round(float(r[1]), 2), "y1": round(float(r[2]), 2),
             "x1": round(float(r[3]), 2), "class": int(r[4]), "score": round(float(r[5]), 4)} for r in rows]


def detect_tile(lm, chw: np.ndarray, detect: Callable[[nn.Module, torch.Tensor], T]) -> T:
    """``detect(model, x)`` on one (C, h, w) tile moved to ``lm``'s device as x (1, C, h, w) float32.

    Runs in inference mode and ``lm``'s precision; an out-of-memory error on
    the device comes out of here (the caller's policy retries the plane).
    """
    x = torch.from_numpy(np.ascontiguousarray(chw, np.float32))[None].to(lm.device)
    # grad mode is thread-local: enter it per tile, never across a yield
    with torch.inference_mode(), lm.precision.autocast():
        return detect(lm.model, x)


def iter_detector_tiles(lm, chw: np.ndarray, *, tile: int, overlap: float,
                        detect: Callable[[nn.Module, torch.Tensor], T], stop: threading.Event | None = None
                        ) -> Generator[TileDone, None, list[tuple[tuple[int, int], tuple, T]]]:
    """The tile loop of the torchvision detectors: ``detect`` on every tile of a fixed plan.

    ``lm`` is a :class:`~napari_seglab.core.predict.LoadedModel`, ``chw`` a
    normalised (C, Y, X) plane. Tiles are :meth:`TilePlan.fixed` (every tile
    the same size, which the detectors' anchors expect). Yields TileDone per
    tile; returns (tile origin (y0, x0), tile core, ``detect``'s result) per
    tile, the input of the cross-tile merges; raises Stopped when ``stop`` is
    set between two tiles.
    """
    plan = TilePlan.fixed(chw.shape[-2:], tile, overlap)
    tile_y, tile_x = plan.size
    lm.model.eval()
    found = []
    origins = plan.origins()
    for i, ((y0, x0), core) in enumerate(zip(origins, plan.cores(), strict=True)):
        check_stop(stop)
        found.append(((y0, x0), core, detect_tile(lm, chw[:, y0:y0 + tile_y, x0:x0 + tile_x], detect)))
        yield TileDone(i + 1, len(origins))
    return found


def predict_boxes_tiled(lm, chw: np.ndarray, *, tile: int, overlap: float, score_threshold: float = 0.5,
                        stop: threading.Event | None = None
                        ) -> Generator[TileDone, None, tuple[np.ndarray, list[dict]]]:
    """Detect boxes in a normalised (C, Y, X) float32 plane tile by tile.

    ``lm`` is a :class:`~napari_seglab.core.predict.LoadedModel`. Yields
    TileDone per tile; returns (an all-zero (Y, X) int32 label plane, rows)
    with rows y0, x0, y1, x1 (plane pixels, y1/x1 exclusive), class, score at
    or above ``score_threshold``, merged across tiles by
    :func:`merge_tile_boxes`; raises Stopped when ``stop`` is set.
    """
    def detect(model, x):
        return tile_boxes(model, x, score_threshold)

    per_tile = yield from iter_detector_tiles(lm, chw, tile=tile, overlap=overlap, detect=detect, stop=stop)
    return np.zeros(chw.shape[-2:], np.int32), merge_tile_boxes(per_tile)
