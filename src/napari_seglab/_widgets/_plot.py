"""TrainingPlot: a light live plot of training loss and validation Dice (QPainter, no plotting library).

Two panels share one x axis (optimiser steps): the loss per step (raw, faint,
and smoothed) on top, the validation Dice per epoch (the mean, and each class
when there are more than two) below. A continued run starts a new Dice line:
it is measured on that run's own held-out pixels, so the lines are not joined. Points are averaged down to a few hundred
per line as they arrive, and the widget repaints at most :data:`REPAINT_MS`
after a change, so a long run costs the GUI thread the same as a short one.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

#: at most this many points are kept (and drawn) per line
MAX_POINTS = 300
#: a change is drawn at most this long after it arrives (<= 5 repaints per second)
REPAINT_MS = 200
#: the smoothed loss averages over about this fraction of the steps so far ...
SMOOTH_FRACTION = 0.2
#: ... and at most this many steps (an exponential moving average of that span)
SMOOTH_SPAN = 19
#: the plot is never shorter than this (px): two readable panels
MIN_HEIGHT = 150
#: the per-class Dice legend's short names of the label modes' class names ("class 2" -> "2")
SHORT = {"background": "bg", "interior": "inside", "boundary": "edge"}

LOSS_RAW = QColor(150, 160, 175, 110)
LOSS_SMOOTH = QColor("#4fc3f7")
DICE_MEAN = QColor("#ffb300")
DICE_EARLIER = QColor(255, 179, 0, 110)
CLASS_COLORS = ("#7cff4f", "#ff4fd8", "#00e5ff", "#ff8c1a", "#b08cff", "#ff5252")


class Series:
    """Points ``(x, y)`` kept to at most ``limit`` by averaging neighbours.

    When the line would exceed ``limit`` points, pairs of points merge into
    their mean and later points are averaged in buckets twice as wide, so the
    line keeps its shape at a bounded cost per point.
    """

    def __init__(self, limit: int = MAX_POINTS):
        self.limit = max(4, int(limit))
        self.points: list[tuple[float, float]] = []
        self._stride = 1
        self._bucket: list[tuple[float, float]] = []
        self.last: tuple[float, float] | None = None
        self.count = 0

    def add(self, x: float, y: float) -> None:
        if not math.isfinite(y):
            return
        self.last = (float(x), float(y))
        self.count += 1
        self._bucket.append(self.last)
        if len(self._bucket) >= self._stride:
            self.points.append(_mean(self._bucket))
            self._bucket = []
        if len(self.points) + 1 > self.limit:
            pairs = zip(self.points[0::2], self.points[1::2], strict=False)
            merged = [_mean(pair) for pair in pairs]
            if len(self.points) % 2:
                merged.append(self.points[-1])
            self.points = merged
            self._stride *= 2

    def visible(self) -> list[tuple[float, float]]:
        """The points to draw (the unfinished bucket as one more point)."""
        return self.points + ([_mean(self._bucket)] if self._bucket else [])

    def clear(self) -> None:
        self.__init__(self.limit)


def _mean(points) -> tuple[float, float]:
    n = len(points)
    return sum(p[0] for p in points) / n, sum(p[1] for p in points) / n


class TrainingPlot(QWidget):
    """Live plot of a training run: loss per step (top), validation Dice per epoch (bottom).

    Feed it with :meth:`add_loss` (every step) and :meth:`add_dice` (every
    epoch); :meth:`mark` draws a vertical line where a continued run starts.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.loss = Series()
        self.smooth = Series()
        self.dice = Series()
        self.earlier_dice: list[Series] = []  # Dice lines of earlier runs (each on its own hold-out)
        self.class_dice: list[Series] = []
        self.marks: list[float] = []
        self.best: tuple[float, int] | None = None  # (Dice, epoch)
        self.class_names: tuple[str, ...] | None = None  # the label mode's class names (legend: SHORT names)
        self.no_validation = False
        self.dice_every: int | None = None  # steps per epoch, for the "waiting" title
        self.score_name = "Dice"  # what the lower panel shows: "box AP@0.5" for a box detector
        self._ema: float | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REPAINT_MS)
        self._timer.timeout.connect(self.update)
        self.setMinimumHeight(MIN_HEIGHT)
        # a tall dock gives the plot its spare height
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("training loss per step (faint: raw, bright: smoothed) and validation Dice per epoch")

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(300, 210)

    # ------------------------------------------------------------------ data
    def clear(self) -> None:
        for series in (self.loss, self.smooth, self.dice, *self.class_dice):
            series.clear()
        self.class_dice = []
        self.earlier_dice = []
        self.marks = []
        self.best = None
        self.no_validation = False
        self._ema = None
        self._changed()

    def add_loss(self, step: float, loss: float) -> None:
        """One training step's loss (also added to the smoothed curve).

        The smoothed curve is an exponential moving average whose span grows
        with the run (a fifth of the steps so far, at most
        :data:`SMOOTH_SPAN`): a fixed long span lags far behind the raw
        loss in a run of a few dozen steps.
        """
        if not math.isfinite(loss):
            return
        weight = smoothing_weight(self.loss.count + 1)
        # the average starts at the first loss (not at 0), so it needs no bias correction
        self._ema = loss if self._ema is None else (1 - weight) * self._ema + weight * loss
        self.loss.add(step, loss)
        self.smooth.add(step, self._ema)
        self._changed()

    def add_dice(self, step: float, epoch: int, dice: float | None, per_class=()) -> None:
        """The validation Dice after an epoch (None: no hold-out) and, with > 2 classes, per class."""
        if dice is None or not math.isfinite(dice):
            self.no_validation = dice is None and self.dice.last is None
            self._changed()
            return
        self.dice.add(step, dice)
        if self.best is None or dice > self.best[0]:
            self.best = (dice, epoch)
        per_class = list(per_class or ())
        if len(per_class) > 2:
            while len(self.class_dice) < len(per_class):
                self.class_dice.append(Series())
            for series, value in zip(self.class_dice, per_class, strict=False):
                if value is not None:
                    series.add(step, value)
        self._changed()

    def mark(self, step: float) -> None:
        """A vertical line at ``step`` where a continued run begins; its Dice starts a new line."""
        self.marks.append(float(step))
        if self.dice.count:
            self.earlier_dice.append(self.dice)
            self.dice = Series()
            self.class_dice = []
        self.best = None
        self._changed()

    def _changed(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    # ------------------------------------------------------------------ drawing
    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            font = QFont(self.font())
            font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
            painter.setFont(font)
            line = painter.fontMetrics().height()
            width, height = self.width(), self.height()
            half = (height - 2) / 2
            top = QRectF(0, 0, width, half)
            bottom = QRectF(0, half + 2, width, half)
            xmax = max([s.last[0] for s in (self.loss, self.dice, *self.earlier_dice) if s.last] + self.marks + [1.0])
            self._panel(painter, top, line, xmax, "loss", self._loss_title(), self._loss_range(),
                        [(self.loss, LOSS_RAW, 1.0), (self.smooth, LOSS_SMOOTH, 1.8)], x_label=False)
            lines = [(s, QColor(CLASS_COLORS[i % len(CLASS_COLORS)]), 1.0) for i, s in enumerate(self.class_dice)]
            earlier = [(s, DICE_EARLIER, 1.4) for s in self.earlier_dice]
            self._panel(painter, bottom, line, xmax, self.score_name, self._dice_title(), (0.0, 1.0),
                        [*earlier, *lines, (self.dice, DICE_MEAN, 1.8)], x_label=True)
        finally:
            painter.end()

    def _loss_title(self) -> str:
        if self.loss.last is None:
            return "loss: waiting for the first step"
        return f"loss {self.loss.last[1]:.4f}  (smoothed {self.smooth.last[1]:.4f}, step {self.loss.last[0]:.0f})"

    def _dice_title(self) -> str:
        if self.dice.last is None:
            if self.no_validation:
                return f"no validation {self.score_name}: too few annotations to hold some out"
            every = f" ({self.dice_every} steps)" if self.dice_every else ""
            return f"validation {self.score_name}: after each epoch{every}"
        text = f"val {self.score_name} {self.dice.last[1]:.3f}"
        if self.best is not None:
            text += f"  (best {self.best[0]:.3f}, epoch {self.best[1]})"
        return text

    def _class_legend(self) -> list[tuple[str, QColor]]:
        """Each class's last Dice, in the colour of its line (class 0 first)."""
        names = [SHORT.get(n, n.removeprefix("class ")) for n in self.class_names or ()]
        return [(f"{names[i] if i < len(names) else i}: {s.last[1]:.2f}",
                 QColor(CLASS_COLORS[i % len(CLASS_COLORS)]))
                for i, s in enumerate(self.class_dice) if s.last is not None]

    def _loss_range(self) -> tuple[float, float]:
        values = [p[1] for p in self.loss.visible()] or [0.0, 1.0]
        lo, hi = min(values), max(values)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.05 * (hi - lo)
        return max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad

    def _panel(self, painter: QPainter, rect: QRectF, line: int, xmax: float, y_label: str, title: str,
               yrange: tuple[float, float], lines: list, *, x_label: bool) -> None:
        text = self.palette().color(self.foregroundRole())
        faint = QColor(text)
        faint.setAlpha(70)
        left = painter.fontMetrics().horizontalAdvance("0.000") + line + 6
        plot = QRectF(rect.left() + left, rect.top() + line + 4, rect.width() - left - 8,
                      rect.height() - line * (2 if x_label else 1) - 10)
        if plot.width() < 20 or plot.height() < 20:
            return
        painter.setPen(text)
        painter.drawText(QRectF(rect.left() + 2, rect.top(), rect.width() - 4, line),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, title)
        # axes, the y range at the ends, the axis names
        painter.setPen(QPen(faint, 1))
        painter.drawRect(plot)
        y0, y1 = yrange
        painter.setPen(text)
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        painter.drawText(QRectF(rect.left(), plot.top() - line / 2, left - 4, line), right, _fmt(y1))
        painter.drawText(QRectF(rect.left(), plot.bottom() - line / 2, left - 4, line), right, _fmt(y0))
        painter.save()
        painter.translate(rect.left() + line / 2 + 1, plot.center().y())
        painter.rotate(-90)
        painter.drawText(QRectF(-plot.height() / 2, -line / 2, plot.height(), line), Qt.AlignmentFlag.AlignCenter,
                         y_label)
        painter.restore()
        if x_label:
            below = QRectF(plot.left(), plot.bottom() + 2, plot.width(), line)
            painter.drawText(below, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, "0")
            painter.drawText(below, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, "step")
            painter.drawText(below, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop, f"{xmax:.0f}")

        def to_screen(x: float, y: float) -> QPointF:
            fy = (y - y0) / (y1 - y0) if y1 > y0 else 0.5
            return QPointF(plot.left() + plot.width() * x / xmax,
                           plot.bottom() - plot.height() * min(1.0, max(0.0, fy)))

        painter.setPen(QPen(faint, 1, Qt.PenStyle.DashLine))
        for x in self.marks:
            painter.drawLine(to_screen(x, y0), to_screen(x, y1))
        for series, color, width in lines:
            points = series.visible()
            if not points:
                continue
            painter.setPen(QPen(color, width))
            if len(points) == 1:
                painter.drawEllipse(to_screen(*points[0]), 2.0, 2.0)
                continue
            path = QPainterPath(to_screen(*points[0]))
            for point in points[1:]:
                path.lineTo(to_screen(*point))
            painter.drawPath(path)
            if series is self.dice or series in self.earlier_dice:  # few points: show each epoch
                for point in points:
                    painter.drawEllipse(to_screen(*point), 1.8, 1.8)
        if y_label == self.score_name and self.class_dice:
            self._legend(painter, plot, line)

    def _legend(self, painter: QPainter, plot: QRectF, line: int) -> None:
        """Per-class Dice in the colours of their lines, at the plot's lower right (Dice curves rise)."""
        metrics = painter.fontMetrics()
        x = plot.right() - 4
        for piece, color in reversed(self._class_legend()):
            width = metrics.horizontalAdvance(piece)
            x -= width
            if x < plot.left():
                break
            painter.setPen(color)
            painter.drawText(QRectF(x, plot.bottom() - line - 2, width + 2, line),
                             Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, piece)
            x -= metrics.horizontalAdvance("  ")


def smoothing_weight(n: int) -> float:
    """Weight of the ``n``-th loss in the smoothed curve (an EMA over a span that grows with the run)."""
    span = min(SMOOTH_SPAN, max(1.0, SMOOTH_FRACTION * n))
    return 2.0 / (span + 1.0)


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
