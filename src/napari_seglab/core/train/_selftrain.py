"""Self-training: the model's confident predictions join the painted labels during training.

At the fractions ``config.self_training_at`` of the budget the model as it
is predicts every training plane, and what it is sure of is added to what
the user painted, by the label mode's ``self_training`` kind:

- "pixels" (``scribbles``): unpainted pixels whose class probability is at
  least ``config.pseudo_threshold`` get that class;
- "objects" (``objects``): the objects it predicts where nothing is painted,
  and that the assisted annotation would call confident
  (:func:`~napari_seglab.core.objects.assess_objects`: sure, of about the
  painted objects' size, flows that fit the shape, not touching a painted
  object nor lying on background strokes), are painted as new whole objects;
  the mode's margin round them then teaches background too, and the band of
  PSEUDO_OUTLINE_BAND round their outlines nothing. This is what a user does
  with the Train dock's "Accept confident", done during the run;
- "volumes" (``instances`` labels of a Z stack painted on some of its planes, the flows or distance head,
  the z step known): the model predicts each such stack in 3D (:func:`~napari_seglab.core.predict.
  iter_predict_volume`, the three views combined), and its objects become the labels of the unpainted
  planes. Every plane of the stack then trains, and so do its ZX and ZY planes (the sections a few spread
  painted planes cannot give), the painted planes' own labels kept where they are. Each painted object takes
  the id of the predicted object it overlaps most, so an object keeps one id through the stack; the band of
  PSEUDO_OUTLINE_BAND round the predicted objects (in each training plane, at its scale) teaches nothing.

Each round starts again from the painted labels (``samples``), so what an
earlier, weaker model added is not kept. Painted pixels are never changed,
and the validation pixels held out of training stay out, so the validation
Dice keeps measuring painted truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..data import Sample, percentiles, resample_image, resample_labels, scaled_shape, to_chw
from ..evaluate import match_instances
from ..events import drive
from ..labels import IGNORE, get_mode
from ..models import CheckpointMeta
from ..objects import assess_objects, entropy_map, flow_agreement, new_objects
from ..predict import (
    decode_plane,
    expand_probabilities,
    iter_predict_volume,
    predict_plane,
    wrap_model,
)
from ._data import (
    MIN_RUN_DEPTH,
    VolumeSource,
    _median_diameter,
    labelled_sample,
    section,
    section_origins,
)

#: pixels within this distance of a self-trained object's outline are ignored, not taught (see
#: :func:`_with_confident_objects`). benchmarks/sparse_annotations.py, DSB2018, 25 % of the nuclei painted at
#: random, 400 steps: seeds 0 / 1 AP@0.75 0.774 / 0.810 with the band against 0.738 / 0.597 without it
PSEUDO_OUTLINE_BAND = 1
#: a stack's 3D prediction labels its unpainted planes only when it finds at least this share of the objects
#: painted on its painted planes at IoU PAINTED_IOU: earlier, a weak model's few objects would teach every
#: unpainted plane and section that nuclei are background
MIN_PAINTED_FOUND = 0.5
PAINTED_IOU = 0.5
#: the predicted objects of the unpainted planes shrink (their rim ignored) by the factor the model's
#: foreground exceeds the painted one on the painted planes, at most MAX_SHRINK
CALIBRATE_FOREGROUND = True
MAX_SHRINK = 2.0


def self_training_round(model, meta: CheckpointMeta, device, samples: list[Sample], held: list[np.ndarray],
                        config, volumes: list[VolumeSource] = (), stop=None) -> tuple[list[Sample], str, float]:
    """One round: (the new training samples, what was added in words, the patch sampler's favour for them).

    ``volumes``: the stacks of the "volumes" kind (``instances`` labels); the other kinds work plane by plane.
    ``stop`` (a threading.Event) cuts a stack's 3D prediction short; the round then adds nothing.
    """
    lm = wrap_model(model, meta, device)
    was_training = model.training
    model.eval()
    kind = get_mode(config.label_mode).self_training
    try:
        if kind == "volumes":
            return (*_with_predicted_volumes(lm, samples, held, volumes, config, stop), 0.3)
        objects = kind == "objects"
        out, added = [], 0
        for s, h in zip(samples, held, strict=True):
            sample, n = (_with_confident_objects(lm, s, h, config) if objects
                         else _with_confident_pixels(lm, s, h, config.pseudo_threshold))
            out.append(sample)
            added += n
        what = "objects" if objects else "pixels"
        return out, f"{added} confidently predicted {what} added to the painted ones", 0.8 if objects else 0.5
    finally:
        model.train(was_training)


def _with_confident_pixels(lm, s: Sample, held: np.ndarray, threshold: float) -> tuple[Sample, int]:
    probs = expand_probabilities(predict_plane(lm, s.image, tile=512, overlap=0.25))
    sure = (probs.max(0) >= threshold) & (s.target == IGNORE) & ~held
    return Sample(s.image, np.where(sure, np.argmax(probs, 0), s.target), s.instances), int(sure.sum())


def _outline_band(objects: np.ndarray) -> np.ndarray:
    """The pixels within PSEUDO_OUTLINE_BAND of an outline of ``objects`` (ids; inside and out, also where two
    of them touch)."""
    from skimage.segmentation import find_boundaries

    edge = find_boundaries(objects, mode="inner")
    return ndi.binary_dilation(edge, iterations=PSEUDO_OUTLINE_BAND) if PSEUDO_OUTLINE_BAND else edge


def _predicted_objects(lm, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(objects (Y, X), their foreground probabilities (K, Y, X), flow errors per id or None, head) of a plane."""
    spec = lm.spec
    outputs = predict_plane(lm, image, tile=512, overlap=0.25, raw=spec.has_regression_head)
    predicted, probs = decode_plane(lm, outputs)
    head = spec.head if spec.has_regression_head else "boundary"
    return predicted, probs, flow_agreement(predicted, outputs) if head == "flows" else None, head


def _with_confident_objects(lm, s: Sample, held: np.ndarray, config) -> tuple[Sample, int]:
    """``s`` with the confident predicted objects of its plane painted (held-out pixels still ignored)."""
    if s.labels is None:
        return s, 0
    predicted, probs, errors, head = _predicted_objects(lm, s.image)
    first = 1 + get_mode(config.label_mode).shift
    report = assess_objects(predicted, s.labels, first_id=first, uncertainty=entropy_map(probs),
                            flow_errors=errors, n_next=0)
    # an object over held-out pixels would teach what validation judges
    on_held = set(np.unique(predicted[held]).tolist())
    ids = [i for i in report.confident_ids if i not in on_held]
    if not ids:
        return s, 0
    ys, xs, values = new_objects(predicted, s.labels, ids, max(int(s.labels.max()) + 1, first))
    labels = s.labels.copy()
    labels[ys, xs] = values
    sample = labelled_sample(s.image, labels, config.label_mode, head)
    sample.target[held] = IGNORE
    # a predicted outline is a pixel or two off: the band round it teaches nothing
    pseudo = np.zeros(labels.shape, np.int32)
    pseudo[ys, xs] = values
    sample.target[_outline_band(pseudo) & (s.labels == 0)] = IGNORE
    return sample, len(ids)


def _with_predicted_volumes(lm, samples: list[Sample], held: list[np.ndarray], volumes: list[VolumeSource],
                            config, stop=None) -> tuple[list[Sample], str]:
    """The run's samples with each stack's unpainted planes labelled by its 3D prediction, and the stack's ZX/ZY
    planes (all of it now labelled) in place of those of its painted runs; held-out pixels stay out."""
    head = lm.spec.head
    replaced = {j for v in volumes for j, _ in v.sections}
    out = [s for j, s in enumerate(samples) if j not in replaced]
    objects = planes = sections = 0
    found = []
    for v in volumes:
        predicted = drive(iter_predict_volume(lm, v.image, v.axes, anisotropy=v.anisotropy, method="orthogonal",
                                              stop=stop))
        if predicted.stopped:
            return samples, "stopped during the 3D prediction: nothing added"
        painted = sorted({z for _, z in v.planes})
        found.append(_painted_found(predicted.labels[painted], v.labels[painted]))
        if found[-1] < MIN_PAINTED_FOUND:  # the model is not ready: its 3D objects would teach the planes wrong
            out.extend(samples[j] for j, _ in v.sections)
            continue
        labels, ignore = _pseudo_stack(predicted.labels, v, held)
        unpainted = np.ones(len(labels), bool)
        unpainted[painted] = False
        objects += np.setdiff1d(np.unique(labels[unpainted]), [0]).size
        for z in np.flatnonzero(unpainted):
            if labels[z].any():
                out.append(_new_sample(to_chw(v.image[z]).astype(np.float32, copy=False), labels[z], ignore[z],
                                       np.ones(labels.shape[1:], bool), v, config.label_mode, head))
                planes += 1
        if len(labels) * v.anisotropy >= MIN_RUN_DEPTH * _median_diameter(labels, config.label_mode):
            rows = np.broadcast_to(unpainted[:, None, None], labels.shape).view(np.uint8)  # predicted labels there
            for origin in section_origins(labels, v.anisotropy, config.label_mode, runs=[(0, len(labels))]):
                out.append(_new_sample(section(v.image, origin, v.anisotropy, image=True),
                                       section(labels, origin, v.anisotropy),
                                       section(ignore.view(np.uint8), origin, v.anisotropy) > 0,
                                       section(rows, origin, v.anisotropy) > 0, v, config.label_mode, head))
                sections += 1
    n = len(volumes)
    share = ", ".join(f"{f:.0%}" for f in found)
    if not planes:
        return out, (f"3D prediction of {n} stack{'s' if n != 1 else ''}: it finds {share} of the painted objects "
                     f"(at IoU {PAINTED_IOU:g}), less than the {MIN_PAINTED_FOUND:.0%} it takes to label the "
                     "unpainted planes: nothing added yet")
    return out, (f"3D prediction of {n} stack{'s' if n != 1 else ''} (finds {share} of the painted objects): "
                 f"{objects} objects on {planes} unpainted planes join the painted ones"
                 + (f", with {sections} ZX/ZY planes" if sections else ""))


def _painted_found(predicted: np.ndarray, painted: np.ndarray) -> float:
    """The share of the painted objects (on painted planes, (N, Y, X)) that a predicted object matches at IoU
    PAINTED_IOU or more, plane by plane (1.0 when nothing is painted)."""
    scores = [match_instances(pred, lab, (PAINTED_IOU,)) for pred, lab in zip(predicted, painted, strict=True)]
    total = sum(m["n_true"] for m in scores)
    return sum(m[f"tp_{round(100 * PAINTED_IOU)}"] for m in scores) / total if total else 1.0


def _pseudo_stack(predicted: np.ndarray, v: VolumeSource, held: list[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(labels (Z, Y, X) int64, ignored voxels (Z, Y, X) bool) of a stack: its painted planes as painted, each
    painted object under the id of the predicted object it overlaps most (a new id when none, or when another
    painted object of the plane took it); the other planes predicted. Ignored: the held-out pixels of the
    painted planes and sections (the band round the predicted objects is ignored per sample, at its scale)."""
    labels = predicted.astype(np.int64)
    next_id = int(labels.max(initial=0)) + 1
    painted = sorted({z for _, z in v.planes})
    for z in painted:
        plane, under, taken = v.labels[z], labels[z].copy(), set()
        new = np.zeros(plane.shape, np.int64)
        for pid in np.unique(plane[plane > 0]):
            mask = plane == pid
            ids, counts = np.unique(under[mask], return_counts=True)
            order = [int(i) for i in ids[np.argsort(-counts)] if i > 0 and int(i) not in taken]
            if order:
                new[mask] = order[0]
                taken.add(order[0])
            else:
                new[mask] = next_id
                next_id += 1
        labels[z] = new
    ignore = np.zeros(labels.shape, bool)
    if CALIBRATE_FOREGROUND:
        _shrink_to_painted(labels, ignore, predicted, v, painted)
    for j, z in v.planes:  # held-out validation pixels, back at the stack's pixel size
        ignore[z] |= resample_labels(held[j].view(np.uint8), labels.shape[1:]) > 0
    for j, (z0, z1, axis, k) in v.sections:
        back = resample_labels(held[j].view(np.uint8), (z1 - z0, labels.shape[3 - axis])) > 0
        if axis == 1:
            ignore[z0:z1, k, :] |= back
        else:
            ignore[z0:z1, :, k] |= back
    return labels, ignore


def _shrink_to_painted(labels: np.ndarray, ignore: np.ndarray, predicted: np.ndarray, v: VolumeSource,
                       painted: list[int]) -> None:
    """Where the model's foreground is wider than the painted one on the painted planes (by r), the outer
    voxels of the objects on the unpainted planes, 1 - 1/r of them, become ignored rather than taught (in place):
    a wide foreground would otherwise teach itself."""
    truth = np.count_nonzero(v.labels[painted])
    ratio = np.count_nonzero(predicted[painted]) / truth if truth else 1.0
    if ratio <= 1.05:
        return
    unpainted = np.ones(len(labels), bool)
    unpainted[painted] = False
    where, depth = _object_depths(labels, unpainted, v.anisotropy)
    if not where.size:
        return
    # the shallowest voxels go first; equal depths in an order spread over the stack (not z first)
    order = np.lexsort((where * 0.6180339887 % 1.0, depth))
    rim = where[order[:int(round(where.size * (1 - 1 / min(ratio, MAX_SHRINK))))]]
    labels.ravel()[rim] = 0
    ignore.ravel()[rim] = True


def _object_depths(labels: np.ndarray, planes: np.ndarray, anisotropy: float) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, float32 depths) of the object voxels of a (Z, Y, X) labels on the ``planes`` (bool per
    z): each voxel's distance to the outside of its object (z steps counted at ``anisotropy``). Computed
    object by object in its box, so memory follows the largest object rather than the stack."""
    where, depth = [], []
    for i, sl in enumerate(ndi.find_objects(labels), 1):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(sl, labels.shape, strict=True))
        inside = labels[box] == i
        keep = inside & planes[box[0], None, None]
        if not keep.any():
            continue
        d = ndi.distance_transform_edt(inside, sampling=(anisotropy, 1.0, 1.0))[keep].astype(np.float32)
        where.append(np.ravel_multi_index([c + b.start for c, b in zip(np.nonzero(keep), box, strict=True)],
                                          labels.shape))
        depth.append(d)
    if not where:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(where), np.concatenate(depth)


def _new_sample(chw: np.ndarray, lab: np.ndarray, ignore: np.ndarray, predicted: np.ndarray, v: VolumeSource,
                mode: str, head: str) -> Sample:
    """A training sample made as :func:`~napari_seglab.core.train._data.prepare_training_data` makes one, with
    ``ignore`` (bool, the plane's shape) ignored, and the band round the objects where their labels are
    ``predicted`` (bool, the plane's shape), at the sample's scale as in the ``objects`` kind."""
    if v.scale != 1.0:
        shape = scaled_shape(lab.shape, v.scale)
        chw, lab = resample_image(chw, shape), resample_labels(lab, shape)
        ignore = resample_labels(ignore.view(np.uint8), shape) > 0
        predicted = resample_labels(predicted.view(np.uint8), shape) > 0
    lohi = v.lohi or percentiles(chw, v.norm.low, v.norm.high)
    sample = labelled_sample(v.norm.apply(chw, lohi), lab, mode, head)
    sample.target[ignore | (_outline_band(lab) & predicted)] = IGNORE
    return sample
