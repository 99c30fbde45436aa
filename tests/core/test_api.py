"""The blocking twins: a script gets results, never generators; events still reach it when asked."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile

from napari_seglab.core import api
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import FileDone, Message, TileDone, drive
from napari_seglab.core.predict import Prediction, iter_predict_image


def test_predict_image_returns_the_prediction_and_hands_events_to_on_event(tiny_model, blobs):
    img = np.tile(blobs[0], (2, 2))
    model = api.load_model(tiny_model, "cpu")
    events: list = []
    pred = api.predict_image(model, img, tile=96, overlap=0.25, on_event=events.append)
    assert isinstance(pred, Prediction) and pred.labels.shape == img.shape and not pred.stopped
    tiles = [e for e in events if isinstance(e, TileDone)]
    assert tiles and tiles[-1].tile == tiles[-1].tiles and tiles[-1].fraction == 1.0
    # the same labels as driving the generator by hand
    assert np.array_equal(pred.labels, drive(iter_predict_image(model, img, tile=96, overlap=0.25)).labels)


def test_a_stop_set_before_the_call_returns_an_empty_stopped_prediction(tiny_model, blobs):
    stop = threading.Event()
    stop.set()
    pred = api.predict_image(api.load_model(tiny_model, "cpu"), blobs[0], stop=stop)
    assert pred.stopped and not pred.labels.any()


def test_bad_options_raise_input_error_from_the_blocking_call(tiny_model, blobs):
    with pytest.raises(InputError, match="overlap"):
        api.predict_image(api.load_model(tiny_model, "cpu"), blobs[0], overlap=1.0)


@pytest.mark.slow
def test_run_batch_returns_the_summary(tiny_model, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        tifffile.imwrite(inp / f"f{i}.tif", (np.random.default_rng(i).random((40, 48)) * 255).astype(np.uint8))
    seen: list = []
    summary = api.run_batch(str(tiny_model), str(inp), str(tmp_path / "out"), workers=0, device="cpu",
                            on_event=seen.append)
    assert (summary.total, summary.ok) == (2, 2)
    assert [e.status for e in seen if isinstance(e, FileDone)] == ["ok", "ok"]
    assert any(isinstance(e, Message) for e in seen)


def test_drive_closes_the_generator_when_the_handler_fails():
    closed = []

    def job():
        try:
            yield 1
            yield 2
            return "done"
        finally:
            closed.append(True)

    assert drive(job()) == "done" and closed == [True]

    def boom(_event):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(job(), boom)
    assert closed == [True, True]  # the generator's clean-up ran
