"""GUI responsiveness while SegLab works: event-loop gaps of a real napari viewer.

A 1 ms QTimer on the GUI thread records, for each callback, the time since the
previous one minus the 1 ms interval: the longest the viewer could not react
to the user. Phases:

* opening:    right after the Train and Predict docks open, while they import
              the model stack in the background (once per session);
* idle:       the viewer with the sample image and scribbles, doing nothing;
* repaints:   the renderer's floor: nothing computes, a Labels layer is replaced
              4 times a second (what one live-preview update costs napari and
              the OpenGL driver on their own; under Xvfb's software OpenGL this
              alone exceeds 50 ms);
* bare train: the noise floor: the same training run by the core in a plain
              thread, with no widget and no GUI updates (what the machine and
              torch cost the GUI thread on their own);
* training:   the Train widget on the sample (U-Net/resnet18, a fixed number of
              steps) with the live plot and a live preview every 2 steps, then
              the final prediction and uncertainty;
* prediction: the Predict widget on a 2048x2048 image, tile 512, with the
              uncertainty map and "where to paint next".

Run under Xvfb (a real OpenGL canvas is needed)::

    xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/gui_latency.py

Prints p99 and max gap of each phase; the last line summarises the max gaps
(goal: under 50 ms while working).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

GOAL_MS = 50.0


class GapMeter:
    """Times between the callbacks of a 1 ms timer on the GUI thread, minus the interval."""

    def __init__(self):
        from qtpy.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(1)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self._last: float | None = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append(max(0.0, now - self._last - 0.001))
        self._last = now

    def start(self) -> None:
        self.gaps, self._last = [], None
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        return np.asarray(self.gaps) * 1000.0  # ms


class StallTracer:
    """Diagnostics (``--trace``): samples every thread's Python stack while the GUI thread is stalled.

    A watchdog thread looks every 5 ms at the meter's last tick; when the GUI
    thread has not ticked for ``after`` ms it records the innermost frames of
    the GUI thread and of every other thread. Counts of the GUI-thread stacks
    show what the event loop was doing during the gaps.
    """

    def __init__(self, meter: GapMeter, after_ms: float = 30.0, depth: int = 9):
        import collections

        self.meter, self.after, self.depth = meter, after_ms / 1000, depth
        self.main_id = threading.main_thread().ident
        self.others: collections.Counter = collections.Counter()
        self.episodes: list[tuple[float, collections.Counter]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _fmt(self, frame) -> str:
        import traceback

        frames = traceback.extract_stack(frame)[-self.depth:]
        return " <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(frames))

    def _watch(self) -> None:
        import collections

        episode: collections.Counter | None = None
        started = 0.0
        while not self._stop.wait(0.005):
            last = self.meter._last
            stalled = (last is not None and self.meter.timer.isActive()
                       and time.perf_counter() - last >= self.after)
            if not stalled:
                if episode is not None:
                    self.episodes.append((time.perf_counter() - started, episode))
                    episode = None
                continue
            if episode is None:
                episode, started = collections.Counter(), last
            for ident, frame in sys._current_frames().items():
                if ident == self.main_id:
                    episode[self._fmt(frame)] += 1
                elif ident != threading.get_ident():
                    self.others[self._fmt(frame)] += 1

    def report(self, n: int = 12) -> None:
        import collections

        self._stop.set()
        print(f"GUI-thread stacks sampled while stalled > {self.after * 1000:.0f} ms (5 ms samples):")
        counts = sum((episode for _seconds, episode in self.episodes), collections.Counter())
        for stack, c in counts.most_common(n):
            print(f"  {c:5d}  {stack}")
        print("other threads at the same moments:")
        for stack, c in self.others.most_common(n):
            print(f"  {c:5d}  {stack}")
        print("longest stalls and what the GUI thread did in them:")
        for seconds, episode in sorted(self.episodes, key=lambda e: -e[0])[:n]:
            print(f"  {seconds * 1000:6.0f} ms: " + " | ".join(f"{c}x {s}" for s, c in episode.most_common(2)))


def run_until(done, timeout: float) -> bool:
    """Run the Qt event loop until ``done()`` is true (checked every 20 ms) or ``timeout`` seconds pass."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.monotonic() + timeout
    poll = QTimer()
    poll.timeout.connect(lambda: (done() or time.monotonic() > deadline) and loop.quit())
    poll.start(20)
    loop.exec()
    poll.stop()
    return bool(done())


def measure(name: str, meter: GapMeter, click, done, timeout: float) -> tuple[str, np.ndarray, float, float]:
    """Press a button (``click``), then record the gaps until ``done()``.

    Returns (name, gaps in ms, seconds of work, ms the click handler took).
    The handler's own time (reading layers, creating the preview layer) is
    the response to the user's click and is reported on its own.
    """
    t0 = time.perf_counter()
    click()
    handler_ms = (time.perf_counter() - t0) * 1000
    meter.start()
    finished = run_until(done, timeout)
    seconds = time.perf_counter() - t0
    gaps = meter.stop()
    if not finished:
        raise SystemExit(f"{name}: not finished after {timeout:.0f} s")
    return name, gaps, seconds, handler_ms


