"""Block-wise prediction of models that resample (object scale != 1, another pixel size): the whole image's result.

The whole-image path resamples the plane by the factor, predicts and decodes on that grid, then maps
labels back (nearest) and probabilities (bilinear). The block-wise path works on the same grid, each
tile resampled from the image window it covers with the whole plane's sample positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_blocks import oracle_model, run_blocks, same_up_to_renumbering

from napari_seglab.core.data import (
    Normalization,
    resample_image,
    resample_region,
    scaled_shape,
    source_window,
)
from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.events import Message, collect
from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint
from napari_seglab.core.predict import iter_predict_blocks, iter_predict_image, load_model
from napari_seglab.core.predict._blocks import block_factor, nearest_rows
from napari_seglab.core.synthetic import make_nuclei


@pytest.mark.parametrize("factor", [0.37, 0.5, 1.5, 1.7, 3.0])
def test_a_resampled_region_equals_that_part_of_the_whole_planes_resampling(factor):
    rng = np.random.default_rng(0)
    plane = (rng.random((2, 101, 77)) * 1000).astype(np.float32)
    dst = scaled_shape(plane.shape, factor)
    whole = resample_image(plane, dst)
    reads = []

    def read(ys, xs):
        reads.append((ys, xs))
        return plane[:, ys, xs]

    for region in [(slice(0, dst[0]), slice(0, dst[1])), (slice(3, 20), slice(5, dst[1] - 2)),
                   (slice(dst[0] - 7, dst[0]), slice(0, 9))]:
        part = resample_region(read, plane.shape[1:], dst, region)
        # float32 rounding of the same weights (torch sums in another order): 1e-5 of the range
        np.testing.assert_allclose(part, whole[(slice(None), *region)], rtol=0, atol=1e-5 * 1000)
    # only the window the taps reach is read: a few rows beyond the region, not the plane
    ys, xs = reads[1]
    need = source_window(plane.shape[1:], dst, (slice(3, 20), slice(5, dst[1] - 2)))
    assert (ys, xs) == need and ys.stop - ys.start <= 17 / factor + 2 / min(factor, 1) + 2


def test_labels_map_back_as_the_whole_image_path_does():
    from napari_seglab.core.data import resample_labels

    small = np.arange(37 * 53).reshape(37, 53)
    back = resample_labels(small, (75, 107))
    rows, cols = nearest_rows(75, 37, slice(10, 40)), nearest_rows(107, 53, slice(0, 107))
    np.testing.assert_array_equal(small[rows[:, None], cols[None]], back[10:40])


def scaled_oracle(shape, factor, kind="flows", **meta):
    """An oracle flows 'network' whose objects live on the model's grid (the image resampled by ``factor``),
    and an image of ``shape`` whose two channels resample to the model grid's coordinates."""
    mh, mw = scaled_shape(shape, factor)
    _, truth = make_nuclei((mh, mw), seed=4, radius_range=(5.0, 11.0))
    model, _ = oracle_model(truth.astype(np.int32), kind)
    model = model.replace(meta={**model.meta, **meta})
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    # a linear ramp resamples to itself: model pixel i reads (i + 0.5) / factor - 0.5 of the image
    return model, np.stack([factor * (yy + 0.5) - 0.5, factor * (xx + 0.5) - 0.5], -1)


@pytest.mark.parametrize(("factor", "meta", "pixel_size"), [
    (0.5, {"scale": 0.5}, None),
    (1.5, {"scale": 1.5}, None),
    (0.5, {"pixel_size": [0.5, 0.5]}, (0.25, 0.25)),  # an image at half the model's pixel size
    (1.5, {"scale": 0.75, "pixel_size": [0.5, 0.5]}, (1.0, 1.0)),
], ids=["scale-0.5", "scale-1.5", "pixel-size-0.5", "both-1.5"])
def test_blocked_instances_of_a_resampling_model_equal_the_whole_image(factor, meta, pixel_size):
    model, image = scaled_oracle((150, 174), factor, **meta)
    assert block_factor(model, pixel_size)[0] == pytest.approx(factor)
    events, ref = collect(iter_predict_image(model, image, "YXC", tile=64, overlap=0.25, probabilities=True,
                                             pixel_size=pixel_size))
    h, w = image.shape[:2]
    labels, probs = np.zeros((h, w), np.int32), np.zeros((2, h, w), np.float32)
    events, result = collect(iter_predict_blocks(model, lambda ys, xs: image[ys, xs], (h, w), labels,
                                                 probabilities_out=probs, block=64, halo=48, tile=64,
                                                 pixel_size=pixel_size))
    assert ref.labels.max() >= 10 and result.blocks == 9
    assert same_up_to_renumbering(labels, ref.labels)
    assert result.objects == len(np.unique(ref.labels)) - 1 and result.crossing >= 3
    np.testing.assert_allclose(probs, ref.probabilities, rtol=0, atol=1e-5)
    said = [e.text for e in events if isinstance(e, Message)]
    assert any(f"resampling the image by {factor:g}" in t and "block by block" in t for t in said)


