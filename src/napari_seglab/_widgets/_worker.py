"""Worker plumbing: run a core generator in a napari thread worker for a widget.

A :class:`Job` drives one core generator (training, prediction, a batch) in a
napari ``GeneratorWorker``. Events the generator yields reach ``on_event`` on
the main thread; its return value reaches ``on_result``; an exception becomes
a napari notification; ``on_done`` always runs last so the widget can enable
its controls again.

Stopping has two strengths:

- :meth:`Job.stop` (the Stop button) sets the ``threading.Event`` the core
  generator checks between steps. The core then winds down on its own and
  still returns its result (training keeps the best model).
- :meth:`Job.abort` (the widget or viewer closes; napari's task manager calls
  ``worker.quit()``) also quits the worker and closes the core generator *in
  the worker thread*, so its ``finally`` clean-up (checkpoint writes) never
  runs on the GUI thread. Results arriving afterwards are ignored.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass

from napari.qt.threading import GeneratorWorker, create_worker

from ..core.device import is_oom, lower_thread_priority
from ..core.errors import InputError

#: how long closing a widget waits for its worker to finish the current step
SHUTDOWN_TIMEOUT_S = 15.0


def report_error(exc: BaseException) -> None:
    """Show ``exc`` as a napari notification.

    An :class:`InputError` shows its one-sentence message; an out-of-memory
    error says so; anything else shows its type and message (with the
    traceback kept in the notification for the "View Traceback" button).
    """
    from napari.utils import notifications  # looked up at call time: tests patch show_error

    if isinstance(exc, InputError):
        notifications.show_error(str(exc))
    elif is_oom(exc):
        notifications.show_error("out of memory: use smaller tiles, a smaller batch or patch, or the CPU")
    else:
        notifications.notification_manager.receive_error(type(exc), exc, exc.__traceback__)


def error_text(exc: BaseException) -> str:
    """One line for a status label."""
    if isinstance(exc, InputError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@dataclass
class _Failure:
    """An exception caught in the worker thread, handed to the main thread as a value.

    (superqt swallows a RuntimeError raised by a generator worker -- most torch
    errors are RuntimeErrors -- so exceptions never leave the thread raw.)
    """

    exc: BaseException
    text: str


_POOL = None
#: workers started in :func:`job_pool` and not finished yet; asked to quit when the application quits
_RUNNING: set[_ClosingWorker] = set()


def job_pool():
    """SegLab's own thread pool (its threads run at background priority; napari's shared pool is left alone)."""
    global _POOL
    if _POOL is None:
        from qtpy.QtCore import QCoreApplication, QThreadPool

        _POOL = QThreadPool()
        _POOL.setMaxThreadCount(4)  # Train, Predict and Batch can each run one job at a time
        app = QCoreApplication.instance()
        if app is not None:
            # napari quits the workers of Qt's global pool when the application quits; ours too
            app.aboutToQuit.connect(quit_running_jobs)
    return _POOL


def quit_running_jobs() -> None:
    """Ask every running SegLab worker to quit (each closes its generator in its own thread)."""
    for worker in list(_RUNNING):
        worker.quit()


class _ClosingWorker(GeneratorWorker):
    """A GeneratorWorker that runs in :func:`job_pool` at background priority and runs ``on_abort`` when quit.

    The priority keeps the viewer responsive on machines where the job would
    otherwise take every core from the GUI thread and a software OpenGL
    renderer (see :func:`..core.device.lower_thread_priority`).
    """

    on_abort: Callable[[], None] | None = None

    def start(self) -> None:
        """Run in SegLab's pool instead of Qt's global one (where superqt's ``start`` puts a worker).

        A worker is a ``QRunnable``, so ``QThreadPool.start`` runs it in any
        pool. Threads of our own pool may be re-niced for good without slowing
        napari's other workers. :data:`_RUNNING` holds the worker until it
        finishes, so that it is not collected while it runs and it quits with
        the application.
        """
        if self in _RUNNING:
            raise RuntimeError("this worker is already started")
        pool = job_pool()
        _RUNNING.add(self)
        # a weak reference: a connection that held the worker would keep it (and its widget) alive for good
        ref = weakref.ref(self)
        self.finished.connect(lambda: _RUNNING.discard(ref()))
        pool.start(self)

    def work(self):
        lower_thread_priority()
        try:
            return super().work()
        finally:
            if self.abort_requested and self.on_abort is not None:
                self.on_abort()


def _passthrough(gen: Generator):
    return (yield from gen)


class Job:
    """One core generator running in a worker thread, with its callbacks.

    Parameters
    ----------
    make_gen
        Called with the job's stop ``threading.Event``; returns the core
        generator. Called on the main thread, but a generator's body runs only
        in the worker thread. Copy layer data *before* building it.
    on_event, on_result, on_done
        Main-thread callbacks: each yielded event, the return value, and
        always at the very end (after success, failure, stop or abort).
    on_error
        Main-thread callback for a failure (after the notification is shown).
    """

    def __init__(self, make_gen: Callable[[threading.Event], Generator], *,
                 on_event: Callable[[object], None] | None = None,
                 on_result: Callable[[object], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None,
                 on_done: Callable[[], None] | None = None):
        self.stop_event = threading.Event()
        self.done_event = threading.Event()
        self.discarded = False
        self.running = False
        self._callbacks = (on_event, on_result, on_error, on_done)
        self._gen = self._guarded(make_gen(self.stop_event))
        self.worker = create_worker(_passthrough, self._gen, _worker_class=_ClosingWorker, _start_thread=False)
        self.worker.on_abort = self._close_generator
        self.worker.yielded.connect(self._on_yielded)
        self.worker.returned.connect(self._on_returned)
        self.worker.finished.connect(self._on_finished)

    def _guarded(self, gen: Generator):
        """Run ``gen``; return its value, or a _Failure instead of raising."""
        try:
            return (yield from gen)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the user, not kill the thread
            return _Failure(exc, traceback.format_exc())
        finally:
            self.done_event.set()

    def _close_generator(self) -> None:
        with contextlib.suppress(Exception):
            self._gen.close()
        self.done_event.set()

    def start(self) -> Job:
        self.running = True
        self.worker.start()
        return self

    def stop(self) -> None:
        """Ask the core generator to stop after its current step (keeps its result)."""
        self.stop_event.set()

    def abort(self) -> None:
        """Stop, quit the worker and ignore anything it still reports."""
        self.discarded = True
        self.stop_event.set()
        self.worker.quit()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the generator has finished or been closed; True if it did."""
        return self.done_event.wait(timeout)

    # main-thread slots -------------------------------------------------------------------------
    def _on_yielded(self, event: object) -> None:
        if not self.discarded:
            _call(self._callbacks[0], event)

    def _on_returned(self, value: object) -> None:
        if self.discarded:
            return
        _, on_result, on_error, _ = self._callbacks
        if isinstance(value, _Failure):
            report_error(value.exc)
            _call(on_error, value.exc)
        else:
            _call(on_result, value)

    def _on_finished(self) -> None:
        self.running = False
        if not self.discarded:
            _call(self._callbacks[3])


def _call(callback: Callable | None, *args) -> None:
    """Run a widget callback unless the widget's Qt side is already gone (viewer closing)."""
    if callback is None:
        return
    try:
        callback(*args)
    except RuntimeError as exc:
        if "has been deleted" not in str(exc):
            raise


class JobSlot:
    """Holds the one job a widget may run at a time; stops it when the widget goes away."""

    def __init__(self) -> None:
        self.job: Job | None = None

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def start(self, make_gen: Callable[[threading.Event], Generator], **callbacks) -> Job:
        if self.busy:
            raise InputError("a job is already running; stop it first")
        self.job = Job(make_gen, **callbacks).start()
        return self.job

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop()

    def shutdown(self, *_args, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Abort a running job and wait (bounded) for its thread to let go of the generator."""
        job = getattr(self, "job", None)  # attributes may be gone at interpreter exit
        if job is not None and job.running:
            job.abort()
            job.wait(timeout)


def stop_on_destroy(native_widget, slot: JobSlot) -> None:
    """Abort ``slot``'s job when ``native_widget`` (a QWidget) is destroyed, and stop it (as the Stop button
    does: a training run keeps its best model) when its dock is closed with the dock's X, which napari
    answers by taking the widget out of the dock, not by destroying it."""
    from ._layout import watch_undock

    watch_undock(native_widget, slot.stop)

    def _on_destroyed(*_args) -> None:
        # never raise here: an exception in a slot during teardown aborts the process (PyQt6)
        with contextlib.suppress(Exception):
            slot.shutdown()

    # a plain closure: PyQt keeps it alive even after the widget's Python wrapper is gone
    native_widget.destroyed.connect(_on_destroyed)
