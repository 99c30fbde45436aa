"""Synthetic fluorescence-like nuclei images with exact instance masks.

The generator aims at images on which the classic baseline (global Otsu
threshold + distance-transform watershed) is only half right, so that a
trained model has something to win:

- nuclei are ellipses (ellipsoids in 3D) with slightly wobbly outlines, radius
  about 6-16 px, placed mostly in dense clusters where they touch or overlap;
- brightness varies per nucleus and about a fifth are dim, close to the
  background;
- nuclei carry internal texture, dark nucleoli and a dome-shaped profile;
- the background has an additive haze gradient and the illumination falls off
  towards the corners (vignetting);
- the optics blur everything (Gaussian PSF) and the camera adds Poisson shot
  noise, gain, offset and Gaussian read noise.

Everything is drawn from one ``numpy.random.default_rng(seed)``, so a seed
gives the same arrays on every run and platform. :func:`make_scribbles`
(painted strokes from an instance mask) lives in :mod:`napari_seglab.core.synthetic._scribbles` and is
re-exported here, beside the images it annotates.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError

_MAX_UINT16 = np.iinfo(np.uint16).max


def _sample_radii(rng: np.random.Generator, radius_range: tuple[float, float]):
    """Semi-axes (a, b), rotation and wobble harmonics of one nucleus."""
    lo, hi = radius_range
    # Skew the sizes towards the middle of the range: a few small, a few large.
    r = lo + (hi - lo) * rng.beta(2.0, 2.0)
    aspect = rng.uniform(1.0, 1.6)
    a = r * math.sqrt(aspect)
    b = r / math.sqrt(aspect)
    theta = rng.uniform(0.0, math.pi)
    harmonics = [
        (k, rng.uniform(0.02, 0.07) / (1 + 0.3 * (k - 2)), rng.uniform(0, 2 * math.pi))
        for k in range(2, 7)
    ]
    return a, b, theta, harmonics


def _place_nuclei(
    rng: np.random.Generator,
    extent: np.ndarray,
    radius_range: tuple[float, float],
    coverage: float,
    cluster_fraction: float,
) -> list[dict]:
    """Choose nucleus centres (physical units) in clusters and alone.

    ``extent`` is the physical size of the image per axis. Two nuclei may
    overlap by at most a third of the smaller radius, so each keeps most of
    its own outline even where another one lies on top.
    """
    ndim = len(extent)
    target = coverage * float(np.prod(extent))
    nuclei: list[dict] = []
    centres = np.zeros((0, ndim))
    radii = np.zeros(0)
    filled = 0.0
    attempts = 0
    max_attempts = 200 + 60 * int(target / (math.pi * radius_range[1] ** 2) + 1)

    def fits(c: np.ndarray, r: float, slack: float) -> bool:
        if len(radii) == 0:
            return True
        d = np.sqrt(((centres - c) ** 2).sum(axis=1))
        allowed = radii + r - slack * np.minimum(radii, r)
        return bool(np.all(d >= allowed))

    def add(c: np.ndarray, shape_params) -> None:
        nonlocal centres, radii, filled
        a, b, theta, harmonics = shape_params
        r = math.sqrt(a * b)
        nuclei.append({"centre": c, "a": a, "b": b, "theta": theta, "harmonics": harmonics})
        centres = np.vstack([centres, c[None]])
        radii = np.append(radii, r)
        if ndim == 2:
            filled += math.pi * a * b
        else:
            filled += 4.0 / 3.0 * math.pi * a * b * r

    while filled < target and attempts < max_attempts:
        attempts += 1
        params = _sample_radii(rng, radius_range)
        r = math.sqrt(params[0] * params[1])
        start = rng.uniform(0, 1, ndim) * extent
        if rng.random() >= cluster_fraction:
            # A nucleus on its own, with a clear gap around it.
            if fits(start, r + 3.0, 0.0):
                add(start, params)
            continue
        if not fits(start, r, 0.0):
            continue
        add(start, params)
        members = [len(nuclei) - 1]
        for _ in range(int(rng.integers(3, 12))):
            for _try in range(12):
                host = nuclei[members[int(rng.integers(len(members)))]]
                params = _sample_radii(rng, radius_range)
                r = math.sqrt(params[0] * params[1])
                r_host = math.sqrt(host["a"] * host["b"])
                direction = rng.standard_normal(ndim)
                direction /= np.linalg.norm(direction) + 1e-12
                # From overlapping by a third of the smaller radius to a
                # narrow gap of two pixels.
                depth = rng.uniform(-2.0, 0.3 * min(r, r_host))
                c = host["centre"] + direction * (r + r_host - depth)
                if np.any(c < -0.3 * r) or np.any(c > extent + 0.3 * r):
                    continue
                if fits(c, r, 0.33):
                    add(c, params)
                    members.append(len(nuclei) - 1)
                    break
    return nuclei


def _keep_largest_fragment(instances: np.ndarray) -> None:
    """Give slivers cut off an object by an overlapping one to their neighbour (in place)."""
    structure = ndi.generate_binary_structure(instances.ndim, 1)
    for idx, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        pad = tuple(
            slice(max(s.start - 1, 0), min(s.stop + 1, n))
            for s, n in zip(sl, instances.shape, strict=True)
        )
        crop = instances[pad]
        parts, n = ndi.label(crop == idx, structure)
        if n <= 1:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        for part in np.flatnonzero(sizes < sizes.max()) + 1:
            frag = parts == part
            ring = ndi.binary_dilation(frag, structure) & ~frag
            neighbours = crop[ring]
            neighbours = neighbours[(neighbours != idx) & (neighbours > 0)]
            crop[frag] = np.bincount(neighbours).argmax() if neighbours.size else 0


def _render(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    nuclei: list[dict],
    spacing: np.ndarray,
    dim_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint nuclei into a signal map (float32, photons) and an instance map (uint16)."""
    ndim = len(shape)
    signal = np.zeros(shape, np.float32)
    instances = np.zeros(shape, np.uint16)
    # Chromatin texture: fine grain plus coarse patches, unit variance.
    fine = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.2)
    coarse = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.5)
    texture = fine / (fine.std() + 1e-6) * 0.6 + coarse / (coarse.std() + 1e-6) * 0.8
    texture /= texture.std() + 1e-6

    order = rng.permutation(len(nuclei))
    next_id = 0
    for i in order:
        nuc = nuclei[i]
        a, b, theta = nuc["a"], nuc["b"], nuc["theta"]
        reach = a * 1.25
        centre_px = nuc["centre"] / spacing
        lo = np.maximum(np.floor(centre_px - reach / spacing), 0).astype(int)
        hi = np.minimum(np.ceil(centre_px + reach / spacing) + 1, shape).astype(int)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
        grids = np.meshgrid(
            *[
                (np.arange(s, e) * sp - c)
                for s, e, sp, c in zip(lo, hi, spacing, nuc["centre"], strict=True)
            ],
            indexing="ij",
        )
        y, x = grids[-2], grids[-1]
        u = x * math.cos(theta) + y * math.sin(theta)
        v = -x * math.sin(theta) + y * math.cos(theta)
        rho2 = (u / a) ** 2 + (v / b) ** 2
        if ndim == 3:
            rz = math.sqrt(a * b)
            rho2 = rho2 + (grids[0] / rz) ** 2
        phi = np.arctan2(v, u)
        outline = np.ones_like(phi)
        for k, amp, phase in nuc["harmonics"]:
            outline += amp * np.cos(k * phi + phase)
        rho = np.sqrt(rho2) / outline
        inside = rho <= 1.0
        if not inside.any():
            continue
        next_id += 1
        if next_id > _MAX_UINT16:
            raise InputError("Too many nuclei for a uint16 instance mask; use a smaller shape.")

        if rng.random() < dim_fraction:
            brightness = rng.uniform(0.22, 0.4)
        else:
            brightness = float(rng.lognormal(0.0, 0.3))
        profile = 1.0 - 0.3 * np.clip(rho, 0, 1) ** 2
        profile = profile * (1.0 + rng.uniform(0.15, 0.3) * texture[sl])
        # Nucleoli: one to three dark blobs well inside the nucleus.
        for _ in range(int(rng.integers(0, 4))):
            off = rng.uniform(-0.45, 0.45, 2)
            cu, cv = off[0] * a, off[1] * b
            rad = math.sqrt(a * b) * rng.uniform(0.15, 0.3)
            d2 = ((u - cu) ** 2 + (v - cv) ** 2) / rad**2
            profile = profile * (1.0 - rng.uniform(0.35, 0.6) * np.exp(-d2))
        signal[sl] += np.where(inside, 160.0 * brightness * profile, 0.0).astype(np.float32)
        instances[sl][inside] = next_id
    _keep_largest_fragment(instances)
    return signal, instances


