"""Worker plumbing: events, results, errors, Stop and abort around plain generators."""

from __future__ import annotations

import sys
import threading

import pytest
from widget_helpers import WAIT_MS

from napari_seglab._widgets._worker import Job, JobSlot
from napari_seglab.core.errors import InputError


def _counting(stop: threading.Event, n: int = 3, hold: threading.Event | None = None):
    for i in range(n):
        if stop.is_set():
            return "stopped"
        yield i
        if hold is not None:
            hold.wait(5)
    return "finished"


def _run(qtbot, make_gen):
    seen = {"events": [], "result": None, "errors": [], "done": 0}
    job = Job(make_gen, on_event=seen["events"].append, on_result=lambda r: seen.__setitem__("result", r),
              on_error=seen["errors"].append, on_done=lambda: seen.__setitem__("done", seen["done"] + 1))
    job.start()
    qtbot.waitUntil(lambda: seen["done"] == 1, timeout=WAIT_MS)
    return job, seen


def test_events_then_result_then_done(qtbot):
    job, seen = _run(qtbot, lambda stop: _counting(stop))
    assert seen["events"] == [0, 1, 2] and seen["result"] == "finished" and not seen["errors"]
    assert not job.running and job.done_event.is_set()


@pytest.mark.parametrize("exc", [InputError("labels are empty: paint some strokes first"),
                                 RuntimeError("a torch kernel failed")])
def test_errors_become_notifications_and_done_still_runs(qtbot, errors, exc):
    def failing(_stop):
        yield "started"
        raise exc

    _job, seen = _run(qtbot, failing)
    assert seen["events"] == ["started"] and seen["result"] is None and seen["errors"] == [exc]
    assert len(errors) == 1 and str(exc) in errors[0]


def test_stop_lets_the_generator_finish_with_its_result(qtbot):
    hold = threading.Event()
    seen = {"events": [], "result": None}
    job = Job(lambda stop: _counting(stop, n=100, hold=hold), on_event=seen["events"].append,
              on_result=lambda r: seen.__setitem__("result", r))
    job.start()
    qtbot.waitUntil(lambda: len(seen["events"]) > 0, timeout=WAIT_MS)
    job.stop()
    hold.set()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT_MS)
    assert seen["result"] == "stopped" and len(seen["events"]) < 100


def test_abort_closes_the_generator_in_the_worker_thread(qtbot):
    hold = threading.Event()
    cleanup = {}

    def gen(stop):
        try:
            yield from _counting(stop, n=100, hold=hold)
        finally:
            cleanup["thread"] = threading.current_thread()

    results = []
    slot = JobSlot()
    job = slot.start(gen, on_result=results.append)
    qtbot.waitUntil(lambda: job.worker.is_running, timeout=WAIT_MS)
    with pytest.raises(InputError):
        slot.start(gen)  # one job at a time
    job.abort()
    hold.set()
    assert job.wait(WAIT_MS / 1000)
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT_MS)
    assert cleanup["thread"] is not threading.main_thread()
    assert results == []  # an aborted job reports nothing


def _thread_nice() -> int:
    import os

    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux-only")
def test_jobs_run_at_background_priority_in_seglab_pool(qtbot):
    from qtpy.QtCore import QThreadPool

    from napari_seglab._widgets._worker import job_pool
    from napari_seglab.core.device import BACKGROUND_NICE

    seen = {}

    def probe(_stop):
        seen["thread"] = threading.get_ident()
        seen["nice"] = _thread_nice()
        # torch threads started from here inherit the priority
        inner = threading.Thread(target=lambda: seen.__setitem__("inner", _thread_nice()))
        inner.start()
        inner.join()
        yield seen["nice"]
        return "ok"

    main_nice = _thread_nice()
    _job, result = _run(qtbot, probe)
    assert result["result"] == "ok"
    assert seen["thread"] != threading.main_thread().ident
    assert seen["nice"] >= BACKGROUND_NICE and seen["inner"] >= BACKGROUND_NICE
    assert _thread_nice() == main_nice  # the GUI thread keeps its priority
    assert job_pool() is not QThreadPool.globalInstance()