def big_image(size: int) -> np.ndarray:
    """A size x size uint16 nuclei image: the sample test image tiled (content matters little for timing)."""
    from napari_seglab._sample_data import nuclei_with_instances

    tile = nuclei_with_instances()[0][0]
    reps = (-(-size // tile.shape[0]), -(-size // tile.shape[1]))
    return np.ascontiguousarray(np.tile(tile, reps)[:size, :size])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps (2 epochs)")
    parser.add_argument("--size", type=int, default=2048, help="side of the predicted image")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of the idle phase")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--switch-ms", type=float, default=0, help="set the GIL switch interval (diagnostics)")
    parser.add_argument("--trace", action="store_true", help="sample the GUI thread's stack during stalls")
    args = parser.parse_args()

    import napari
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.switch_ms:
        sys.setswitchinterval(args.switch_ms / 1000)

    viewer = napari.Viewer(title="gui latency")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-seglab", "nuclei_scribbles")
    _dock, train = viewer.window.add_plugin_dock_widget("napari-seglab", "Train")
    _dock, predict = viewer.window.add_plugin_dock_widget("napari-seglab", "Predict")
    meter = GapMeter()
    tracer = StallTracer(meter) if args.trace else None
    results = []
    # opening the docks starts the one-time warm-up of the model stack (imports) in the background
    from napari_seglab._widgets._common import warm_up

    results.append(measure("opening", meter, lambda: None, lambda: not warm_up().is_alive(), 120))
    run_until(lambda: False, 1.0)  # let the window settle

    meter.start()
    run_until(lambda: False, args.idle)
    results.append(("idle", meter.stop(), args.idle, 0.0))

    # the repaint floor: what one visual update costs the GUI thread with nothing else running
    # (a labels layer replaced 4 times a second, as a live preview does)
    from qtpy.QtCore import QTimer

    scribbles = viewer.layers["scribbles"]
    painted = scribbles.data.copy()
    flip = QTimer()
    flip.timeout.connect(lambda: setattr(scribbles, "data", painted.copy()))
    meter.start()
    flip.start(250)
    run_until(lambda: False, args.idle)
    flip.stop()
    results.append(("repaints", meter.stop(), args.idle, 0.0))

    model = Path(tempfile.mkdtemp()) / "latency.pt"
    train._encoder.native.setEditText("resnet18")
    train._patch.value, train._batch.value = "128", "4"
    train._epochs.value, train._steps.value = 2, max(1, args.steps // 2)
    train._preview.value = 2
    train._device.value = "cpu"
    train._save_to.value = model
    results.append(measure("training", meter, train._controls.run_button.native.click, lambda: not train.busy,
                           30 * 60))
    trained = train._controls.status.value
    # the noise floor: the same training in a plain thread, with no widget and no GUI updates at all
    # (after the widget's run, so imports and first-time set-up are charged to the widget, not to it)
    from napari_seglab.core.events import drive
    from napari_seglab.core.train import TrainConfig
    from napari_seglab.core.train import iter_train as core_train

    finished = threading.Event()
    config = TrainConfig(encoder="resnet18", patch=128, batch_size=4, epochs=2, steps_per_epoch=max(1, args.steps // 2),
                         device="cpu", lr=1e-3)
    data = ([viewer.layers["nuclei"].data.copy()], [viewer.layers["scribbles"].data.copy()])
    run_until(lambda: False, 1.0)

    def bare():
        drive(core_train(*data, config))
        finished.set()

    results.append(measure("bare train", meter, threading.Thread(target=bare, daemon=True).start, finished.is_set,
                           30 * 60))

    # set the next phase up (adding a 2048x2048 image draws it once) outside the measurement
    image = viewer.add_image(big_image(args.size), name="big")
    run_until(lambda: False, 2.0)
    predict.set_checkpoint(model)
    predict.set_image(image)
    predict._device.value = "cpu"
    predict._tile.value = args.tile
    predict._uncertainty.value = predict._suggest.value = True
    results.append(measure("prediction", meter, predict._controls.run_button.native.click,
                           lambda: not predict.busy, 30 * 60))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}, {torch.get_num_threads()} torch threads")
    print(f"training: {trained}")
    print(f"prediction {args.size}x{args.size}, tile {args.tile}: {predict._controls.status.value}")
    for name, gaps, seconds, handler_ms in results:
        print(f"{name:<11} {seconds:6.1f} s  {len(gaps):6d} ticks  p99 gap {np.percentile(gaps, 99):6.1f} ms  "
              f"max gap {gaps.max():6.1f} ms  gaps > {GOAL_MS:.0f} ms: {int((gaps > GOAL_MS).sum()):3d}"
              + (f"  (click handler {handler_ms:.0f} ms)" if handler_ms > 1 else ""))
    working = max(gaps.max() for name, gaps, _s, _h in results if name in ("training", "prediction"))
    # the longest the user waits for the viewer anywhere in a job, the click's own handler included
    freeze = max(max(gaps.max(), handler) for name, gaps, _s, handler in results if name in ("training", "prediction"))
    viewer.close()
    if tracer is not None:
        tracer.report()
    floor = next(gaps.max() for name, gaps, _s, _h in results if name == "repaints")
    print("max gaps: " + ", ".join(f"{name} {gaps.max():.1f} ms" for name, gaps, _s, _h in results)
          + f"; worst while working {working:.1f} ms (goal < {GOAL_MS:.0f} ms): "
          + ("OK" if working < GOAL_MS else "TOO SLOW")
          + f"; longest freeze, click handlers included, {freeze:.1f} ms"
          + f"; {working / max(floor, 1e-9):.2f}x the renderer's own repaint floor ({floor:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