@pytest.fixture(scope="module")
def random_nets():
    """Random-weight U-Nets (semantic and flows head): fixed arbitrary outputs to compare paths on."""
    nets = {}
    for head in ("flows", None):
        torch.manual_seed(1)
        spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2,
                         options={"head": head} if head else {})
        nets[head] = (spec, build_model(spec)[0])
    return nets


@pytest.mark.parametrize("head", ["flows", None], ids=["flows", "semantic"])
@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_a_random_network_at_object_scale_gives_the_whole_images_labels(random_nets, tmp_path, head, scale):
    spec, net = random_nets[head]
    meta = {"model": spec.to_dict(), "label_mode": "instances" if head else "scribbles",
            "normalization": Normalization().to_dict(), "scale": scale}
    model = load_model(save_checkpoint(tmp_path / "m.pt", net, meta), "cpu", runtime="torch")
    image, _ = make_nuclei((150, 200), seed=7)
    _, ref = collect(iter_predict_image(model, image, "YX", tile=64, overlap=0.25, probabilities=True))
    labels, probs, _, result = run_blocks(model, image, block=64, tile=64, halo=32, probabilities=True)
    # the network sees the same values up to float32 rounding of the resampling (about 1e-6 of the range)
    np.testing.assert_allclose(probs, ref.probabilities, rtol=0, atol=1e-4)
    assert same_up_to_renumbering(labels, ref.labels)
    if head:
        assert match_instances(labels, ref.labels, (0.5,))["ap50"] == 1.0


def test_a_factor_out_of_range_is_refused_before_any_write():
    model, image = scaled_oracle((64, 64), 1.0, pixel_size=[0.5, 0.5])
    labels = np.zeros((64, 64), np.int32)
    with pytest.raises(InputError, match="outside"):
        collect(iter_predict_blocks(model, lambda ys, xs: image[ys, xs], (64, 64), labels, block=64,
                                    pixel_size=(20.0, 20.0)))
    assert not labels.any()


def test_resampled_block_tasks_on_a_dask_cluster_give_the_output_of_one_process(random_nets, tmp_path):
    from distributed import Client, LocalCluster

    from napari_seglab.core.io import OmeZarrWriter, open_lazy
    from napari_seglab.core.predict import iter_predict_blocks_dask

    spec, net = random_nets["flows"]
    meta = {"model": spec.to_dict(), "label_mode": "instances", "normalization": Normalization().to_dict(),
            "scale": 1.5, "pixel_size": [0.5, 0.5]}
    path = save_checkpoint(tmp_path / "m.pt", net, meta)
    model = load_model(path, "cpu", runtime="torch")
    image, _ = make_nuclei((128, 160), seed=7)
    source = tmp_path / "in.ome.zarr"
    with OmeZarrWriter(source, image.shape, image.dtype, chunk=64, name="image", pixel_size=(0.25, 0.25)) as w:
        w.array[...] = image
        w.finish()
    serial = np.zeros(image.shape, np.int32)
    _, one = collect(iter_predict_blocks(model, lambda ys, xs: image[ys, xs], image.shape, serial, block=64,
                                         tile=64, halo=32, pixel_size=(0.25, 0.25)))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client, \
            OmeZarrWriter(tmp_path / "out.ome.zarr", image.shape, np.int32, chunk=64) as out:
        events, result = collect(iter_predict_blocks_dask(client, model, str(path), str(source),
                                                          str(out.tmp / "0"), block=64, tile=64, halo=32))
        out.finish()
    # the file's pixel size (0.25 µm, the model's 0.5 µm) and the object scale 1.5: resampled by 0.75
    assert any("resampling the image by 0.75" in getattr(e, "text", "") for e in events)
    np.testing.assert_array_equal(open_lazy(tmp_path / "out.ome.zarr").load(), serial)
    assert one.objects > 0 and result.objects == one.objects
