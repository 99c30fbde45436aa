"""All four SegLab docks in a real, shown viewer on a laptop and on a desktop screen.

The main window is given the size of the screen (as when maximised); then
the docks open the way the Plugins menu opens them. Every button, progress
bar and status line must lie inside the screen, uncovered, at its full
height; the window must not grow past the screen; the training plot stays
readable.
"""

from __future__ import annotations

import pytest
from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTabWidget,
)

from napari_seglab._widgets._plot import MIN_HEIGHT

DOCKS = ("Train", "Predict", "Evaluate", "Batch")
SCREENS = {"laptop": (1366, 768), "desktop": (1920, 1080)}


def _settle(qtbot, rounds: int = 5) -> None:
    for _ in range(rounds):
        qtbot.wait(20)
        QApplication.processEvents()


def _global_rect(widget) -> QRect:
    return QRect(widget.mapToGlobal(QPoint(0, 0)), widget.size())


def _scroll_into_view(widget) -> None:
    """Scroll every scroll area around ``widget`` to it (innermost first), as a user would."""
    parent = widget.parentWidget()
    while parent is not None:
        if isinstance(parent, QScrollArea):
            parent.ensureWidgetVisible(widget, 0, 0)
        parent = parent.parentWidget()


def _controls(container_widget, dock: QDockWidget) -> list:
    """The buttons, drop-downs, progress bars and status lines of a dock that the user can see now."""
    # a squashed drop-down clips the underscores of layer names ("nuclei_test" read as "nuclei test")
    found = [w for kind in (QPushButton, QComboBox, QProgressBar) for w in container_widget.findChildren(kind)]
    status = [w for w in container_widget.findChildren(QLabel) if w.objectName() == "seglab_status"]
    return [w for w in found + status if w.isVisibleTo(dock)]


def _check_inside_and_uncovered(widget, dock: QDockWidget, screen: QRect, name: str) -> None:
    _scroll_into_view(widget)
    QApplication.processEvents()
    what = f"{name}: {type(widget).__name__} {getattr(widget, 'text', lambda: '')()!r}"
    rect = _global_rect(widget)
    assert screen.contains(rect), f"{what} at {rect} is outside the screen {screen}"
    assert _global_rect(dock).contains(rect), f"{what} sticks out of its dock"
    # nothing clips it: its whole rectangle can be painted
    assert widget.visibleRegion().boundingRect() == widget.rect(), f"{what} is partly covered or clipped"
    if not isinstance(widget, QLabel):
        assert widget.height() >= widget.sizeHint().height() - 2, f"{what} is squashed"


def _qdock(widget) -> QDockWidget:
    parent = widget.native.parentWidget()
    while not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def _open_all(viewer, qtbot, size):
    window = viewer.window._qt_window
    window.resize(*size)
    _settle(qtbot)
    widgets = {}
    for name in DOCKS:
        _dock, widgets[name] = viewer.window.add_plugin_dock_widget("napari-seglab", name)
        _settle(qtbot)
    return window, widgets


@pytest.mark.parametrize("screen_name", list(SCREENS))
def test_all_four_docks_fit_the_screen(make_napari_viewer, qtbot, screen_name):
    size = SCREENS[screen_name]
    screen = QRect(0, 0, *size)
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-seglab", "nuclei_scribbles")
    window, widgets = _open_all(viewer, qtbot, size)

    # the window did not grow past the screen, and the canvas kept most of it
    assert window.frameGeometry().height() <= size[1] and window.frameGeometry().width() <= size[0]
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= size[0] // 2 and canvas.height() >= size[1] // 2

    qdocks = {name: _qdock(widgets[name]) for name in DOCKS}
    # opened one after another from the menu, they share one tab group instead of squeezing each other
    assert set(window.tabifiedDockWidgets(qdocks["Train"])) == {qdocks[n] for n in DOCKS[1:]}
    assert not qdocks["Batch"].visibleRegion().isEmpty()  # the dock opened last is in front

    for name in DOCKS:
        qdock = qdocks[name]
        qdock.raise_()
        _settle(qtbot)
        assert not qdock.visibleRegion().isEmpty(), f"{name} dock cannot be brought to the front"
        pages = [None]
        tabs = widgets[name].native.findChildren(QTabWidget)
        if tabs:
            pages = list(range(tabs[0].count()))
        for page in pages:
            if page is not None:
                tabs[0].setCurrentIndex(page)
                _settle(qtbot, 2)
            controls = _controls(widgets[name].native, qdock)
            assert controls, f"{name} shows no controls"
            for widget in controls:
                _check_inside_and_uncovered(widget, qdock, screen, name)
            if page is not None:
                tabs[0].setCurrentIndex(0)

    # the run controls and the plot of the Train dock are in view without scrolling (Data page shown)
    qdocks["Train"].raise_()
    _settle(qtbot)
    train = widgets["Train"]
    for widget in (train._controls.run_button.native, train._controls.progress.native,
                   train._controls.status.native, train.plot):
        rect = _global_rect(widget)
        assert _global_rect(qdocks["Train"]).contains(rect) and screen.contains(rect)
        assert widget.visibleRegion().boundingRect() == widget.rect()
    assert train.plot.height() >= MIN_HEIGHT
    # Evaluate's table shows every row
    qdocks["Evaluate"].raise_()
    _settle(qtbot)
    table = widgets["Evaluate"]._table.native
    assert table.viewport().height() >= table.verticalHeader().length()


def test_docks_opened_from_another_dock_join_its_tab_group(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREENS["laptop"])
    _dock, train = viewer.window.add_plugin_dock_widget("napari-seglab", "Train")
    _settle(qtbot)
    train.last_checkpoint = tmp_path / "missing.pt"  # "Predict with this model" only opens the dock
    train._open_in_predict()
    _settle(qtbot)
    predict_dock = _qdock(viewer.window.dock_widgets["Predict (napari-seglab)"])
    train_dock = _qdock(train)
    assert predict_dock in window.tabifiedDockWidgets(train_dock)
    assert not predict_dock.visibleRegion().isEmpty() and train_dock.visibleRegion().isEmpty()
    assert window.frameGeometry().height() <= SCREENS["laptop"][1]
