"""EvaluateWidget: score a prediction against ground truth: labels (Dice, IoU, instance AP) or boxes (box AP)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, PushButton, Table
from napari.layers import Labels, Shapes

from .. import _layers
from .._layers import ROLE
from ..core.errors import InputError
from ..core.evaluate import match_instances
from ..core.events import Message
from . import _common as ui
from . import _evaluate_boxes as boxes
from . import _layout
from ._worker import JobSlot, error_text, report_error, stop_on_destroy

if TYPE_CHECKING:
    import napari

#: IoU thresholds of the instance scores (the table's columns)
THRESHOLDS = (0.5, 0.75, 0.9)
#: the table's rows: (name, key prefix in match_instances' result, is a count)
ROWS = (("precision", "precision_", False), ("recall", "recall_", False), ("F1", "f1_", False),
        ("AP", "ap", False), ("TP", "tp_", True), ("FP", "fp_", True), ("FN", "fn_", True))
ROW_TIPS = ("TP / (TP + FP)", "TP / (TP + FN)", "2 TP / (2 TP + FP + FN)", "TP / (TP + FP + FN)",
            "objects matched", "predicted objects with no match", "true objects missed")
#: layers written by a model
MODEL_ROLES = ("prediction", "preview")
#: names that say "ground truth"
TRUTH_WORDS = ("truth", "gt", "ground", "instances", "mask", "annotation")
#: a labels layer with at most this share of pixels painted, with values 1 and 2, looks like scribbles
SCRIBBLE_COVER = 0.2
#: the caption over the labels table
LABELS_CAPTION = "columns: objects matched one-to-one at IoU \u2265 0.5, 0.75, 0.9"


def objects(count: int) -> str:
    """``"1 object"``, ``"3 objects"``."""
    return f"{count} object{'' if count == 1 else 's'}"


def looks_like_scribbles(layer, data: np.ndarray, truth: np.ndarray) -> bool:
    """True when a labels layer picked as the prediction looks like painted strokes instead.

    Scribbles are named so, or (not written by a model) use a few small
    values including 1 and 2 on a small share of the pixels, with the 1s
    (background strokes) mostly where ``truth`` has background. A
    prediction uses 0 for background, so scoring scribbles would count the
    background strokes as objects.
    """
    if layer.metadata.get(ROLE) in MODEL_ROLES:
        return False
    if "scribble" in layer.name.lower():
        return True
    if data.size == 0 or data.max() > 16 or np.count_nonzero(data) > SCRIBBLE_COVER * data.size:
        return False
    ones = data == 1
    if not ones.any() or not (data == 2).any():
        return False
    return np.count_nonzero(ones & (truth == 0)) >= 0.8 * np.count_nonzero(ones)


def _truth_score(layer) -> int:
    name = layer.name.lower()
    return int(any(word in name.split() or name.endswith(word) for word in TRUTH_WORDS)) * 2 + \
        int(layer.metadata.get(ROLE) not in (*MODEL_ROLES, "correction") and "scribble" not in name)


def evaluate(prediction: np.ndarray, truth: np.ndarray, _stop: threading.Event | None = None):
    """Worker generator: match the objects of two label images; returns match_instances' dict."""
    yield Message("matching objects...")
    return match_instances(prediction, truth, THRESHOLDS)


def _key(threshold: float) -> str:
    return f"{threshold * 100:g}".replace(".", "p")


def table_value(scores: dict | None) -> dict:
    """The Table's value for ``scores``: rows of :data:`ROWS`, one column per IoU threshold (None: blank)."""
    data = []
    for _name, prefix, count in ROWS:
        if scores is None:
            data.append(["\u2013"] * len(THRESHOLDS))
            continue
        values = [scores[f"{prefix}{_key(t)}"] for t in THRESHOLDS]
        data.append([f"{int(v)}" if count else f"{float(v):.3f}" for v in values])
    return {"data": data, "index": [name for name, _p, _c in ROWS], "columns": [f"\u2265{t:g}" for t in THRESHOLDS]}


