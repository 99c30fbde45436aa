"""Block-wise prediction gives the whole image's result: same blended outputs, same objects up to renumbering.

Tiny blocks (64 px) on small images put many objects across block faces; the whole-image path
(:func:`iter_predict_image`) with the same tile is the reference.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_seglab.core.data import Normalization
from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.events import BlockDone, TileDone, collect
from napari_seglab.core.models import ModelSpec
from napari_seglab.core.objects import _flows as flows
from napari_seglab.core.predict import (
    iter_predict_blocks,
    iter_predict_image,
    load_model,
    wrap_model,
)
from napari_seglab.core.predict._blocks import BlockGrid, plan_blocks, refusal, sample_windows
from napari_seglab.core.synthetic import make_nuclei

CPU = torch.device("cpu")


def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a one-to-one map of ids turns ``a`` into ``b`` (0 stays 0)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


class Oracle(torch.nn.Module):
    """A flows 'network' that reads its tile's place from two coordinate channels and returns the
    (slightly perturbed) outputs of the true objects there, zeros beyond the plane."""

    def __init__(self, whole: np.ndarray):
        super().__init__()
        self.whole = torch.from_numpy(whole)

    def forward(self, x):
        y0, x0 = int(round(float(x[0, 0, 0, 0]))), int(round(float(x[0, 1, 0, 0])))
        h, w = x.shape[-2:]
        out = torch.zeros((1, self.whole.shape[0], h, w))
        part = self.whole[:, y0:y0 + h, x0:x0 + w]
        out[0, :, : part.shape[1], : part.shape[2]] = part
        # a tile's own border effect, so the blend matters: weaker confidence near its edges
        ramp = torch.minimum(torch.arange(h)[:, None], torch.arange(w)[None]).float().clamp(max=8) / 8
        return out * (0.5 + 0.5 * ramp)


def oracle_model(truth: np.ndarray, kind: str = "flows"):
    target, _ = flows.targets(truth, kind=kind)
    raw = target.copy()
    raw[0] = np.where(target[0] > 0, 6.0, -6.0)
    if kind == "flows":
        raw[1:] *= flows.FLOW_SCALE
    rng = np.random.default_rng(3)
    raw += rng.normal(0, 0.3, raw.shape).astype(np.float32)
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=2, n_classes=2,
                     options={"head": kind})
    meta = {"model": spec.to_dict(), "label_mode": "instances",
            "normalization": Normalization(per_image=False, lo=(0.0, 0.0), hi=(1.0, 1.0)).to_dict()}
    yy, xx = np.mgrid[: truth.shape[0], : truth.shape[1]].astype(np.float32)
    return wrap_model(Oracle(raw.astype(np.float32)), meta, CPU), np.stack([yy, xx], -1)


def run_blocks(model, image, *, block, tile, halo=48, probabilities=False, stop=None):
    h, w = image.shape[:2]
    labels = np.zeros((h, w), np.int32)
    probs = np.zeros((2, h, w), np.float32) if probabilities else None
    events, result = collect(iter_predict_blocks(model, lambda ys, xs: image[ys, xs], (h, w), labels,
                                                 probabilities_out=probs, block=block, halo=halo, tile=tile,
                                                 stop=stop))
    return labels, probs, events, result


@pytest.mark.parametrize("kind", ["flows", "distance"])
def test_blocked_instance_labels_equal_the_whole_image_up_to_renumbering(kind):
    _, truth = make_nuclei((200, 232), seed=4, radius_range=(5.0, 11.0))
    model, image = oracle_model(truth.astype(np.int32), kind)
    whole = iter_predict_image(model, image, "YXC", tile=64, overlap=0.25)
    _, ref = collect(whole)
    labels, _, events, result = run_blocks(model, image, block=64, tile=64)
    assert ref.labels.max() > 20
    assert same_up_to_renumbering(labels, ref.labels)
    assert match_instances(labels, ref.labels, (0.5, 0.75))["ap75"] == 1.0
    assert result.objects == len(np.unique(ref.labels)) - 1 and result.blocks == 16
    # many objects cross block faces and stay one object; ids are 1..N by first pixel in raster order
    assert result.crossing >= 10
    firsts = [np.flatnonzero(labels.ravel() == i)[0] for i in range(1, result.objects + 1)]
    assert firsts == sorted(firsts)
    assert sum(isinstance(e, BlockDone) and e.stage == "predict" for e in events) == 16
    assert any(isinstance(e, TileDone) and e.planes == 16 for e in events)


@pytest.mark.parametrize(("halo", "growth"), [(16, 3), (4, 1)])
def test_objects_wider_than_the_halo_stay_whole(halo, growth, monkeypatch):
    from napari_seglab.core.predict import _blocks

    monkeypatch.setattr(_blocks, "HALO_GROWTH", growth)
    monkeypatch.setattr(_blocks, "MAX_HALO_FRACTION", 2.0)
    truth = np.zeros((128, 192), np.int32)
    yy, xx = np.mgrid[:128, :192]
    truth[(yy - 64) ** 2 / 30**2 + (xx - 96) ** 2 / 70**2 <= 1] = 1  # 140 px wide, across 3 blocks
    truth[(yy - 20) ** 2 + (xx - 20) ** 2 <= 36] = 2
    model, image = oracle_model(truth, "flows")
    _, ref = collect(iter_predict_image(model, image, "YXC", tile=64, overlap=0.25))
    labels, _, events, result = run_blocks(model, image, block=64, tile=64, halo=halo)
    inside = labels[truth == 1]
    assert len(np.unique(inside[inside > 0])) == 1  # the wide object has one id
    assert match_instances(labels, ref.labels, (0.5,))["ap50"] == 1.0 and result.objects == 2
    # the halo grows for the blocks it crosses; beyond the growth allowed, pieces join across faces
    assert any(f"wider than the {halo}px halo" in getattr(e, "text", "") for e in events)
    if growth == 1:
        assert result.merged >= 1


def test_blocked_semantic_outputs_equal_the_whole_image(random_unet):
    model = load_model(random_unet, "cpu", runtime="torch")
    image, _ = make_nuclei((150, 200), seed=1)
    _, ref = collect(iter_predict_image(model, image, "YX", tile=64, overlap=0.25, probabilities=True))
    labels, probs, _, result = run_blocks(model, image, block=64, tile=64, probabilities=True)
    np.testing.assert_array_equal(probs, ref.probabilities)  # the same tiles blended the same way, bit for bit
    np.testing.assert_array_equal(labels, ref.labels)
    assert result.kind == "semantic" and result.blocks == 12


def test_a_stop_ends_block_prediction_between_tiles(random_unet):
    model = load_model(random_unet, "cpu", runtime="torch")
    image = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    stop = threading.Event()
    stop.set()
    _, _, events, result = run_blocks(model, image, block=64, tile=64, stop=stop)
    assert result.stopped and not events


def test_a_trained_model_at_object_scale_1_5_predicts_block_wise_as_the_whole_image(flows_model):
    model = load_model(flows_model, "cpu", runtime="torch")  # object scale 1.5: resamples every image
    assert refusal(model) is None
    assert "split" in refusal(model, split_instances=True)
    # (seed 2 gives this young model a thin 126 px wide object along the top edge: wider than the halo,
    # one block's flow check drops its piece, as it would at object scale 1)
    image, _ = make_nuclei((96, 128), seed=3)
    _, ref = collect(iter_predict_image(model, image, "YX", tile=64, overlap=0.25))
    labels, _, events, result = run_blocks(model, image, block=64, tile=64, halo=32)
    assert same_up_to_renumbering(labels, ref.labels) and result.objects > 10 and result.crossing > 0
    assert any("resampling the image by 1.5" in getattr(e, "text", "") for e in events)
    with pytest.raises(InputError, match="int64 labels"):  # the model's grid is what the stitching ids number
        plan_blocks(model, lambda ys, xs: np.zeros((ys.stop - ys.start, xs.stop - xs.start), np.float32),
                    (40000, 40000), labels_dtype=np.int32)


def test_grid_and_normalisation_sample_are_bounded():
    grid = BlockGrid((100, 130), 64)
    cores = grid.cores()
    assert len(cores) == len(grid) == 6
    cover = np.zeros((100, 130), int)
    for ys, xs in cores:
        cover[ys, xs] += 1
    assert (cover == 1).all()
    assert grid.extended(cores[0], 10) == (slice(0, 74), slice(0, 74))
    assert sample_windows((300, 400)) == [(slice(0, 300), slice(0, 400))]
    windows = sample_windows((8192, 8192))
    assert len(windows) == 16 and sum((y.stop - y.start) * (x.stop - x.start) for y, x in windows) == 2**22


def test_a_lazy_ome_zarr_is_predicted_into_ome_zarr_outputs_published_only_when_complete(tmp_path):
    from napari_seglab.core.io import OmeZarrWriter, open_lazy
    from napari_seglab.core.predict import iter_predict_to_zarr

    _, truth = make_nuclei((160, 192), seed=5, radius_range=(5.0, 10.0))
    model, image = oracle_model(truth.astype(np.int32))
    source = tmp_path / "in.ome.zarr"
    with OmeZarrWriter(source, np.moveaxis(image, -1, 0).shape, np.float32, chunk=64, name="image") as w:
        w.array[...] = np.moveaxis(image, -1, 0)
        w.finish()
    lazy = open_lazy(source)
    _, ref = collect(iter_predict_image(model, image, "YXC", tile=64, overlap=0.25))
    out, probs = tmp_path / "labels.ome.zarr", tmp_path / "probs.ome.zarr"
    stop = threading.Event()
    stop.set()
    _, stopped = collect(iter_predict_to_zarr(model, lazy, out, probabilities_path=probs, block=64, halo=48,
                                              tile=64, stop=stop))
    assert stopped.stopped and not any(tmp_path.glob("*s.ome.zarr")) and len(list(tmp_path.iterdir())) == 1
    _, result = collect(iter_predict_to_zarr(model, lazy, out, probabilities_path=probs, block=64, halo=48,
                                             tile=64, protect=[source]))
    labels = open_lazy(out).load()
    assert same_up_to_renumbering(labels, ref.labels) and result.objects == labels.max()
    assert open_lazy(probs).shape == (160, 192, 2)
    from napari_seglab.core.api import predict_large  # the blocking twin

    again = predict_large(model, source, tmp_path / "again.ome.zarr", block=64, halo=48, tile=64)
    assert again.objects == result.objects
    np.testing.assert_array_equal(open_lazy(tmp_path / "again.ome.zarr").load(), labels)


@pytest.fixture(scope="module")
def random_flows(tmp_path_factory):
    """A random-weight flows-head U-Net checkpoint at object scale 1 (the objects are arbitrary, but fixed)."""
    from napari_seglab.core.models import build_model, save_checkpoint

    torch.manual_seed(1)
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2,
                     options={"head": "flows"})
    model, _ = build_model(spec)
    meta = {"model": spec.to_dict(), "label_mode": "instances", "normalization": Normalization().to_dict()}
    return save_checkpoint(tmp_path_factory.mktemp("random_flows") / "m.pt", model, meta)


def test_block_tasks_on_a_dask_cluster_give_the_output_of_one_process(random_flows, tmp_path):
    from distributed import Client, LocalCluster

    from napari_seglab.core.io import OmeZarrWriter, open_lazy
    from napari_seglab.core.predict import iter_predict_blocks_dask

    image, _ = make_nuclei((192, 256), seed=7)
    source = tmp_path / "in.ome.zarr"
    with OmeZarrWriter(source, image.shape, image.dtype, chunk=64, name="image") as w:
        w.array[...] = image
        w.finish()
    model = load_model(random_flows, "cpu", runtime="torch")
    serial = np.zeros(image.shape, np.int32)
    _, one = collect(iter_predict_blocks(model, lambda ys, xs: image[ys, xs], image.shape, serial, block=64,
                                         tile=64, halo=32))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client, \
            OmeZarrWriter(tmp_path / "out.ome.zarr", image.shape, np.int32, chunk=64) as out:
        events, result = collect(iter_predict_blocks_dask(client, model, str(random_flows), str(source),
                                                          str(out.tmp / "0"), block=64, tile=64, halo=32))
        out.finish()
    assert sum(isinstance(e, BlockDone) and e.stage == "predict" for e in events) == 12
    np.testing.assert_array_equal(open_lazy(tmp_path / "out.ome.zarr").load(), serial)
    assert one.objects > 5 and result.objects == one.objects and result.crossing == one.crossing


def test_the_default_tile_is_256_on_the_cpu_and_512_on_a_gpu():
    """Without --tile the CPU runs 256 px tiles (a 512 px tile's activations cost resident memory) and a GPU
    512; the driver's choice fixes the plan every block (and every Dask worker) uses."""
    truth = make_nuclei((1024, 1024), seed=2)[1]
    model, image = oracle_model(truth)
    on_gpu = model.replace(device=torch.device("cuda"))  # planning never runs the network

    def plan(m, tile=None):
        return plan_blocks(m, lambda ys, xs: image[ys, xs], (1024, 1024), block=256, tile=tile).plan

    assert plan(model).size == plan(model, 256).size != plan(model, 512).size
    assert plan(on_gpu).size == plan(on_gpu, 512).size != plan(on_gpu, 256).size
    assert len(plan(model)) > len(plan(on_gpu))
