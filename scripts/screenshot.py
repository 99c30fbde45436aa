"""Make docs/screenshot.png: SegLab trained on the sample nuclei, its prediction, both widgets docked.

Usage (from the repository root; on a headless machine under Xvfb)::

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshot.py [--epochs 6] [--out docs/screenshot.png]

Trains a small U-Net from scratch on the CPU on the sample's dense instance
mask (label mode "instances"; a fixed number of steps, so the picture does not
depend on the machine's speed; a few minutes on 2 cores), predicts the image,
and saves the whole window with the Train dock's loss/Dice plot (kept under
1 MB).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000


def wait_while_busy(widget, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while widget.busy and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.busy:
        raise SystemExit(f"{type(widget).__name__} still busy after {timeout:.0f} s")


def settle(rounds: int = 30) -> None:
    for _ in range(rounds):
        QApplication.processEvents()
        time.sleep(0.01)


def shrink_png(path: Path) -> None:
    """Re-save ``path`` with a palette (and, if still needed, smaller) until it is under MAX_BYTES."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = 1.0
    while path.stat().st_size > MAX_BYTES and scale > 0.4:
        small = image if scale == 1.0 else image.resize((int(image.width * scale), int(image.height * scale)),
                                                          Image.Resampling.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        scale -= 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of 10 steps")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()

    viewer = napari.Viewer(title="napari-seglab")
    viewer.window._qt_window.resize(1800, 1000)
    viewer.open_sample("napari-seglab", "nuclei_instances")
    train_dock, train = viewer.window.add_plugin_dock_widget("napari-seglab", "Train")
    predict_dock, predict = viewer.window.add_plugin_dock_widget("napari-seglab", "Predict")
    viewer.window._qt_window.splitDockWidget(train_dock, predict_dock, Qt.Orientation.Horizontal)

    model = Path(tempfile.mkdtemp()) / "nuclei_unet.pt"
    train._labels_combo.value = viewer.layers["instances"]
    train._mode.value = "instances"
    train._lr.value = "3e-3"  # from scratch
    train._encoder.native.setEditText("resnet18")
    train._patch.value = "128"
    train._batch.value = "4"
    train._epochs.value = args.epochs
    train._steps.value = 10
    train._save_to.value = model
    train._preview.value = 10
    train._controls.run_button.native.click()
    wait_while_busy(train, 60 * 60)
    print(train._controls.status.value)

    predict.set_checkpoint(model)
    predict.set_image(viewer.layers["nuclei"])
    predict._controls.run_button.native.click()
    wait_while_busy(predict, 300)
    print(predict._controls.status.value)

    viewer.layers["instances"].visible = False
    viewer.layers["nuclei prediction"].visible = False
    viewer.layers.selection.active = viewer.layers["nuclei labels"]
    viewer.reset_view()
    settle()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    shrink_png(args.out)
    print(f"{args.out}: {args.out.stat().st_size / 1e3:.0f} kB")
    viewer.close()


if __name__ == "__main__":
    main()
