"""The Train dock's job, run in a worker thread: train, pick the model to keep, predict the image with it."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.events import Message, Preview, relay
from ..core.labels import get_mode, rows_from_rectangles
from ..core.objects import assess_objects, flow_agreement, paint_next
from ..core.predict import Prediction, iter_predict_image, load_model
from ..core.train import ResolvedTrainConfig, TrainConfig, TrainResult, iter_train
from . import _common as ui
from ._lazy import WindowRead
from ._models import Verdict, judge

#: "where to paint next" boxes computed after training
SUGGESTIONS = 5


@dataclass
class TrainOutcome:
    """What the Train dock's job returns."""

    result: TrainResult
    prediction: Prediction | None = None
    #: (uncertainty map, "paint next" rows) of the prediction, or None
    extras: tuple | None = None
    #: a continued run against the model it started from (keep_new=True when there was none)
    verdict: Verdict = Verdict(keep_new=True)
    #: (AssistReport, per-object flow errors or None) of the shown plane, for assisted annotation; or None
    assist: tuple | None = None


def _light(event):
    """A Preview reaches the GUI thread as a uint16 plane (drawn as is) without its probabilities."""
    if isinstance(event, Preview):
        return replace(event, labels=ui.compact_labels(event.labels), probabilities=None)
    return event


def name_layers(text: str, names: list[tuple[str, str]] | None) -> str:
    """Say which layers the core's "image 2" and "labels 1" are: ``names`` holds (image, labels) layer names,
    and for box runs (image, area, boxes) names: "boxes of image 1, box 3" becomes the boxes layer's shape 3."""
    if not names:
        return text

    def shape(match: re.Match) -> str:  # a box row of the core is a rectangle of the boxes layer
        index = int(match.group(1)) - 1
        if 0 <= index < len(names) and len(names[index]) > 2:
            return f"layer '{names[index][2]}', shape {match.group(2)}"
        return match.group(0)

    text = re.sub(r"\bboxes of image (\d+), box (\d+)\b", shape, text)

    def layer(kind: int):
        def swap(match: re.Match) -> str:
            index = int(match.group(2)) - 1
            return f"{match.group(1)} '{names[index][kind]}'" if 0 <= index < len(names) else match.group(0)
        return swap

    text = re.sub(r"\b(image) (\d+)\b", layer(0), text)
    return re.sub(r"\b(labels) (\d+)\b", layer(1), text)


# ---------------------------------------------------------------------- Shapes layers -> box rows
def _to_pixels(vertices: np.ndarray, layer, like) -> np.ndarray:
    """Vertices in ``layer``'s data coordinates -> pixel coordinates of image layer ``like``.

    napari places a layer by its scale and translate (world = data * scale +
    translate, the trailing axes aligned); the boxes must be in the image's
    pixels whatever either layer's placement is.
    """
    v = np.asarray(vertices, float)
    d = v.shape[-1]

    def placement(lay):
        if lay is None:
            return np.ones(d), np.zeros(d)
        scale, translate = np.asarray(lay.scale, float), np.asarray(lay.translate, float)
        if len(scale) < d:
            scale = np.concatenate([np.ones(d - len(scale)), scale])
            translate = np.concatenate([np.zeros(d - len(translate)), translate])
        return scale[-d:], translate[-d:]

    s_scale, s_translate = placement(layer)
    i_scale, i_translate = placement(like)
    return (v * s_scale + s_translate - i_translate) / i_scale


def shapes_rows(layer, like=None) -> list[dict]:
    """Box rows of the rectangles of Shapes ``layer``, in the pixels of image layer ``like``.

    A ``class`` feature (column of ``layer.features``), when present, gives
    each rectangle's class; otherwise every box is class 1. Anything but an
    axis-aligned rectangle raises an InputError naming the layer and the shape.
    """
    classes = None
    features = getattr(layer, "features", None)
    if features is not None and "class" in getattr(features, "columns", ()):
        classes = list(features["class"])
    shapes = [_to_pixels(v, layer, like) for v in layer.data]
    return rows_from_rectangles(shapes, list(layer.shape_type), classes, name=f"layer '{layer.name}'")


def area_from_shapes(layer, like, spatial: tuple[int, ...]) -> np.ndarray:
    """The annotated area (``spatial`` uint8, 1 inside) of the rectangles of Shapes ``layer``.

    A rectangle on a plane of a stack marks that plane; a 2D rectangle over a
    stack marks every plane. Pixels count when their centre is inside.
    """
    area = np.zeros(spatial, np.uint8)
    for row in shapes_rows(layer, like):
        y0, x0 = (int(np.clip(np.round(row[k]), 0, n)) for k, n in (("y0", spatial[-2]), ("x0", spatial[-1])))
        y1, x1 = (int(np.clip(np.round(row[k]), 0, n)) for k, n in (("y1", spatial[-2]), ("x1", spatial[-1])))
        plane = tuple(int(p) for p in row["plane"].split(",")) if row["plane"] else ()
        lead = len(spatial) - 2
        index = plane[-lead:] if lead and len(plane) >= lead else ()
        if index and any(not 0 <= p < n for p, n in zip(index, spatial[:lead], strict=True)):
            continue  # a rectangle on a plane the image does not have marks nothing
        area[(*index, Ellipsis, slice(y0, y1), slice(x0, x1))] = 1
    if not area.any():
        raise InputError(f"the annotated area layer '{layer.name}' marks no pixel of the image; draw rectangles "
                         "over the image (or choose 'whole image')")
    return area


