"""Flow and distance instance heads: targets, loss, decoding (tiled stitching: tests/core/predict/test_stitching.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.objects import _flows as flows


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _touching_discs(shape=(96, 128), r=9):
    """Rows of discs whose neighbours touch (centres 2r apart) plus one overlapping pair (later wins)."""
    lab = np.zeros(shape, np.int32)
    k = 1
    for cy in (14, 14 + 2 * r):
        for cx in range(14, 14 + 4 * 2 * r, 2 * r):
            lab[_disc(shape, cy, cx, r) & (lab == 0)] = k
            k += 1
    for cx in (30, 30 + int(1.4 * r)):
        lab[_disc(shape, 70, cx, r)] = k
        k += 1
    return lab


def _perfect_outputs(instances, kind):
    """Raw network outputs that match the targets exactly (confident foreground logits)."""
    target, _ = flows.targets(instances, kind=kind)
    raw = target.copy()
    raw[0] = np.where(target[0] > 0, 8.0, -8.0)
    if kind == "flows":
        raw[1:] *= flows.FLOW_SCALE
    return raw


def _points_to(flow, mask, cy, cx):
    """Fraction of ``mask`` pixels whose flow has a positive component towards (cy, cx)."""
    ys, xs = np.nonzero(mask)
    dot = flow[0, ys, xs] * (cy - ys) + flow[1, ys, xs] * (cx - xs)
    away = (ys != cy) | (xs != cx)
    return float(np.mean(dot[away] > 0))


def test_flow_targets_of_touching_squares_point_to_their_own_centres():
    lab = np.zeros((20, 30), np.uint16)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2
    target, ignore = flows.targets(lab, kind="flows")
    assert target.shape == (3, 20, 30) and target.dtype == np.float32
    assert not ignore.any()
    assert np.array_equal(target[0], (lab > 0).astype(np.float32))
    norm = np.hypot(target[1], target[2])
    assert np.allclose(norm[lab == 0], 0)
    assert (norm[lab > 0] > 0.99).mean() > 0.95  # unit vectors (the centre pixel may be 0)
    assert _points_to(target[1:], lab == 1, 10, 10) > 0.95
    assert _points_to(target[1:], lab == 2, 10, 20) > 0.95
    # across the contact line the two objects pull apart
    assert (target[2, 5:15, 14] < 0).all() and (target[2, 5:15, 15] > 0).all()


def test_distance_targets_peak_at_one_inside_each_touching_object():
    lab = np.zeros((20, 30), np.uint16)
    lab[5:15, 5:15] = 3
    lab[5:15, 15:25] = 7
    target, _ = flows.targets(lab, kind="distance")
    assert target.shape == (2, 20, 30)
    dist = target[1]
    for i in (3, 7):
        assert dist[lab == i].max() == pytest.approx(1.0)
        assert dist[lab == i].min() > 0
    assert (dist[lab == 0] == 0).all()
    # the contact line is the boundary of both objects
    assert dist[10, 14] < 0.3 and dist[10, 15] < 0.3


def test_partial_labels_ignore_unannotated_pixels_and_split_painted_objects():
    lab = np.zeros((30, 40), np.uint8)
    lab[0:4, :] = 1  # a background stroke
    lab[8:18, 5:15] = 2
    lab[8:18, 15:25] = 5  # touches object 2
    for kind in flows.KINDS:
        target, ignore = flows.targets(lab, mode="partial", kind=kind)
        assert np.array_equal(ignore, lab == 0)
        assert (target[0][lab == 1] == 0).all() and (target[0][lab >= 2] == 1).all()
        decoded = flows.decode(_perfect_outputs(np.where(lab >= 2, lab, 0), kind), kind, min_size=5)
        assert match_instances(decoded, np.where(lab >= 2, lab, 0))["ap90"] == 1.0


def test_targets_cut_by_a_patch_border_keep_the_whole_objects_centre():
    lab = _disc((64, 64), 32, 32, 12).astype(np.int32)
    full, _ = flows.targets(lab, kind="flows")
    patch = full[:, :, 36:]  # the disc's centre is outside this patch
    assert _points_to(patch[1:], lab[:, 36:] > 0, 32, -4) > 0.95
    own, _ = flows.targets(lab[:, 36:], kind="flows")  # what the patch alone would give
    assert not np.allclose(own[1:], patch[1:], atol=0.1)


@pytest.mark.parametrize("transpose,flip_y,flip_x", [(True, False, False), (False, True, False),
                                                     (False, False, True), (True, True, True)])
def test_transform_keeps_flows_pointing_at_the_centres(transpose, flip_y, flip_x):
    lab = np.zeros((41, 51), np.int32)
    lab[_disc(lab.shape, 20, 18, 9)] = 1
    lab[5:12, 30:47] = 2  # an odd-sized bar (a unique centre):: not symmetric under transposition
    moved = flows.transform(lab, transpose=transpose, flip_y=flip_y, flip_x=flip_x)
    expected, _ = flows.targets(np.ascontiguousarray(moved), kind="flows")
    turned = flows.transform(flows.targets(lab, kind="flows")[0], transpose=transpose, flip_y=flip_y,
                             flip_x=flip_x, kind="flows")
    cos = (expected[1:] * turned[1:]).sum(0)[moved > 0]
    assert np.array_equal(turned[0], expected[0])
    assert np.mean(cos > 0.9) > 0.95


def test_one_id_in_two_pieces_gets_one_sink_per_piece():
    lab = np.zeros((30, 60), np.int32)
    lab[5:20, 5:20] = 4
    lab[5:20, 35:50] = 4  # e.g. an overlapped object cut in two by the one on top
    target, _ = flows.targets(lab, kind="flows")
    assert _points_to(target[1:], lab[:, :30] > 0, 12, 12) > 0.95
    decoded = flows.decode(_perfect_outputs(lab, "flows"))
    assert decoded.max() == 2


def test_objects_at_the_image_edge():
    lab = np.zeros((40, 40), np.int32)
    lab[_disc(lab.shape, 0, 20, 10)] = 1  # a disc cut in half by the top edge
    lab[_disc(lab.shape, 25, 39, 8)] = 2  # one cut by the right edge
    dist = flows.targets(lab, kind="distance")[0][1]
    # the edge is not a boundary: the cut disc is deepest where its centre was, on the edge
    assert dist[0, 20] == pytest.approx(1.0)
    assert (np.diff(dist[:10, 20]) < 0).all()
    for kind in flows.KINDS:
        decoded = flows.decode(_perfect_outputs(lab, kind), kind)
        r = match_instances(decoded, lab, (0.9,))
        assert r["ap90"] == 1.0, kind


@pytest.mark.parametrize("kind", flows.KINDS)
def test_perfect_targets_of_touching_discs_decode_to_the_same_objects(kind):
    truth = _touching_discs()
    decoded = flows.decode(_perfect_outputs(truth, kind), kind)
    assert decoded.dtype == np.int32 and decoded.shape == truth.shape
    r = match_instances(decoded, truth, (0.5, 0.9))
    assert r["n_pred"] == r["n_true"] == truth.max()
    assert r["ap90"] == 1.0


def test_distance_core_seeds_also_split_touching_discs():
    truth = _touching_discs()
    decoded = flows.decode_distance(_perfect_outputs(truth, "distance"), seeds="cores")
    assert match_instances(decoded, truth, (0.9,))["ap90"] == 1.0


def test_flow_error_drops_objects_whose_flows_do_not_converge():
    truth = _touching_discs()
    raw = _perfect_outputs(truth, "flows")
    rng = np.random.default_rng(0)
    noisy = raw.copy()
    # one disc gets random flows: its pixels scatter, and whatever forms there disagrees with its own flows
    bad = truth == 3
    noisy[1:, bad] = rng.normal(0, flows.FLOW_SCALE, (2, int(bad.sum())))
    kept = flows.decode_flows(noisy)
    assert kept.max() == truth.max() - 1
    assert (kept[bad] == 0).mean() > 0.8
    assert flows.decode_flows(noisy, flow_threshold=None)[bad].any()  # without the check, noise makes objects
    assert np.array_equal(flows.decode_flows(raw * 0 - 1), np.zeros(truth.shape, np.int32))


def test_head_loss_is_small_for_perfect_outputs_and_ignores_unannotated_pixels():
    lab = np.zeros((32, 32), np.uint8)
    lab[:4] = 1
    lab[10:20, 10:20] = 2
    for kind in flows.KINDS:
        target, ignore = flows.targets(lab, mode="partial", kind=kind)
        t, ig = torch.from_numpy(target)[None], torch.from_numpy(ignore)[None]
        perfect = torch.from_numpy(_perfect_outputs(np.where(lab >= 2, lab, 0), kind))[None]
        wrong = torch.zeros_like(perfect, requires_grad=True)
        assert flows.head_loss(perfect, t, ig, kind) < 0.01
        loss = flows.head_loss(wrong, t, ig, kind)
        loss.backward()
        assert loss > 0.5
        grad = wrong.grad.abs().sum(1)[0]
        assert (grad[torch.from_numpy(ignore)] == 0).all() and (grad[torch.from_numpy(~ignore)] > 0).any()
        # changing outputs on ignored pixels changes nothing
        other = perfect.clone()
        other[..., torch.from_numpy(ignore)] = 3.0
        assert flows.head_loss(other, t, ig, kind) == pytest.approx(float(flows.head_loss(perfect, t, ig, kind)))
        everything = torch.ones_like(ig)
        assert flows.head_loss(wrong, t, everything, kind) == 0


def test_bad_inputs_raise_clear_errors():
    lab = np.zeros((8, 8), np.int32)
    with pytest.raises(InputError, match="instance head"):
        flows.targets(lab, kind="stars")
    with pytest.raises(InputError, match="label mode"):
        flows.targets(lab, mode="scribbles")
    with pytest.raises(InputError, match="2D"):
        flows.targets(np.zeros((2, 8, 8), np.int32))
    with pytest.raises(InputError, match="integer label image"):
        flows.targets(lab.astype(np.float32))
    with pytest.raises(InputError, match=r"\(3, Y, X\)"):
        flows.decode_flows(np.zeros((2, 8, 8), np.float32))
    assert flows.n_outputs("flows") == 3 and flows.n_outputs("distance") == 2


def _noisy_flow_outputs(seed=0):
    """Raw flow outputs of touching discs with noise: ragged paths, stray end points, ties in the histogram."""
    lab = _touching_discs()
    out = flows.targets(lab)[0].astype(np.float32)
    rng = np.random.default_rng(seed)
    out[1:] += rng.normal(0, 0.3 * flows.FLOW_SCALE, out[1:].shape).astype(np.float32)
    out[0] = np.where(lab > 0, 4.0, -4.0) + rng.normal(0, 1.0, lab.shape)
    return out


def test_decoding_in_groups_and_boxes_equals_the_plane_at_once(monkeypatch):
    """The memory-lean decoding (points followed in groups, each spot of end points flooded in its own box,
    flow errors at object pixels only) gives the labels of the plane-at-once arithmetic, id for id."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    def cluster_whole(ends, shape, min_count):  # the plane-sized form the decoder used before
        iy = np.clip(np.rint(ends[:, 0]).astype(np.int64), 0, shape[0] - 1)
        ix = np.clip(np.rint(ends[:, 1]).astype(np.int64), 0, shape[1] - 1)
        hist = np.bincount(iy * shape[1] + ix, minlength=shape[0] * shape[1]).reshape(shape).astype(np.int32)
        counts = ndi.correlate(hist, np.ones((3, 3), np.int32), mode="constant")
        peaks = (counts == ndi.maximum_filter(counts, 5, mode="constant")) & (counts >= min_count)
        markers, n = ndi.label(peaks, structure=np.ones((3, 3)))
        if n == 0:
            return np.zeros(len(ends), np.int32)
        region = ndi.binary_dilation(hist > 0, iterations=2)
        order = np.arange(counts.size, dtype=np.float64).reshape(shape) * (0.5 / counts.size)
        return watershed(order - counts, markers=markers, mask=region)[iy, ix].astype(np.int32)

    def errors_whole(labels, flow):
        err = ((flows.flow_field(labels, per_object=True) - flow) ** 2).sum(0)
        return ndi.mean(err, labels, index=np.arange(1, int(labels.max()) + 1))

    for seed in range(3):
        out = _noisy_flow_outputs(seed)
        lean = flows.decode_flows(out)
        assert 5 < lean.max() < 40
        with monkeypatch.context() as m:
            m.setattr(flows, "FOLLOW_GROUP", 37)  # many small groups: the same end points
            assert np.array_equal(flows.decode_flows(out), lean)
        with monkeypatch.context() as m:
            m.setattr(flows, "_cluster", cluster_whole)
            m.setattr(flows, "_flow_errors", errors_whole)
            assert np.array_equal(flows.decode_flows(out), lean)
        labels = flows.decode_flows(out, flow_threshold=None)
        flow = out[1:] / flows.FLOW_SCALE * (out[0] > 0)
        assert np.allclose(flows._flow_errors(labels, flow), errors_whole(labels, flow), rtol=1e-5, atol=1e-6)