def _camera_image(rng: np.random.Generator, signal: np.ndarray, psf_sigma: float, z_scale: float) -> np.ndarray:
    """Light ``signal`` (float32 photons), blur it with the PSF and record it with a camera (uint16)."""
    shape = signal.shape
    ndim = signal.ndim
    # Illumination: vignetting (multiplicative) and a haze gradient (additive).
    coords = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape[-2:]], indexing="ij")
    shift = rng.uniform(-0.3, 0.3, 2)
    r2 = (coords[0] - shift[0]) ** 2 + (coords[1] - shift[1]) ** 2
    vignette = (1.0 - 0.22 * r2).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (coords[0] * math.sin(angle) + coords[1] * math.cos(angle) + 1.0) / 2.0
    haze = (14.0 + 40.0 * ramp).astype(np.float32)

    photons = vignette * (signal + haze)
    if ndim == 2:
        sigma = (psf_sigma, psf_sigma)
    else:
        sigma = (2.0 * psf_sigma / z_scale, psf_sigma, psf_sigma)
    photons = ndi.gaussian_filter(photons, sigma)
    counts = rng.poisson(np.clip(photons, 0, None)).astype(np.float32)
    adu = 100.0 + 6.0 * counts + rng.normal(0.0, 4.0, shape).astype(np.float32)
    return np.clip(np.rint(adu), 0, _MAX_UINT16).astype(np.uint16)


