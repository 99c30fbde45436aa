"""Synthetic 3D nuclei stacks (Z, Y, X) with exact instance masks, anisotropic like a confocal stack.

Built on the 2D generator's placement and camera (:mod:`napari_seglab.core.synthetic._nuclei`),
with a renderer of its own for true 3D shapes:

- nuclei are ellipsoids with three semi-axes and a random 3D orientation,
  their surface wobbling by a few low harmonics of the direction;
- they sit in dense clusters where they touch or overlap a little in 3D, so
  two nuclei may touch on one plane and not on the next;
- the z step is ``anisotropy`` times the pixel size, so a nucleus spans fewer
  planes than pixels across, and the PSF is longer along z than across;
- brightness varies per nucleus (a fifth are dim), nuclei carry texture and dark
  nucleoli (3D blobs), the background has haze and vignetting, and the camera
  adds shot noise and read noise.

The masks are exact: every voxel belongs to the nucleus drawn there (the one on
top where two overlap), and a sliver cut off a nucleus by another one goes to its
neighbour, so each id is one connected 3D object.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ._nuclei import _camera_image, _keep_largest_fragment, _place_nuclei, check_sizes

_MAX_UINT16 = np.iinfo(np.uint16).max


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _shape3d(rng: np.random.Generator, nucleus: dict) -> dict:
    """Three semi-axes (around the placement radius), an orientation and surface harmonics."""
    r = math.sqrt(nucleus["a"] * nucleus["b"])
    axes = r * np.array([rng.uniform(0.75, 1.0), rng.uniform(0.9, 1.1), rng.uniform(1.0, 1.3)])
    waves = [(rng.standard_normal(3), rng.uniform(0.02, 0.06), rng.uniform(0, 2 * math.pi), k)
             for k in (2, 3, 4)]
    return {"axes": axes, "rot": _rotation(rng), "waves": waves}


def _render3d(rng: np.random.Generator, shape: tuple[int, int, int], nuclei: list[dict],
              spacing: np.ndarray, dim_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Paint ellipsoids into a signal map (float32 photons) and an instance map (uint16)."""
    signal = np.zeros(shape, np.float32)
    instances = np.zeros(shape, np.uint16)
    # texture in physical units: smooth more in y/x than in z, where planes are further apart
    fine = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.2 / spacing)
    coarse = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.5 / spacing)
    texture = fine / (fine.std() + 1e-6) * 0.6 + coarse / (coarse.std() + 1e-6) * 0.8
    texture /= texture.std() + 1e-6

    next_id = 0
    for i in rng.permutation(len(nuclei)):
        nuc = nuclei[i]
        geo = _shape3d(rng, nuc)
        reach = float(geo["axes"].max()) * 1.15
        centre = nuc["centre"]
        lo = np.maximum(np.floor((centre - reach) / spacing), 0).astype(int)
        hi = np.minimum(np.ceil((centre + reach) / spacing) + 1, shape).astype(int)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
        grids = np.meshgrid(*[np.arange(s, e) * sp - c for s, e, sp, c in zip(lo, hi, spacing, centre, strict=True)],
                            indexing="ij")
        pts = np.stack(grids, -1) @ geo["rot"]  # coordinates in the nucleus' own frame (physical units)
        scaled = pts / geo["axes"]
        rho = np.sqrt((scaled ** 2).sum(-1))
        direction = pts / (np.linalg.norm(pts, axis=-1, keepdims=True) + 1e-9)
        outline = np.ones(rho.shape)
        for wave, amp, phase, k in geo["waves"]:
            outline += amp * np.cos(k * (direction @ (wave / (np.linalg.norm(wave) + 1e-9))) * math.pi + phase)
        rho = rho / outline
        inside = rho <= 1.0
        if not inside.any():
            continue
        next_id += 1
        if next_id > _MAX_UINT16:
            raise InputError("Too many nuclei for a uint16 instance mask; use a smaller shape.")
        brightness = rng.uniform(0.22, 0.4) if rng.random() < dim_fraction else float(rng.lognormal(0.0, 0.3))
        profile = (1.0 - 0.3 * np.clip(rho, 0, 1) ** 2) * (1.0 + rng.uniform(0.15, 0.3) * texture[sl])
        for _ in range(int(rng.integers(0, 3))):  # nucleoli: dark blobs well inside
            spot = rng.uniform(-0.4, 0.4, 3) * geo["axes"]
            rad = float(geo["axes"].mean()) * rng.uniform(0.15, 0.3)
            d2 = ((pts - spot) ** 2).sum(-1) / rad ** 2
            profile = profile * (1.0 - rng.uniform(0.35, 0.6) * np.exp(-d2))
        signal[sl] += np.where(inside, 160.0 * brightness * profile, 0.0).astype(np.float32)
        instances[sl][inside] = next_id
    _keep_largest_fragment(instances)
    return signal, instances


def _renumber(instances: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..N (ids emptied by :func:`_keep_largest_fragment` leave gaps)."""
    ids = np.unique(instances)
    lut = np.zeros(int(ids.max()) + 1, np.uint16)
    lut[ids] = np.arange(ids.size, dtype=np.uint16)
    return lut[instances]


def make_nuclei_3d(shape: tuple[int, int, int] = (24, 128, 128), seed: int = 0, *, anisotropy: float = 2.0,
                   radius_range: tuple[float, float] = (5.0, 9.0), coverage: float = 0.3,
                   cluster_fraction: float = 0.8, dim_fraction: float = 0.2, psf_sigma: float = 1.2
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Make a synthetic (Z, Y, X) fluorescence stack of nuclei and its exact instance mask.

    Parameters
    ----------
    shape : (Z, Y, X) ints
        Output shape; every side at least 8.
    seed : int
        Seed of the random generator; the same seed gives the same arrays.
    anisotropy : float
        z step over the pixel size (>= 1): the voxel size is ``(anisotropy, 1, 1)`` pixels.
    radius_range : (float, float)
        Range of the mean nucleus radius, in pixels (y/x).
    coverage : float
        Target fraction of the volume covered by nuclei (0..1).
    cluster_fraction : float
        Probability that a new nucleus starts a cluster of touching ones.
    dim_fraction : float
        Fraction of nuclei barely brighter than the background.
    psf_sigma : float
        Lateral Gaussian PSF sigma in pixels (axially twice as long, in physical units).

    Returns
    -------
    image : (Z, Y, X) uint16
        Camera counts (offset about 100).
    instances : (Z, Y, X) uint16
        0 = background, 1..N = nuclei, each one connected object.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"shape must be (Z, Y, X) with sides >= 8, got {shape}.")
    if not 1.0 <= float(anisotropy) <= 20.0:
        raise InputError(f"anisotropy must lie in [1, 20], got {anisotropy}.")
    lo, hi = check_sizes(radius_range, coverage)
    rng = np.random.default_rng(seed)
    spacing = np.array([float(anisotropy), 1.0, 1.0])
    extent = np.asarray(shape, float) * spacing
    nuclei = _place_nuclei(rng, extent, (lo, hi), coverage, cluster_fraction)
    signal, instances = _render3d(rng, shape, nuclei, spacing, dim_fraction)
    image = _camera_image(rng, signal, psf_sigma, float(anisotropy))
    return image, _renumber(instances) if instances.any() else instances