class EvaluateWidget(Container):
    """Dock widget: pick a prediction and its ground truth; show Dice, IoU and instance scores, or box scores.

    Labels against labels: instance scores follow the DSB2018 / StarDist
    convention: objects match one-to-one at IoU >= t, ``AP = TP / (TP + FP + FN)``.
    A Shapes prediction (rectangles, ranked by its ``score`` feature) against
    Shapes rectangles or instance Labels: box AP at IoU 0.5, 0.75 and
    0.5:0.95, and precision, recall, F1 and counts at the score threshold,
    which rescores live. The matching runs in a worker; :attr:`scores` keeps
    the last result (match_instances' dict, or the box scores).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self._slot = JobSlot()
        self.scores: dict | None = None
        self._prediction = ui.layer_picker(napari_viewer, (Labels, Shapes), "prediction",
                                           "the labels, or the boxes (a Shapes layer of rectangles), to score")
        self._truth = ui.layer_picker(napari_viewer, (Labels, Shapes), "ground truth",
                                      "the correct labels (same shape), or for boxes: rectangles or instance labels")
        self._threshold = FloatSpinBox(label="score threshold", value=0.5, min=0.0, max=1.0, step=0.05,
                                       tooltip="boxes: precision, recall, F1 and counts use the predicted boxes "
                                               "scoring at least this (the 'score' feature); AP uses every score")
        self._boxes_mode = False  # the table shows box scores
        self._box_rows: tuple | None = None  # (pred rows, truth rows) of the last box evaluation, for rescoring
        self._rescore = False
        self._run = PushButton(text="Evaluate")
        self._summary = ui.wrapped_label("pick a prediction and its ground truth, then press Evaluate")
        self._summary.native.setObjectName(ui.STATUS_NAME)
        self._caption = ui.wrapped_label(LABELS_CAPTION, small=True)
        self._table = Table(value=table_value(None))
        self._table.read_only = True
        self._fit_table()
        self._copy = PushButton(text="Copy as text", enabled=False, tooltip="copy the scores (tab-separated)")
        layers = ui.form("", [self._prediction, self._truth, self._threshold])
        ui.align_labels([layers])
        super().__init__(widgets=[_layout.dock_body([layers, self._run, self._summary, self._caption, self._table,
                                                     self._copy])], labels=False)
        self.margins = (0, 0, 0, 0)
        self._run.changed.connect(lambda *_: self._on_run())
        self._copy.changed.connect(lambda *_: self._copy_text())
        self._threshold.changed.connect(lambda *_: self._on_threshold())
        self._prediction.changed.connect(lambda *_: self._follow_prediction())
        self.reset_choices()
        stop_on_destroy(self.native, self._slot)
        _layout.tabify_when_docked(self)

    def reset_choices(self, *_args) -> None:
        super().reset_choices()
        self.pick_defaults()
        self._follow_prediction()

    def _follow_prediction(self) -> None:
        """The score threshold applies to boxes only."""
        self._threshold.enabled = isinstance(self._prediction.value, Shapes)

    def pick_defaults(self) -> None:
        """Never leave prediction and truth on one layer: prefer a model's output and a truth-like name."""
        layers = list(self._prediction.choices)
        if len(layers) < 2 or self._prediction.value is not self._truth.value:
            return
        outputs = [layer for layer in layers if layer.metadata.get(ROLE) in MODEL_ROLES]
        shapes = [layer for layer in layers if isinstance(layer, Shapes)]
        if outputs:
            prediction = outputs[-1]
        elif shapes and sum(isinstance(layer, Labels) for layer in layers) < 2:
            prediction = shapes[-1]  # boxes, scored against the one labels layer or other boxes
        else:
            prediction = self._prediction.value
        others = [layer for layer in layers if layer is not prediction]
        if isinstance(prediction, Labels):  # labels score against labels only
            others = [layer for layer in others if isinstance(layer, Labels)] or others
        self._prediction.value = prediction
        self._truth.value = max(others, key=_truth_score)

    @property
    def busy(self) -> bool:
        return self._slot.busy

    def _fit_table(self) -> None:
        """Show the cells as written (3 decimals), columns sharing the width, every row, no scrolling."""
        from qtpy.QtCore import QEvent, QObject, Qt
        from qtpy.QtWidgets import QHeaderView, QStyledItemDelegate

        view = self._table.native
        view.setItemDelegate(QStyledItemDelegate(view))
        view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        def fit() -> None:
            # the rows' height comes from the style sheet napari applies once docked: measure what is drawn
            rows = view.verticalHeader().length() or view.verticalHeader().defaultSectionSize() * len(ROWS)
            header = max(view.horizontalHeader().height(), view.horizontalHeader().sizeHint().height())
            view.setFixedHeight(rows + header + 2 * view.frameWidth() + 2)

        class Refit(QObject):
            def eventFilter(self, _obj, event):  # noqa: N802 - Qt API
                if event.type() in (QEvent.Type.Show, QEvent.Type.StyleChange, QEvent.Type.FontChange,
                                    QEvent.Type.Polish):
                    fit()
                return False

        self._refit = Refit(view)
        view.installEventFilter(self._refit)
        self._fit = fit  # again when the table changes between the labels and the boxes rows
        fit()
        self._row_tips()

    def _row_tips(self) -> None:
        for row, tip in enumerate(boxes.BOX_TIPS if self._boxes_mode else ROW_TIPS):
            item = self._table.native.verticalHeaderItem(row)
            if item is not None:
                item.setToolTip(tip)

    def _on_run(self) -> None:
        try:
            self._start()
        except InputError as exc:
            report_error(exc)
            self._on_error(exc)

    def _start(self) -> None:
        pred_layer, truth_layer = self._prediction.value, self._truth.value
        if pred_layer is None or truth_layer is None:
            raise InputError("choose a predicted and a ground-truth Labels layer")
        self._box_rows = None
        if isinstance(pred_layer, Shapes):
            self._start_boxes(pred_layer, truth_layer)
            return
        if isinstance(truth_layer, Shapes):
            raise InputError(f"'{truth_layer.name}' holds boxes: score it against a Shapes prediction of "
                             f"rectangles, or pick a Labels ground truth for '{pred_layer.name}'")
        pred_shape, truth_shape = _layers.labels_shape(pred_layer), _layers.labels_shape(truth_layer)
        if pred_shape != truth_shape:
            raise InputError(f"'{pred_layer.name}' has shape {pred_shape} but '{truth_layer.name}' has shape "
                             f"{truth_shape}: choose labels of the same image")
        prediction = _layers.labels_from_layer(pred_layer)
        truth = _layers.labels_from_layer(truth_layer)
        self._names = (pred_layer.name, truth_layer.name)
        self._warning = ""
        if looks_like_scribbles(pred_layer, prediction, truth):
            self._warning = (f"'{pred_layer.name}' looks like scribbles, not a prediction (1 = background "
                             "strokes would count as objects): pick the predicted layer")
            from napari.utils.notifications import show_warning

            show_warning(self._warning)
        self._clear(boxes_mode=False)
        self._set_busy(True)
        self._summary.value = "matching objects..."
        self._slot.start(lambda stop: evaluate(prediction, truth, stop), on_result=self._on_result,
                         on_error=self._on_error, on_done=lambda: self._set_busy(False))

    def _start_boxes(self, pred_layer, truth_layer) -> None:
        pred, truth, warning = boxes.box_inputs(pred_layer, truth_layer)
        self._names = (pred_layer.name, truth_layer.name)
        self._warning = warning
        self._box_rows = (pred, truth)
        self._clear(boxes_mode=True)
        self._run_boxes()

    def _run_boxes(self) -> None:
        pred, truth = self._box_rows
        threshold = float(self._threshold.value)
        self._set_busy(True)
        self._summary.value = "matching boxes..."
        self._slot.start(lambda stop: boxes.evaluate_boxes(pred, truth, threshold, stop), on_result=self._on_result,
                         on_error=self._on_error, on_done=self._box_job_done)

    def _box_job_done(self) -> None:
        self._set_busy(False)
        if self._rescore and self._box_rows is not None:
            self._rescore = False
            self._run_boxes()

    def _on_threshold(self) -> None:
        """Rescore the last boxes at the new threshold (after the running job, if one runs)."""
        if self._box_rows is None:
            return
        if self.busy:
            self._rescore = True
        else:
            self._run_boxes()

    def _clear(self, boxes_mode: bool | None = None) -> None:
        """Blank the table: it must never show the scores of an earlier pair next to a new message."""
        if boxes_mode is not None:
            self._boxes_mode = boxes_mode
            self._caption.value = boxes.BOX_CAPTION if boxes_mode else LABELS_CAPTION
        self.scores = None
        self._copy.text = "Copy as text"
        self._copy.enabled = False
        self._show_table(None)

    def _show_table(self, scores: dict | None) -> None:
        rows_before = self._table.native.rowCount()
        self._table.value = boxes.box_table_value(scores) if self._boxes_mode else table_value(scores)
        self._row_tips()
        if self._table.native.rowCount() != rows_before:
            self._fit()

    def _on_error(self, exc: BaseException) -> None:
        self._box_rows = None
        self._rescore = False
        self._clear()
        self._summary.value = error_text(exc)

    def _set_busy(self, busy: bool) -> None:
        ui.set_enabled([self._prediction, self._truth, self._run], not busy)
        self._copy.enabled = not busy and self.scores is not None

    def _on_result(self, scores: dict) -> None:
        self.scores = scores
        self._copy.text = "Copy as text"
        self._show_table(scores)
        pred_name, truth_name = self._names
        if self._boxes_mode:
            text = boxes.box_summary(scores, pred_name, truth_name, len(self._box_rows[0]) if self._box_rows else 0)
            if getattr(self, "_warning", ""):
                text += f"<br><b>note</b>: {self._warning}"
            self._summary.value = text
            return
        text = (f"<b>Dice {scores['dice']:.3f} &nbsp; IoU {scores['iou']:.3f}</b> (foreground)<br>"
                f"{objects(scores['n_pred'])} in '{pred_name}', {objects(scores['n_true'])} in '{truth_name}'")
        if scores["n_pred"] == 1 and scores["n_true"] > 1:
            text += ("<br>the prediction is one object: for instance scores predict with "
                     "'split touching objects'")
        if getattr(self, "_warning", ""):
            text += f"<br><b>warning</b>: {self._warning}"
        self._summary.value = text

    def as_text(self) -> str:
        """The last scores as tab-separated text (Dice, IoU, then the table)."""
        if self.scores is None:
            return ""
        if self._boxes_mode:
            value = boxes.box_table_value(self.scores)
            lines = [f"score threshold\t{self.scores['score_threshold']:g}"]
            lines += [f"{name}\t{row[0]}" for name, row in zip(value["index"], value["data"], strict=True)]
            return "\n".join(lines)
        value = table_value(self.scores)
        lines = [f"dice\t{self.scores['dice']:.4f}", f"iou\t{self.scores['iou']:.4f}",
                 "\t".join(["", *value["columns"]])]
        lines += ["\t".join([name, *row]) for name, row in zip(value["index"], value["data"], strict=True)]
        return "\n".join(lines)

    def _copy_text(self) -> None:
        from qtpy.QtWidgets import QApplication

        QApplication.clipboard().setText(self.as_text())
        self._copy.text = "Copied"