def auto_number(text: str, kind: type, what: str, example: str):
    """``"auto"`` (or empty) -> None (the core decides), else the number; InputError when neither."""
    text = str(text).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        return kind(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not a number (e.g. {example}) or 'auto'") from None


def train_then_predict(pairs: list[tuple[np.ndarray, str, np.ndarray | None]],
                       config: TrainConfig | ResolvedTrainConfig,
                       preview_plane: np.ndarray | None, plane: tuple[int, ...], stop: threading.Event, *,
                       names: list[tuple[str, str]] | None = None,
                       start: tuple[Path, float | None] | None = None, boxes: list[list[dict]] | None = None):
    """Train on ``pairs`` ((image, axes, labels) copies), then predict the first image with the model kept.

    An image (and ``preview_plane``) may be a :class:`~._lazy.WindowRead` of a large layer: it is read
    here, in the worker.

    Yields the core's events; returns a :class:`TrainOutcome`. ``names``:
    the (image, labels) layer names of the pairs, for error messages.
    ``boxes``: per pair the box rows of a box detector (labels then hold the
    annotated area, or None for the whole image).
    ``start``: (file, validation Dice) of the model a continued run starts
    from; when the run ends worse than it, that model is kept and predicts.
    The uncertainty map and "paint next" boxes (on ``plane``) are computed
    here, in the worker. A Stop during training ends it (the best model is
    kept) and the image is still predicted; a second Stop skips that.
    """
    images, axes, labels = (list(part) for part in zip(*pairs, strict=True))
    if any(isinstance(image, WindowRead) for image in images):  # a large layer's painted area, read here
        yield Message("reading the painted area of the image...")
        read = [image() if isinstance(image, WindowRead) else image for image in images]
        if isinstance(preview_plane, WindowRead):  # the first image's crop: the same window, read once
            preview_plane = next((r for image, r in zip(images, read, strict=True) if image is preview_plane), None)
        images = read
    try:
        result: TrainResult = yield from relay(
            iter_train(images, labels, config, boxes=boxes, axes=axes, stop=stop, preview_plane=preview_plane), _light)
    except InputError as exc:
        raise InputError(name_layers(str(exc), names)) from exc
    verdict = Verdict(keep_new=True)
    if start is not None:
        verdict = judge(result.checkpoint.meta, result.history, start[1])
        if not verdict.keep_new and not Path(start[0]).is_file():
            verdict = replace(verdict, keep_new=True)  # the earlier model is gone: nothing else to keep
    stop.clear()
    yield Message("predicting the image with the " + ("trained model" if verdict.keep_new else "earlier model"))
    model = load_model(result.checkpoint if verdict.keep_new else start[0], config.device)
    objects = get_mode(config.label_mode).instances and not boxes
    prediction = yield from iter_predict_image(model, images[0], axes[0], probabilities=True, stop=stop,
                                               head_outputs=objects)
    if prediction.stopped:
        return TrainOutcome(result, verdict=verdict)
    extras = None if prediction.probabilities is None else paint_next(prediction.probabilities, plane, SUGGESTIONS)
    prediction.probabilities = None
    assist = assist_report(prediction, labels[0], config.label_mode, plane, extras) if objects else None
    prediction.head_outputs = None
    prediction.labels = ui.compact_labels(prediction.labels)
    return TrainOutcome(result, prediction, extras, verdict, assist)


def assist_report(prediction: Prediction, painted: np.ndarray, label_mode: str, plane: tuple[int, ...],
                  extras: tuple | None) -> tuple | None:
    """(AssistReport, flow errors or None) of the predicted objects of ``plane`` against the painted labels."""
    if prediction.kind.value != "instances" or painted is None or np.shape(painted) != prediction.labels.shape:
        return None
    predicted = prediction.labels[plane] if plane else prediction.labels
    outputs = prediction.head_outputs
    errors = None
    if outputs is not None and outputs.shape[0] == 3:  # a flows head: how well each object's flows fit it
        errors = flow_agreement(predicted, outputs[(slice(None), *plane)] if plane else outputs)
    uncertainty = None if extras is None else (extras[0][plane] if plane else extras[0])
    report = assess_objects(predicted, painted[plane] if plane else painted, first_id=1 + get_mode(label_mode).shift,
                            uncertainty=uncertainty, flow_errors=errors, plane=plane)
    return report, errors
