"""Open napari with the sample nuclei + scribbles and the SegLab Train and Predict widgets.

Usage (from the repository root, with the package installed)::

    python scripts/launch.py

Paint more strokes in the ``scribbles`` layer (1 = background, 2 = nucleus),
press Train, then Predict with the model it wrote.
"""

from __future__ import annotations

import napari


def main() -> None:
    viewer = napari.Viewer(title="napari-seglab")
    viewer.open_sample("napari-seglab", "nuclei_scribbles")
    viewer.window.add_plugin_dock_widget("napari-seglab", "Train")
    viewer.window.add_plugin_dock_widget("napari-seglab", "Predict", tabify=True)
    napari.run()


if __name__ == "__main__":
    main()