def check_sizes(radius_range, coverage: float) -> tuple[float, float]:
    """The (low, high) nucleus radius of a generator's options; InputError for a range or coverage out of bounds."""
    lo, hi = radius_range
    if not 1.0 <= lo <= hi:
        raise InputError(f"radius_range must satisfy 1 <= low <= high, got {radius_range}.")
    if not 0.0 < coverage < 1.0:
        raise InputError(f"coverage must lie in (0, 1), got {coverage}.")
    return float(lo), float(hi)


def make_nuclei(
    shape: tuple[int, ...] = (256, 512),
    seed: int = 0,
    *,
    radius_range: tuple[float, float] = (6.0, 16.0),
    coverage: float = 0.42,
    cluster_fraction: float = 0.8,
    dim_fraction: float = 0.2,
    psf_sigma: float = 1.5,
    z_scale: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make a synthetic fluorescence image of nuclei and its instance mask.

    Parameters
    ----------
    shape : (Y, X) or (Z, Y, X) ints
        Output shape. In 3D the z step is ``z_scale`` times the pixel size, so
        nuclei span only a few planes.
    seed : int
        Seed of the random generator; the same seed gives the same arrays.
    radius_range : (float, float)
        Range of the mean nucleus radius in pixels.
    coverage : float
        Target fraction of the image covered by nuclei (0..1).
    cluster_fraction : float
        Probability that a new nucleus starts a cluster of 4-12 touching ones
        rather than sitting alone.
    dim_fraction : float
        Fraction of nuclei that are dim, barely above the background.
    psf_sigma : float
        Gaussian PSF sigma in pixels (in 3D, along z it is ``psf_sigma / z_scale * 2``).
    z_scale : float
        Ratio of z step to pixel size (3D only).

    Returns
    -------
    image : (Y, X) or (Z, Y, X) uint16
        Camera counts (offset about 100).
    instances : same shape, uint16
        0 = background, 1..N = nuclei; where two overlap, the one on top wins.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise InputError(f"shape must be (Y, X) or (Z, Y, X) with sides >= 8, got {shape}.")
    lo, hi = check_sizes(radius_range, coverage)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    spacing = np.ones(ndim)
    if ndim == 3:
        spacing[0] = float(z_scale)
    extent = np.asarray(shape, float) * spacing

    nuclei = _place_nuclei(rng, extent, (lo, hi), coverage, cluster_fraction)
    signal, instances = _render(rng, shape, nuclei, spacing, dim_fraction)

    image = _camera_image(rng, signal, psf_sigma, z_scale)
    return image, instances
