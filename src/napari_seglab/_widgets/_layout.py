"""Dock layout: sections that scroll instead of growing the window, tab pages, and SegLab docks that tabify.

A QDockWidget is never shorter than its widget's minimum height, and Qt
grows the main window past the screen to honour it. Every SegLab dock
therefore puts its settings in :class:`ScrollSection` s (as tall as their
content when there is room, a few rows when there is not) and the whole dock
in one more, so its minimum height stays small on any screen; the run
controls and the plot stay outside the inner sections, always in view.
SegLab docks opened in the same dock area are tabified with each other
(:func:`tabify_when_docked`) instead of being stacked.
"""

from __future__ import annotations

import contextlib

from magicgui.widgets import Container
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QSizePolicy, QTabWidget

#: a scrolled section is never shorter than this (px), unless its content is
SECTION_MIN_PX = 96
#: a dock asks for this much more than its narrowest width
WIDTH_SLACK_PX = 16
#: marks the dock widgets of this plugin (a Qt dynamic property on their inner widget)
DOCK_PROPERTY = "seglab_dock"


class ScrollSection(QScrollArea):
    """A vertical scroll area whose size hint is its content's (Qt's own caps it at 24 text lines).

    Its minimum height is :data:`SECTION_MIN_PX` (or the content's, if
    smaller) and its minimum width the content's, so it never clips a field
    sideways and never forces the window taller than the screen.
    """

    def __init__(self, inner, min_px: int = SECTION_MIN_PX, policy=QSizePolicy.Policy.Maximum):
        super().__init__()
        self._min_px = min_px
        self.setWidget(inner)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, policy)

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def _content_height(self) -> int:
        """The content's height at the width it gets (wrapped text grows taller when narrower)."""
        inner = self.widget()
        width = self.width() - self._extra_width()
        if inner.hasHeightForWidth() and width > 0:
            return max(inner.heightForWidth(width), inner.minimumSizeHint().height())
        return inner.sizeHint().height()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        # as narrow as the content allows: on a laptop screen every pixel of width is the canvas's
        width = self.widget().minimumSizeHint().width() + self._extra_width() + WIDTH_SLACK_PX
        return QSize(width, self._content_height() + 2 * self.frameWidth())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        inner = self.widget().minimumSizeHint()
        height = min(self._min_px, self._content_height())
        return QSize(inner.width() + self._extra_width(), height + 2 * self.frameWidth())

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():
            self.updateGeometry()  # the content's height for this width may differ


class Scrolled(Container):
    """magicgui widgets in a :class:`ScrollSection` (``reset_choices`` still reaches them)."""

    def __init__(self, widgets: list, *, min_px: int = SECTION_MIN_PX, expanding: bool = False):
        self.content = Container(widgets=widgets, labels=False)
        self.content.margins = (0, 0, 0, 0)
        policy = QSizePolicy.Policy.Expanding if expanding else QSizePolicy.Policy.Maximum
        self.section = ScrollSection(self.content.native, min_px, policy)
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(self.section)
        self.native.setSizePolicy(QSizePolicy.Policy.Preferred, policy)

    def reset_choices(self, *_args) -> None:
        super().reset_choices()
        self.content.reset_choices()


def _page_sized_tabs():
    """A QTabWidget as tall as the page shown (Qt's own is as tall as its tallest page)."""

    class PageSizedTabs(QTabWidget):
        def _fit(self, hint, page_hint):
            # the tab bar, plus the frame document mode still draws around the page
            hint.setHeight(page_hint.height() + self.tabBar().sizeHint().height() + 6)
            return hint

        def sizeHint(self):  # noqa: N802 - Qt API
            page = self.currentWidget()
            return self._fit(super().sizeHint(), page.sizeHint()) if page else super().sizeHint()

        def minimumSizeHint(self):  # noqa: N802 - Qt API
            page = self.currentWidget()
            return self._fit(super().minimumSizeHint(), page.minimumSizeHint()) if page else \
                super().minimumSizeHint()

    def fit_to_page(index: int) -> None:
        # pages not shown must not count towards the minimum height of Qt's page stack either
        for i in range(tabs.count()):
            policy = QSizePolicy.Policy.Preferred if i == index else QSizePolicy.Policy.Ignored
            tabs.widget(i).setSizePolicy(policy, policy)
        tabs.updateGeometry()

    tabs = PageSizedTabs()
    tabs.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
    tabs.currentChanged.connect(fit_to_page)
    return tabs, fit_to_page


