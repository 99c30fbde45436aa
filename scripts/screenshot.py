"""Make docs/screenshot.png: napari maximised with all four SegLab docks, after training on the sample nuclei.

Usage (from the repository root; on a headless machine under Xvfb whose
screen has the size you want)::

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshot.py [OUT.png] [--epochs 8] [--quick]
    xvfb-run -a -s "-screen 0 1366x768x24" python scripts/screenshot.py docs/assist.png --assist
    xvfb-run -a -s "-screen 0 1366x768x24" python scripts/screenshot.py docs/nuclei3d.png --volume --epochs 12

The window is maximised on the screen, with a window manager (openbox, when
installed, is started for the picture) so that it gets a real frame. The
four docks open the way the Plugins menu opens them (they tabify). Unless
``--quick``, a small U-Net is trained from scratch on the CPU on the
sample's dense instance mask (a fixed number of steps, so the picture does
not depend on the machine's speed; a few minutes on 2 cores), the image is
predicted from the Predict dock, and the Train dock is brought to the front
with its loss/Dice plot. With ``--assist`` the picture shows model-assisted
annotation instead: a few whole nuclei and background strokes painted in the
``objects`` mode, a model trained on them (a fixed number of steps), its
confident objects accepted and the doubtful ones boxed ("paint next"). The
PNG is kept under 1 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000
DOCKS = ("Train", "Predict", "Evaluate", "Batch")


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


@contextlib.contextmanager
def window_manager():
    """Run openbox for the picture when it is installed and no other window manager is asked for."""
    process = None
    if os.environ.get("DISPLAY") and shutil.which("openbox") and not os.environ.get("SEGLAB_NO_WM"):
        process = subprocess.Popen(["openbox"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let it take the screen before the window maps
    try:
        yield
    finally:
        if process is not None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)


def open_docks(viewer) -> dict:
    """The four docks, opened one after the other as from the Plugins menu; returns {name: (dock, widget)}."""
    docks = {}
    for name in DOCKS:
        docks[name] = viewer.window.add_plugin_dock_widget("napari-seglab", name)
        settle(5)
    return docks


def train_and_predict(viewer, docks: dict, epochs: int) -> None:
    train, predict = docks["Train"][1], docks["Predict"][1]
    model = Path(tempfile.mkdtemp()) / "nuclei_unet.pt"
    train._labels_combo.value = viewer.layers["instances"]
    train._mode.value = "instances"
    train._lr.value = "3e-3"  # from scratch
    train._patch.value = "128"
    train._batch.value = "4"
    train._epochs.value = epochs
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
    if "nuclei prediction" in viewer.layers:
        viewer.layers["nuclei prediction"].visible = False
    viewer.layers.selection.active = viewer.layers["nuclei labels"]


def painted_objects(instances, n: int = 12, seed: int = 1):
    """Objects-mode labels a person might paint: ``n`` large isolated nuclei whole, and background strokes."""
    import numpy as np
    from scipy import ndimage as ndi

    from napari_seglab.core.synthetic import make_scribbles

    inst = np.asarray(instances)
    grown = ndi.grey_dilation(inst, size=5)
    ids = [i for i in np.unique(inst) if i and np.setdiff1d(np.unique(grown[inst == i]), [0, i]).size == 0]
    ids = sorted(ids, key=lambda i: -int((inst == i).sum()))[:n]
    labels = np.where(make_scribbles(inst, seed=seed) == 1, 1, 0).astype(np.uint16)
    for k, i in enumerate(ids):
        labels[inst == i] = k + 2
    return labels


def assist_picture(viewer, docks: dict, epochs: int, init: Path | None = None):
    """Train in the objects mode on a few painted nuclei, accept the confident objects, box the doubtful ones."""
    train = docks["Train"][1]
    painted = viewer.add_labels(painted_objects(viewer.layers["instances"].data), name="nuclei objects")
    viewer.layers["instances"].visible = False
    train.reset_choices()
    train._labels_combo.value = painted
    train._mode.value = "objects"
    train._time.value = 0  # the dock's defaults, but a fixed number of steps: the same picture on any machine
    train._epochs.value = epochs
    train._steps.value = 10
    train._save_to.value = Path(tempfile.mkdtemp()) / "nuclei_objects.pt"
    train._preview.value = 0
    if init is not None:  # a model trained for the picture before: two more steps, then the same prediction
        train._init.value = init
        train._epochs.value, train._steps.value = 1, 2
    train._controls.run_button.native.click()
    wait_while_busy(train, 60 * 60)
    print(train._controls.status.value)
    print(train.assist.status.value)
    train.assist.accept.native.click()
    wait_while_busy(train.assist, 120)
    train.assist.toggle.value = True
    train.assist.paint_next.native.click()
    print(train.assist.status.value)
    print(train.assist.message)
    if "nuclei prediction" in viewer.layers:
        viewer.layers["nuclei prediction"].visible = False
    viewer.layers.selection.active = painted
    return train.assist


def volume_picture(viewer, docks: dict, steps: int, init: Path | None = None) -> None:
    """A synthetic confocal stack (z step 2x the pixel), a flows U-Net trained on its planes (or ``init``),
    3D objects from the Predict dock, shown in napari's 3D view."""
    from napari_seglab.core.events import drive
    from napari_seglab.core.synthetic import make_nuclei_3d
    from napari_seglab.core.train import TrainConfig, iter_train

    model = init
    if model is None:
        train_img, train_lab = make_nuclei_3d((16, 96, 96), seed=0, anisotropy=2.0)
        model = Path(tempfile.mkdtemp()) / "nuclei3d_flows.pt"
        cfg = TrainConfig(label_mode="instances", instance_head="flows", epochs=max(1, steps // 25),
                          steps_per_epoch=25, patch=64, batch_size=8, lr=3e-3, device="cpu", val_fraction=0.0,
                          model_out=str(model), anisotropy=2.0)  # its ZX/ZY planes are learnt too
        drive(iter_train([train_img], [train_lab], cfg, axes=["ZYX"]))
    stack, _ = make_nuclei_3d((16, 96, 96), seed=1, anisotropy=2.0)
    viewer.add_image(stack, name="stack", colormap="gray", scale=(2.0, 1.0, 1.0))
    predict = docks["Predict"][1]
    predict.set_checkpoint(model)
    predict.set_image(viewer.layers["stack"])
    predict._volume.value = True
    predict._controls.run_button.native.click()
    wait_while_busy(predict, 1800)
    print(predict._controls.status.value)
    viewer.layers["stack"].visible = False
    # the labels layer chosen before the 3D view: napari 0.9's status line fails for a Labels layer with
    # features made active in 3D before the cursor has a position
    viewer.layers.selection.active = viewer.layers["stack labels"]
    settle()
    viewer.dims.ndisplay = 3
    docks["Predict"][0].show()
    docks["Predict"][0].raise_()


def scroll_to(widget) -> None:
    """Scroll the dock's scroll areas so that ``widget`` is in view."""
    from qtpy.QtWidgets import QScrollArea

    parent = widget.native.parentWidget()
    while parent is not None:
        if isinstance(parent, QScrollArea):
            parent.ensureWidgetVisible(widget.native, 0, 0)
        parent = parent.parentWidget()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of 10 steps")
    parser.add_argument("--quick", action="store_true", help="no training: the docks and the sample only")
    parser.add_argument("--assist", action="store_true",
                        help="model-assisted annotation: objects mode, confident objects accepted, doubtful boxed")
    parser.add_argument("--init", type=Path, default=None,
                        help="with --assist: start from this model (one trained for an earlier picture)")
    parser.add_argument("--volume", action="store_true",
                        help="3D objects of a synthetic z-stack, in the 3D view (--init: a flows model to use)")
    parser.add_argument("--sample", default=None, help="sample to open (default: instances, or scribbles with --quick)")
    args = parser.parse_args()

    with window_manager():
        viewer = napari.Viewer(title="napari-seglab")
        window = viewer.window._qt_window
        window.showMaximized()
        settle()
        if not args.volume:
            viewer.open_sample("napari-seglab",
                               args.sample or ("nuclei_scribbles" if args.quick else "nuclei_instances"))
        docks = open_docks(viewer)
        shown = None
        if args.volume:
            volume_picture(viewer, docks, args.epochs * 10, args.init)
        elif args.assist:
            shown = assist_picture(viewer, docks, args.epochs, args.init)
        elif not args.quick:
            train_and_predict(viewer, docks, args.epochs)
        if not args.volume:
            train_dock = docks["Train"][0]
            train_dock.show()
            train_dock.raise_()
        settle()
        viewer.reset_view()
        if args.volume:  # a view from above and aside: nuclei as solids, not as planes
            viewer.camera.angles = (0.0, 35.0, 60.0)
            viewer.camera.zoom *= 0.95
        settle()
        if shown is not None:
            scroll_to(shown)
            settle()
        screen = QApplication.primaryScreen().geometry()
        frame = window.frameGeometry()
        print(f"screen {screen.width()}x{screen.height()}, window {frame.width()}x{frame.height()}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.out), canvas_only=False)
        shrink_png(args.out)
        print(f"{args.out}: {args.out.stat().st_size / 1e3:.0f} kB")
        viewer.close()


if __name__ == "__main__":
    main()
