"""The ``maskrcnn`` family: torchvision Mask R-CNN for microscopy: model, targets and loss, tiled prediction.

The detector is torchvision's Mask R-CNN: ``maskrcnn_resnet18_fpn`` (ours, the
default on a CPU: a ResNet-18 FPN with narrow heads, :func:`light_maskrcnn`)
or torchvision's ``maskrcnn_resnet50_fpn`` (and ``_v2``; the default on a GPU,
and the architecture of the stock COCO weights), with settings for many small
objects (``ModelSpec.options`` overrides each):

- anchors of 8..128 px instead of 32..512 px (nuclei are 10-40 px wide);
- up to 1000 detections per image and more region proposals, because a field
  of view holds hundreds of nuclei (torchvision keeps 100);
- no resizing: torchvision scales every image so its short side is 800 px,
  which would upsample a 256 px tile three-fold (slow, and objects the size
  the model never saw in training). Our tiles and patches are fed at their own
  pixel size instead (``min_size``/``max_size`` cannot express that for
  non-square tiles, so the transform's resize step is the identity);
- ImageNet mean/std, which suit our percentile-normalised input (~0..1) and
  the stock COCO weights alike.

Stock COCO weights are used only when already on disk (torch hub cache) or
given as a file; the module layout never depends on that choice, so a
checkpoint rebuilds with ``build_maskrcnn(spec, None, False)``.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..events import TileDone
from ._catalogue import CATALOGUE
from ._detector import (
    MIN_OBJECT_PIXELS,
    NoResizeTransform,
    backbone_weights,
    coco_weights,
    iter_detector_tiles,
    load_pretrained,
    object_slices,
    resnet18_fpn,
)
from ._family import Family, LossInputs, Spec
from ._weights import ChannelAdapter

#: the CPU-light architecture (see :func:`light_maskrcnn`; no stock weights, an ImageNet backbone when asked)
LIGHT_ARCH = "maskrcnn_resnet18_fpn"
#: its pyramid channels, box-head width and mask-head convolutions: a training step costs ~1/15 of the
#: torchvision heads' on a ResNet-18 FPN (batch 8 of 128 px, 1 thread: 1.7 s against 21-34 s), where the
#: 4 x 256-channel mask convolutions over 512 sampled regions cost more than the whole backbone
LIGHT_FPN, LIGHT_BOX_HEAD, LIGHT_MASK_HEAD = 128, 256, (64, 64)

DEFAULTS = {
    "anchor_sizes": [8, 16, 32, 64, 128],
    "aspect_ratios": [0.5, 1.0, 2.0],
    "detections_per_img": CATALOGUE["maskrcnn"].max_objects,
    "rpn_pre_nms_top_n": 2000,  # per feature level, at prediction (torchvision: 1000)
    "rpn_post_nms_top_n": 1500,  # at prediction (torchvision: 1000)
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "box_score_thresh": 0.05,
    "box_batch_size_per_image": 256,  # sampled regions per training image (torchvision: 512)
    "rpn_train_top_n": 1000,  # proposals kept while training (torchvision: 2000)
}


#: the light architecture's own defaults: fewer sampled regions per training image (their heads' cost)
LIGHT_DEFAULTS = {**DEFAULTS, "box_batch_size_per_image": 64}


def _option(spec: Spec, key: str):
    return spec.options.get(key, (LIGHT_DEFAULTS if spec.arch == LIGHT_ARCH else DEFAULTS)[key])


class MaskRCNNModel(nn.Module):
    """Channel adapter + torchvision Mask R-CNN.

    ``forward(x (B, C, H, W) float32, targets=None)``: in train mode with
    targets, torchvision's loss dict; in eval mode, torchvision's detections
    (masks pasted at full image size). :meth:`detect` returns compact masks.
    """

    def __init__(self, detector: nn.Module, in_channels: int):
        super().__init__()
        self.adapt = ChannelAdapter(in_channels)
        self.detector = detector

    def forward(self, x: torch.Tensor, targets: list[dict] | None = None):
        return self.detector(list(self.adapt(x)), targets)

    def detect(self, x: torch.Tensor, score_threshold: float = 0.0) -> list[dict]:
        """Eval-mode detections per image without pasting masks (memory: O(N * 28 * 28), not O(N * H * W)).

        Boxes scoring under ``score_threshold`` are dropped before the mask
        head runs (an untrained model scores hundreds of boxes near 0.5).

        Returns dicts with ``boxes`` (N, 4) x0,y0,x1,y1 in image pixels,
        ``scores`` (N,), ``labels`` (N,) and ``masks`` (N, 1, M, M)
        probabilities in the frame of each box (torchvision's mask head output).
        """
        det = self.detector
        images, _ = det.transform(list(self.adapt(x)))
        features = det.backbone(images.tensors)
        proposals, _ = det.rpn(images, features)
        heads = det.roi_heads
        saved = heads.score_thresh
        heads.score_thresh = max(saved, score_threshold)
        try:
            detections, _ = heads(features, proposals, images.image_sizes)
        finally:
            heads.score_thresh = saved
        return detections


def stock_weights(arch: str):
    """The torchvision COCO weights enum of ``arch`` (None for the ResNet-18 architecture, which has none)."""
    return coco_weights(arch, "MaskRCNN_ResNet50_FPN_Weights", "MaskRCNN_ResNet50_FPN_V2_Weights")


def light_maskrcnn(n_classes: int, anchors: nn.Module, settings: dict) -> nn.Module:
    """Mask R-CNN on a ResNet-18 FPN for a CPU: P2-P5 and a pooled P6 as torchvision's ResNet-50 builder,
    :data:`LIGHT_FPN` channels per level, a :data:`LIGHT_BOX_HEAD`-wide box head and two
    :data:`LIGHT_MASK_HEAD` mask convolutions; BatchNorm trains (from scratch)."""
    from torchvision.models import detection
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    pooled = 7 * 7  # torchvision's box RoIAlign output
    return detection.MaskRCNN(
        resnet18_fpn([1, 2, 3, 4], out_channels=LIGHT_FPN), None, rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(LIGHT_FPN * pooled, LIGHT_BOX_HEAD), box_predictor=FastRCNNPredictor(LIGHT_BOX_HEAD, n_classes),
        mask_head=MaskRCNNHeads(LIGHT_FPN, list(LIGHT_MASK_HEAD), 1),
        mask_predictor=MaskRCNNPredictor(LIGHT_MASK_HEAD[-1], LIGHT_MASK_HEAD[-1], n_classes), **settings)


def build_maskrcnn(spec: Spec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    """Mask R-CNN of ``spec`` (arch ``maskrcnn_resnet18_fpn``, ``maskrcnn_resnet50_fpn[_v2]``); returns (model, weights note).

    ``pretrained``: None (random), ``"coco"`` / ``"voc"`` / ``"auto"`` (stock
    COCO weights when cached; ``auto`` then tries the ImageNet backbone),
    ``"imagenet"`` (backbone only), or a path to a state dict (a torchvision
    Mask R-CNN or one of ours). Box and mask predictors whose shape does not
    fit ``spec.n_classes`` keep their fresh initialisation.
    """
    from torchvision.models import detection
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple((int(s),) for s in _option(spec, "anchor_sizes"))
    ratios = (tuple(float(r) for r in _option(spec, "aspect_ratios")),) * len(sizes)
    if len(sizes) != 5 or len(ratios[0]) != 3:
        raise InputError("Mask R-CNN options need 5 anchor sizes (one per FPN level) and 3 aspect ratios")
    mean, std = list(_option(spec, "image_mean")), list(_option(spec, "image_std"))
    # the sizes of torchvision's resize step, which NoResizeTransform skips; checkpoints before
    # CheckpointMeta recorded the training patch here
    patch = int(spec.options.get("patch", 256))
    settings = dict(
        min_size=patch, max_size=patch, image_mean=mean, image_std=std,
        box_detections_per_img=int(_option(spec, "detections_per_img")),
        box_score_thresh=float(_option(spec, "box_score_thresh")),
        box_batch_size_per_image=int(_option(spec, "box_batch_size_per_image")),
        rpn_pre_nms_top_n_train=int(_option(spec, "rpn_train_top_n")),
        rpn_post_nms_top_n_train=int(_option(spec, "rpn_train_top_n")),
        rpn_pre_nms_top_n_test=int(_option(spec, "rpn_pre_nms_top_n")),
        rpn_post_nms_top_n_test=int(_option(spec, "rpn_post_nms_top_n")),
    )
    anchors = AnchorGenerator(sizes, ratios)
    if spec.arch == LIGHT_ARCH:
        detector = light_maskrcnn(spec.n_classes, anchors, settings)
    else:
        detector = getattr(detection, spec.arch)(weights=None, weights_backbone=None, num_classes=spec.n_classes,
                                                 **settings)
        detector.rpn.anchor_generator = anchors  # the v2 builder fixes its own: ours has the same 3 per location
    detector.transform = NoResizeTransform(patch, patch, mean, std)
    note = load_pretrained(detector, pretrained, allow_download, spec.arch, stock_weights(spec.arch),
                           backbone_weights(spec.arch))
    return MaskRCNNModel(detector, spec.in_channels), note


# ----------------------------------------------------------------------------- training


def detection_targets(instances: np.ndarray, min_pixels: int = MIN_OBJECT_PIXELS) -> dict:
    """torchvision targets from a (P, Q) integer instance patch (0 = background).

    Returns ``boxes`` (N, 4) float32 x0, y0, x1, y1 (pixel edges, x1/y1
    exclusive), ``labels`` (N,) int64 (all 1) and ``masks`` (N, P, Q) uint8.
    Objects under ``min_pixels`` pixels (slivers cut by the patch border) are
    dropped; an empty patch gives N = 0.
    """
    compact, objects = object_slices(instances, min_pixels)
    boxes = [[sl[1].start, sl[0].start, sl[1].stop, sl[0].stop] for _, sl in objects]
    masks = [compact == i for i, _ in objects]
    n = len(boxes)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "labels": torch.ones(n, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)) if n
        else torch.zeros((0, *compact.shape), dtype=torch.uint8),
    }


def detection_loss(model: nn.Module, images: torch.Tensor, instances: Sequence[np.ndarray]) -> torch.Tensor:
    """Sum of Mask R-CNN's losses on a batch (puts ``model`` in train mode).

    ``images``: (B, C, P, P) float32 normalised, on the model's device;
    ``instances``: B integer (P, P) object-id arrays. Patches without objects
    train the detector on background.
    """
    if instances is None or len(instances) != images.shape[0]:
        raise InputError("Mask R-CNN training needs one instance mask per image")
    model.train()
    targets = [{k: v.to(images.device) for k, v in detection_targets(inst).items()} for inst in instances]
    losses = model(images, targets)
    return sum(losses.values())


# ----------------------------------------------------------------------------- prediction


def _paste_compact(mask: torch.Tensor, box: Sequence[float], h: int, w: int) -> tuple[int, int, np.ndarray]:
    """A (M, M) box-frame mask probability -> (y0, x0, bool crop) in a (h, w) tile, threshold 0.5."""
    m = mask.shape[-1]
    scale = (m + 2) / m  # the mask head's output has a one-pixel margin around the box
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * scale, (y1 - y0) / 2 * scale
    bx0, by0, bx1, by1 = (int(round(v)) for v in (cx - hw, cy - hh, cx + hw, cy + hh))
    bw, bh = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
    padded = F.pad(mask.reshape(1, 1, m, m).float(), (1, 1, 1, 1))
    full = F.interpolate(padded, size=(bh, bw), mode="bilinear", align_corners=False)[0, 0] > 0.5
    ty0, tx0, ty1, tx1 = max(by0, 0), max(bx0, 0), min(by0 + bh, h), min(bx0 + bw, w)
    crop = full[ty0 - by0:ty1 - by0, tx0 - bx0:tx1 - bx0].cpu().numpy() if ty1 > ty0 and tx1 > tx0 else None
    return _trim(ty0, tx0, crop)


def _trim(y0: int, x0: int, crop: np.ndarray | None) -> tuple[int, int, np.ndarray]:
    """Shrink a bool crop at (y0, x0) to the bounding box of its True pixels."""
    if crop is None or not crop.any():
        return 0, 0, np.zeros((0, 0), bool)
    ys, xs = np.nonzero(crop.any(1))[0], np.nonzero(crop.any(0))[0]
    return y0 + int(ys[0]), x0 + int(xs[0]), crop[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]


def _tile_detections(model: nn.Module, x: torch.Tensor, h: int, w: int, score_threshold: float):
    """Detections of one tile: list of (score, class, y0, x0, bool crop) in tile pixels."""
    detect = getattr(model, "detect", None)
    out = detect(x, score_threshold)[0] if detect is not None else model(x)[0]
    scores = out["scores"].float().cpu()
    keep = torch.nonzero(scores >= score_threshold).flatten().tolist()
    boxes, labels = out["boxes"].float().cpu(), out["labels"].cpu()
    full = detect is None and out["masks"].shape[-2:] == (h, w)
    # one transfer per tile: thresholded full-size masks, or the small box-frame masks
    masks = (out["masks"][keep, 0] > 0.5).cpu().numpy() if full else out["masks"][keep, 0].float().cpu()
    found = []
    for j, i in enumerate(keep):
        if full:
            y0, x0, crop = _trim(0, 0, masks[j])
        else:
            y0, x0, crop = _paste_compact(masks[j], boxes[i].tolist(), h, w)
        if crop.sum() >= MIN_OBJECT_PIXELS:
            found.append((float(scores[i]), int(labels[i]), y0, x0, crop))
    return found


def _merge(detections: list[tuple], shape: tuple[int, int], min_pixels: int = MIN_OBJECT_PIXELS
           ) -> tuple[np.ndarray, list[dict]]:
    """Paste (score, class, y0, x0, crop) detections, best first, onto unclaimed pixels.

    A detection keeps only pixels no better one claimed; it is dropped when
    that leaves fewer than ``min_pixels`` or under half of its mask (a
    duplicate of an object already placed).
    """
    labels = np.zeros(shape, np.int32)
    rows: list[dict] = []
    for score, cls, y0, x0, crop in sorted(detections, key=lambda d: -d[0]):
        region = labels[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
        free = crop & (region == 0)
        n = int(np.count_nonzero(free))
        if n < min_pixels or n < 0.5 * np.count_nonzero(crop):
            continue
        region[free] = len(rows) + 1
        ys, xs = np.nonzero(free.any(1))[0], np.nonzero(free.any(0))[0]
        rows.append({"y0": float(y0 + ys[0]), "x0": float(x0 + xs[0]), "y1": float(y0 + ys[-1] + 1),
                     "x1": float(x0 + xs[-1] + 1), "class": cls, "score": round(score, 4)})
    return labels, rows


def predict_instances_tiled(lm, chw: np.ndarray, *, tile: int, overlap: float, score_threshold: float = 0.5,
                            stop: threading.Event | None = None
                            ) -> Generator[TileDone, None, tuple[np.ndarray, list[dict]]]:
    """Detect objects in a normalised (C, Y, X) float32 plane tile by tile.

    ``lm`` is a :class:`~napari_seglab.core.predict.LoadedModel`. Yields
    TileDone per tile; returns (labels (Y, X) int32, rows) where row
    ``i`` (keys y0, x0, y1, x1, class, score; half-open pixel bounds) describes
    object id ``i + 1``; raises Stopped when ``stop`` is set. Each tile keeps the
    detections whose box centre lies in its core (nearer its centre than a
    neighbour's), so an object cut by a tile border comes out once.
    """
    def detect(model, x):
        return _tile_detections(model, x, *x.shape[-2:], score_threshold)

    per_tile = yield from iter_detector_tiles(lm, chw, tile=tile, overlap=overlap, detect=detect, stop=stop)
    found: list[tuple] = []
    for (y0, x0), ((cy0, cy1), (cx0, cx1)), tile_found in per_tile:
        for score, cls, ty, tx, crop in tile_found:
            iy, ix = y0 + ty, x0 + tx
            centre_y, centre_x = iy + crop.shape[0] / 2, ix + crop.shape[1] / 2
            if cy0 <= centre_y < cy1 and cx0 <= centre_x < cx1:
                found.append((score, cls, iy, ix, crop))
    return _merge(found, chw.shape[-2:])


def _loss(model: nn.Module, batch: LossInputs) -> torch.Tensor:
    return detection_loss(model, batch.images, batch.instances)


#: the options a checkpoint may set, each (kind, low, high[, list length]); 8192 = the largest patch
STORED_OPTIONS: Mapping[str, tuple] = {
    "patch": ("int", 32, 8192), "detections_per_img": ("int", 1, 100_000),
    "rpn_pre_nms_top_n": ("int", 1, 100_000), "rpn_post_nms_top_n": ("int", 1, 100_000),
    "rpn_train_top_n": ("int", 1, 100_000), "box_batch_size_per_image": ("int", 1, 100_000),
    "box_score_thresh": ("num", 0.0, 1.0), "anchor_sizes": ("nums", 1, 4096, 5),
    "aspect_ratios": ("nums", 0.01, 100.0, 3), "image_mean": ("nums", -1e3, 1e3, 3),
    "image_std": ("nums", 1e-6, 1e3, 3),
}

FAMILY = Family.of(CATALOGUE["maskrcnn"], build=build_maskrcnn, loss=_loss, predict_objects=predict_instances_tiled,
                   stored_options=STORED_OPTIONS, stock_weights=stock_weights)