class Tabs(Container):
    """magicgui sub-forms as the pages of a tab widget (keeps a long dock widget short).

    The tabs take the height of the page shown; a page taller than the room
    left in the dock scrolls. ``reset_choices`` reaches the pages, so their
    layer pickers still follow the viewer's layers.
    """

    def __init__(self, pages: list[tuple[str, Container]]):
        self.pages = [page for _title, page in pages]
        self.tab_widget, fit_to_page = _page_sized_tabs()
        self.tab_widget.setDocumentMode(True)
        for title, page in pages:
            page.native.layout().addStretch(1)  # rows stay at the top of a page taller than they need
            self.tab_widget.addTab(ScrollSection(page.native), title)
        fit_to_page(0)
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(self.tab_widget)
        self.native.setSizePolicy(self.tab_widget.sizePolicy())

    def reset_choices(self, *_args) -> None:
        super().reset_choices()
        for page in self.pages:
            page.reset_choices()

    def show_page(self, index: int) -> None:
        self.tab_widget.setCurrentIndex(index)


def dock_body(widgets: list, *, stretch: bool = True) -> Scrolled:
    """The whole content of a dock, in one scroll area that fills the dock.

    ``stretch``: keep the rows at the top (no widget takes the spare height).
    """
    body = Scrolled(widgets, min_px=SECTION_MIN_PX, expanding=True)
    if stretch:
        body.content.native.layout().addStretch(1)
    return body


def dock_of(qwidget) -> QDockWidget | None:
    """The QDockWidget holding ``qwidget``, if it is docked."""
    parent = qwidget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def tabify_when_docked(container: Container) -> None:
    """Once ``container`` sits in a dock, tabify that dock with the other SegLab docks of its area.

    napari stacks docks opened from the Plugins menu on top of each other,
    which squeezes each one (and grows the window when they do not fit).
    The dock just opened is brought to the front.
    """
    container.native.setProperty(DOCK_PROPERTY, True)
    QTimer.singleShot(0, lambda: _tabify(container.native))


def _tabify(qwidget) -> None:
    with contextlib.suppress(RuntimeError):  # the widget may be gone already
        dock = dock_of(qwidget)
        main = dock.parentWidget() if dock is not None else None
        if dock is None or dock.isFloating() or not isinstance(main, QMainWindow):
            return
        area = main.dockWidgetArea(dock)
        ours = [other for other in main.findChildren(QDockWidget)
                if other is not dock and not other.isFloating() and other.isVisible()
                and main.dockWidgetArea(other) == area and other.widget() is not None
                and other.widget().property(DOCK_PROPERTY)]
        if ours and dock not in main.tabifiedDockWidgets(ours[-1]):
            main.tabifyDockWidget(ours[-1], dock)
        show_dock(dock)


class _UndockWatch(QObject):
    """Calls ``callback`` when its widget leaves the dock it was in (napari's close button reparents it)."""

    def __init__(self, qwidget, callback):
        super().__init__(qwidget)
        self._callback = callback
        self._docked = False

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ParentChange:
            docked = dock_of(obj) is not None
            if self._docked and not docked:
                with contextlib.suppress(Exception):  # never raise in an event filter
                    self._callback()
            self._docked = docked
        return False


def watch_undock(qwidget, callback) -> QObject:
    """Call ``callback`` when the QWidget ``qwidget`` is taken out of its dock (the dock was closed); the watch
    is a child of ``qwidget``, so it lives as long as the widget."""
    watch = _UndockWatch(qwidget, callback)
    qwidget.installEventFilter(watch)
    return watch


def on_undocked(container: Container, callback) -> None:
    """Call ``callback`` when ``container`` is taken out of its dock (the dock was closed)."""
    container._undock_watch = watch_undock(container.native, callback)


def show_dock(dock: QDockWidget) -> None:
    """Show ``dock`` and bring it to the front of its tab group."""
    dock.show()
    dock.raise_()


def open_dock(viewer, name: str):
    """Open (or bring to the front) the SegLab dock ``name``; returns its widget."""
    dock, widget = viewer.window.add_plugin_dock_widget("napari-seglab", name)
    show_dock(dock)
    return widget
