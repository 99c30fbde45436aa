"""3D prediction in bounded memory: blocks (tiles in z too) give the whole volume's objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from volume3d import blob_model, many_blobs

from napari_seglab.core.errors import InputError
from napari_seglab.core.events import Message, TileDone, collect, drive
from napari_seglab.core.predict import _volume_blocks
from napari_seglab.core.predict._volume import iter_predict_volume
from napari_seglab.core.predict._volume_blocks import default_halo, resampled_region, spans


def _predict(head, image, **options):
    events, pred = collect(iter_predict_volume(blob_model(head), image, "ZYX", anisotropy=2.0, **options))
    return pred.labels, [e.text for e in events if isinstance(e, Message)], events


@pytest.mark.parametrize("head", ["distance", "flows"])
@pytest.mark.parametrize(("block", "halo"), [(24, 16), (40, 12)])
def test_blocks_give_the_whole_volumes_labels(head, block, halo):
    image, truth = many_blobs()
    whole, notes, _ = _predict(head, image, block=0)
    assert not any("3D blocks" in n for n in notes)
    assert int(whole.max()) >= 10  # the stand-in finds (most of) the 14 nuclei, some of them touching
    blocked, notes, _ = _predict(head, image, block=block, halo=halo)
    assert any("3D blocks" in n for n in notes)
    # the same objects with the same ids: both number them by their first voxel in raster order
    assert np.array_equal(blocked, whole)
    ids = blocked[blocked > 0]
    firsts = [int(np.flatnonzero(blocked.ravel() == i)[0]) for i in range(1, int(blocked.max()) + 1)]
    assert firsts == sorted(firsts) and set(np.unique(ids)) == set(range(1, int(blocked.max()) + 1))


def test_a_model_that_upsamples_decodes_the_flows_blockwise_too():
    image, _ = many_blobs(shape=(8, 48, 48), n=5)
    lm = blob_model("flows", scale=2.0)
    whole = drive(iter_predict_volume(lm, image, "ZYX", anisotropy=2.0, block=0)).labels
    events, pred = collect(iter_predict_volume(blob_model("flows", scale=2.0), image, "ZYX", anisotropy=2.0,
                                               block=16, halo=16))
    assert int(whole.max()) >= 4
    assert any(isinstance(e, Message) and "16x48x48 decoding grid" in e.text for e in events)
    assert np.array_equal(pred.labels, whole)


def test_large_volumes_are_cut_into_blocks_by_themselves(monkeypatch):
    image, _ = many_blobs(shape=(8, 48, 48), n=4)
    monkeypatch.setattr(_volume_blocks, "WHOLE_VOXELS", 16 * 48 * 48 - 1)
    monkeypatch.setattr(_volume_blocks, "DEFAULT_BLOCK", 24)
    labels, notes, events = _predict("distance", image)
    assert any("3D blocks: 4 of up to 24 voxels" in n for n in notes)
    tiles = [e for e in events if isinstance(e, TileDone)]
    assert tiles[-1].plane == tiles[-1].planes - 1  # progress runs over every block's planes once
    monkeypatch.setattr(_volume_blocks, "WHOLE_VOXELS", 16 * 48 * 48)
    _, notes, _ = _predict("distance", image)
    assert not any("3D blocks" in n for n in notes)


def test_objects_wider_than_the_halo_are_joined_across_block_faces_and_reported():
    image, _ = many_blobs()
    whole, _, _ = _predict("distance", image, block=0)
    labels, notes, _ = _predict("distance", image, block=16, halo=2)  # most nuclei are wider than the halo
    assert any("reached a 3D block's halo" in n for n in notes)
    assert np.array_equal(labels, whole)  # each block kept its core's part; the parts joined across the faces
    flows_whole, _, _ = _predict("flows", image, block=0)
    flows, _, _ = _predict("flows", image, block=16, halo=2)
    # with the flows, a cut nucleus' paths differ a little near the halo's edge: a few voxels change
    assert ((flows > 0) & (flows_whole > 0)).sum() >= 0.995 * (flows_whole > 0).sum()
    assert abs(int(flows.max()) - int(flows_whole.max())) <= 1
    zz, yy, xx = np.mgrid[:16, :96, :96]  # one nucleus far wider than the halo, across 2 x 2 x 2 blocks
    big = np.exp(-(((zz - 8) * 2.0) ** 2 + (yy - 48) ** 2 + (xx - 48) ** 2) / (2 * 14.0**2)).astype(np.float32)
    whole, _, _ = _predict("distance", big, block=0)
    labels, notes, _ = _predict("distance", big, block=24, halo=8)
    assert int(whole.max()) == 1 and np.array_equal(labels, whole)
    assert any("reached a 3D block's halo" in n for n in notes)
    with pytest.raises(InputError, match="block side"):
        drive(iter_predict_volume(blob_model(), image, "ZYX", block=-1))


def test_any_region_resamples_as_the_whole_volume():
    rng = np.random.default_rng(0)
    vol = rng.random((2, 7, 11, 13)).astype(np.float32)
    shape = (17, 22, 9)  # z stretched, y doubled, x shrunk
    whole = resampled_region(vol, shape, [(0, n) for n in shape])
    ref = F.interpolate(torch.from_numpy(vol)[None], size=shape, mode="trilinear", align_corners=False)[0].numpy()
    assert whole.shape == (2, *shape) and np.allclose(whole, ref, atol=1e-5)
    region = [(3, 12), (5, 22), (0, 4)]
    part = resampled_region(vol, shape, region)
    assert np.array_equal(part, whole[(slice(None), *(slice(a, b) for a, b in region))])
    # from a box of the volume only: the same values
    box = vol[:, :, 2:, :]
    again = resampled_region(box, shape, region, full=vol.shape[1:], origin=(0, 2, 0))
    assert np.array_equal(again, part)


def test_cores_cover_the_axis_once_and_halos_stay_inside():
    for length, block, halo in ((100, 32, 8), (5, 32, 8), (64, 64, 4), (65, 64, 4)):
        parts = spans(length, block, halo)
        cores = [c for c, _ in parts]
        assert cores[0][0] == 0 and cores[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(cores, cores[1:], strict=False))
        assert all(hi - lo <= block for lo, hi in cores)
        assert all(e[0] == max(0, c[0] - halo) and e[1] == min(length, c[1] + halo) for c, e in parts)
    assert default_halo(None) == 38 and default_halo(400 * np.pi) == 48 and default_halo(4.0) == 16


def test_the_python_api_takes_the_block_and_halo():
    from napari_seglab.core import api

    image, _ = many_blobs(shape=(8, 48, 48), n=4)
    events = []
    pred = api.predict_image(blob_model(), image, "ZYX", volume=True, anisotropy=2.0, block=24, halo=16,
                             on_event=events.append)
    assert any(isinstance(e, Message) and "3D blocks: 4 of up to 24" in e.text for e in events)
    whole = api.predict_image(blob_model(), image, "ZYX", volume=True, anisotropy=2.0, block=0)
    assert np.array_equal(pred.labels, whole.labels) and int(whole.labels.max()) >= 3
    with pytest.raises(InputError, match="volume=True"):
        api.predict_image(blob_model(), image, "ZYX", block=24)


def test_a_stop_between_blocks_returns_what_is_done():
    import threading

    image, _ = many_blobs(shape=(8, 48, 48), n=4)
    stop = threading.Event()
    gen = iter_predict_volume(blob_model(), image, "ZYX", anisotropy=2.0, block=24, halo=16, stop=stop)
    planes = 0
    try:
        while True:
            event = next(gen)
            if isinstance(event, TileDone):
                planes += 1
                if planes == 120:  # inside the second block's views (the first: 16 + 40 + 40 planes)
                    stop.set()
    except StopIteration as fin:
        pred = fin.value
    assert pred.stopped and not pred.labels.any() and planes == 120


@pytest.mark.parametrize(("options", "words"), [
    ({"block": 4}, "at least 8 voxels; got 4"),
    ({"block": 2.5}, "whole number of voxels"),
    ({"block": True}, "whole number of voxels"),
    ({"halo": -3}, "0 or more voxels; got -3"),
    ({"block": 24, "method": "linked"}, "linked method predicts plane by plane"),
])
def test_bad_3d_blocks_are_refused_before_any_work(options, words):
    image, _ = many_blobs(shape=(8, 48, 48), n=4)
    gen = iter_predict_volume(blob_model(), image, "ZYX", anisotropy=2.0, **options)
    with pytest.raises(InputError, match=words):
        next(gen)


def test_the_linked_method_takes_block_0():
    image, _ = many_blobs(shape=(8, 48, 48), n=4)
    pred = drive(iter_predict_volume(blob_model(), image, "ZYX", anisotropy=2.0, method="linked", block=0))
    assert int(pred.labels.max()) >= 3
