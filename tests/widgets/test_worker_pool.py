"""SegLab's worker pool: a worker starts once, is released when done, and quits with the application."""

from __future__ import annotations

import threading

import pytest
from widget_helpers import WAIT_MS

from napari_seglab._widgets import _worker
from napari_seglab._widgets._worker import Job


def _endless(stop: threading.Event, hold: threading.Event, cleanup: dict):
    try:
        while not stop.is_set():
            yield 1
            hold.wait(5)
        return "stopped"
    finally:
        cleanup["thread"] = threading.current_thread()


def test_a_worker_starts_once_and_is_released_when_done(qtbot):
    job = Job(lambda stop: iter([1, 2])).start()
    assert job.worker in _worker._RUNNING
    with pytest.raises(RuntimeError, match="already started"):
        job.worker.start()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: job.worker not in _worker._RUNNING, timeout=WAIT_MS)


def test_running_jobs_quit_with_the_application(qtbot):
    hold, cleanup, results = threading.Event(), {}, []
    job = Job(lambda stop: _endless(stop, hold, cleanup), on_result=results.append).start()
    qtbot.waitUntil(lambda: job.worker.is_running, timeout=WAIT_MS)
    _worker.quit_running_jobs()  # what the application's aboutToQuit runs
    hold.set()
    assert job.wait(WAIT_MS / 1000)
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT_MS)
    assert cleanup["thread"] is not threading.main_thread()  # closed in the worker thread
    assert results == []  # a quit worker returns nothing
    qtbot.waitUntil(lambda: job.worker not in _worker._RUNNING, timeout=WAIT_MS)
