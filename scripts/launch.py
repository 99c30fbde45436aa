"""Open napari with the sample nuclei + scribbles and the SegLab Train and Predict widgets.

Usage (from the repository root, with the package installed)::

    python scripts/launch.py

Paint more strokes in the ``scribbles`` layer (1 = background, 2 = nucleus),
press Train, then Predict with the model it wrote. The two docks share one
tab group, Train in front (a new user has no model to predict with yet).
"""

from __future__ import annotations

import napari
from qtpy.QtCore import QTimer


def open_docks(viewer) -> None:
    """Train and Predict tabified, Train in front, and the sample fitted to the canvas they leave."""
    train_dock, _train = viewer.window.add_plugin_dock_widget("napari-seglab", "Train")
    viewer.window.add_plugin_dock_widget("napari-seglab", "Predict", tabify=True)

    def front() -> None:
        train_dock.show()
        train_dock.raise_()
        # the canvas narrowed when the docks opened: fit the image to what is left of it
        viewer.reset_view()

    # after the docks' own start-up (each brings itself to the front once docked) and the first layout
    QTimer.singleShot(0, lambda: QTimer.singleShot(0, front))


def main() -> None:
    viewer = napari.Viewer(title="napari-seglab")
    viewer.open_sample("napari-seglab", "nuclei_scribbles")
    open_docks(viewer)
    napari.run()


if __name__ == "__main__":
    main()
