"""Deterministic synthetic microscopy images for the emulator's demo seed.

Everything here is numpy only and a pure function of its arguments: each public function
derives its random generators from a numpy SeedSequence built from the arguments, so the
same call gives byte-identical output on every run.

Intensities are modelled loosely on a widefield fluorescence camera: a clean signal is
rendered per object inside its bounding box, blurred by a small Gaussian (the optics),
placed on a smooth background offset and given shot noise (a Gaussian approximation of
Poisson, much faster than rng.poisson at these count levels).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "PIXEL_TYPES",
    "every_type",
    "large",
    "nuclei_and_cells",
    "plate_field",
    "rgb",
    "z_stack",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U16 = npt.NDArray[np.uint16]

#: OMERO pixel type names in the order :func:`every_type` returns them.
PIXEL_TYPES: tuple[str, ...] = (
    "int8", "uint8", "int16", "uint16", "int32", "uint32", "float", "double", "bit",
)

# Distinct first entropy words keep the random streams of different functions apart even
# when they are called with the same seed.
_TAG_CELLS = 1
_TAG_ZSTACK = 2
_TAG_RGB = 3
_TAG_TYPES = 4
_TAG_LARGE = 5
_TAG_PLATE = 6

# Nuclei per pixel of the default field: about 70-110 at 1024² (drawn per seed).
_DENSITY_RANGE = (70.0 / 1024**2, 110.0 / 1024**2)
_NUCLEUS_RADIUS = (8.0, 20.0)  # major semi-axis in pixels, independent of field size
_OPTICS_SIGMA = 1.2
_TILE = 1024


class _Nuclei(NamedTuple):
    """Parameters of placed nuclei, one array entry per nucleus (label = index + 1)."""

    cy: F64
    cx: F64
    a: F64  # major semi-axis
    b: F64  # minor semi-axis
    theta: F64  # orientation of the major axis
    wobble: F64  # amplitude of a 3-fold boundary ripple, so shapes are not perfect ellipses
    phase: F64
    amp: F64  # peak DAPI signal above background


# ---------------------------------------------------------------------------- helpers


def _seq(*parts: int) -> np.random.SeedSequence:
    # SeedSequence only accepts non-negative integers: wrap negatives into uint64 space, and
    # give every part a fixed width (two 32-bit words) so no two argument lists collide.
    words = np.array([int(p) % 2**64 for p in parts], dtype="<u8").view("<u4")
    return np.random.SeedSequence(words)


def _gaussian_kernel(sigma: float) -> F32:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(img: F32, sigma: float, axes: tuple[int, ...] = (-2, -1)) -> F32:
    """Separable Gaussian blur with reflected borders, as shifted weighted sums.

    For the small sigmas used for optics (a handful of taps) this beats an FFT and keeps
    everything in float32.
    """
    if sigma <= 0:
        return img
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    out = img
    for axis in axes:
        ax = axis % out.ndim
        n = out.shape[ax]
        pad = [(0, 0)] * out.ndim
        pad[ax] = (r, r)
        # "reflect" needs r < n; fall back to edge replication for tiny images.
        padded = np.pad(out, pad, mode="reflect" if r < n else "edge")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(padded, np.arange(i, i + n), axis=ax)
        out = acc
    return out


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, sigma_x: float | None = None
) -> F32:
    """Zero-mean, unit-std correlated noise (white noise filtered in Fourier space).

    ``sigma_x`` (default ``sigma``) makes the texture anisotropic, e.g. for fibres. The FFT
    is periodic, which is harmless for texture and makes large sigmas cheap.
    """
    h, w = shape
    sx = sigma if sigma_x is None else sigma_x
    white = rng.standard_normal((h, w), dtype=np.float32)
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    transfer = np.exp(-2.0 * np.pi**2 * ((sigma * fy) ** 2 + (sx * fx) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(h, w)).astype(np.float32)
    std = float(field.std())
    return field / std if std > 0 else field


def _background(rng: np.random.Generator, full: int, level: float) -> tuple[F32, F32]:
    """A smooth additive background offset as two 1-D profiles (bg = fy[:, None] + fx).

    A tilted quadratic surface (uneven illumination / vignetting) is additively separable,
    so tiles of a huge image can evaluate their slice without any full-size temporary.
    """
    gy, gx = rng.uniform(-0.25, 0.25, 2) * level
    vig = rng.uniform(0.1, 0.3) * level
    cy, cx = rng.uniform(0.3, 0.7, 2)
    u = np.linspace(0.0, 1.0, full, dtype=np.float64)
    fy = 0.5 * level + gy * u - vig * (u - cy) ** 2
    fx = 0.5 * level + gx * u - vig * (u - cx) ** 2
    return fy.astype(np.float32), fx.astype(np.float32)


def _camera(signal: F32, rng: np.random.Generator, read_noise: float = 3.0) -> U16:
    """Shot noise (Gaussian approximation of Poisson, gain 1) plus read noise, to uint16."""
    noise = rng.standard_normal(signal.shape, dtype=np.float32)
    # In place on the caller's temporary to keep peak memory low.
    np.maximum(signal, 0.0, out=signal)
    noise *= np.sqrt(signal + read_noise**2)
    signal += noise
    np.clip(signal, 0.0, 65535.0, out=signal)
    return np.rint(signal).astype(np.uint16)


def _polar_window(
    cy: float, cx: float, radius: float, shape: tuple[int, int]
) -> tuple[tuple[slice, slice], F64, F64] | None:
    """Bounding box of a disc clipped to the image, with pixel offsets from the centre."""
    h, w = shape
    y0, y1 = max(0, int(np.floor(cy - radius))), min(h, int(np.ceil(cy + radius)) + 1)
    x0, x1 = max(0, int(np.floor(cx - radius))), min(w, int(np.ceil(cx + radius)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - cx
    return (slice(y0, y1), slice(x0, x1)), dy, dx


# ---------------------------------------------------------------------------- nuclei


def _place_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n: int,
    radius: tuple[float, float] = _NUCLEUS_RADIUS,
    margin: float = 6.0,
    spacing: float = 0.5,
) -> _Nuclei:
    """Dart-throwing placement so nuclei do not touch and stay fully inside the field.

    Keeping nuclei away from the border (by more than the blur radius) means no object is
    cut by the edge, so CellProfiler's default "discard border objects" loses nothing and
    tiles of :func:`large` have no seams. If the field is too crowded fewer than ``n``
    nuclei are placed.
    """
    h, w = shape
    rmax = min(radius[1], (min(h, w) - 2 * margin) / 2.0 - 1.0)
    if n <= 0 or rmax < 3.0:
        empty = np.zeros(0, dtype=np.float64)
        return _Nuclei(*([empty] * 8))
    rmin = min(radius[0], rmax)
    # Biggest first: sequential placement packs far better than in random order.
    a = np.sort(rng.uniform(rmin, rmax, n))[::-1]
    b = np.maximum(a / rng.uniform(1.0, 1.6, n), 0.6 * a)
    placed: list[int] = []
    centres = np.empty((n, 2), dtype=np.float64)
    for i in range(n):
        lo = a[i] + margin
        # Candidates come in batches so the distance test is vectorised.
        for _ in range(4):
            cand = rng.uniform((lo, lo), (h - lo, w - lo), size=(64, 2))
            if placed:
                prev = centres[placed]
                d = np.hypot(cand[:, None, 0] - prev[:, 0], cand[:, None, 1] - prev[:, 1])
                # Extra room in proportion to size leaves space for cytoplasm.
                need = (1.0 + spacing) * (a[i] + a[placed])
                ok = np.flatnonzero((d >= need).all(axis=1))
                if ok.size == 0:
                    continue
                centres[i] = cand[ok[0]]
            else:
                centres[i] = cand[0]
            placed.append(i)
            break
    idx = np.asarray(placed, dtype=np.intp)
    # Label in raster order of the centres, roughly as a scanning labeller would.
    idx = idx[np.lexsort((centres[idx, 1], centres[idx, 0]))]
    k = idx.size
    return _Nuclei(
        cy=centres[idx, 0],
        cx=centres[idx, 1],
        a=a[idx],
        b=b[idx],
        theta=rng.uniform(0.0, np.pi, k),
        wobble=rng.uniform(0.0, 0.08, k),
        phase=rng.uniform(0.0, 2 * np.pi, k),
        amp=rng.uniform(1800.0, 3000.0, k),
    )


def _nucleus_distance(nuc: _Nuclei, i: int, dy: F64, dx: F64) -> F64:
    """Normalised elliptical distance (1 on the boundary) with a slight boundary ripple."""
    c, s = np.cos(nuc.theta[i]), np.sin(nuc.theta[i])
    u = dx * c + dy * s
    v = dy * c - dx * s
    d2 = (u / nuc.a[i]) ** 2 + (v / nuc.b[i]) ** 2
    ripple = 1.0 + nuc.wobble[i] * np.cos(3.0 * np.arctan2(v, u) + nuc.phase[i])
    return np.sqrt(d2) / ripple


def _render_nuclei(
    nuc: _Nuclei, shape: tuple[int, int], texture_rng: np.random.Generator
) -> tuple[F32, U16]:
    """Clean DAPI signal (before blur/background/noise) and the ground-truth labels."""
    signal = np.zeros(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint16)
    for i in range(len(nuc.cy)):
        win = _polar_window(nuc.cy[i], nuc.cx[i], nuc.a[i] * 1.1 + 1.0, shape)
        if win is None:
            continue
        box, dy, dx = win
        d = _nucleus_distance(nuc, i, dy, dx)
        inside = (d <= 1.0) & (labels[box] == 0)
        # Slightly domed profile: brighter centre, still a clear step at the edge.
        signal[box][inside] = (nuc.amp[i] * (1.0 - 0.15 * d[inside] ** 2)).astype(np.float32)
        labels[box][inside] = i + 1
    # Chromatin-like texture, only where there is nucleus.
    texture = _smooth_noise(texture_rng, shape, 1.5)
    np.clip(texture, -2.0, 2.0, out=texture)
    signal *= 1.0 + 0.1 * texture
    return signal, labels


def _render_cells(
    nuc: _Nuclei, labels: U16, shape: tuple[int, int], rng: np.random.Generator
) -> F32:
    """Clean cytoplasm signal: irregular cell bodies around each nucleus.

    Cells are a bounded, multiplicatively weighted Voronoi partition: every pixel goes to
    the cell with the smallest normalised distance, if that is below 1, so neighbouring
    cells meet at a boundary instead of swallowing each other.
    """
    n = len(nuc.cy)
    owner = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)
    scale = rng.uniform(1.9, 2.6, n)
    m2, m3 = rng.uniform(0.0, 0.2, n), rng.uniform(0.0, 0.1, n)
    p2, p3 = rng.uniform(0.0, 2 * np.pi, (2, n))
    off = rng.uniform(-0.3, 0.3, (2, n))
    amp = rng.uniform(350.0, 800.0, n)
    for i in range(n):
        rc = nuc.a[i] * scale[i]
        cy, cx = nuc.cy[i] + off[0, i] * nuc.a[i], nuc.cx[i] + off[1, i] * nuc.a[i]
        win = _polar_window(cy, cx, rc * (1.0 + m2[i] + m3[i]) + 1.0, shape)
        if win is None:
            continue
        box, dy, dx = win
        ang = np.arctan2(dy, dx)
        r_ang = rc * (1.0 + m2[i] * np.cos(2 * ang + p2[i]) + m3[i] * np.cos(3 * ang + p3[i]))
        nd = (np.hypot(dy, dx) / r_ang).astype(np.float32)
        win_best = best[box]
        take = (nd < 1.0) & (nd < win_best)
        win_best[take] = nd[take]
        owner[box][take] = i + 1
    # A nucleus always belongs to its own cell, whatever the Voronoi said.
    nuclear = labels > 0
    owner[nuclear] = labels[nuclear]
    np.minimum(best, 1.0, out=best)
    lut = np.concatenate([[0.0], amp]).astype(np.float32)
    signal = lut[owner] * (1.0 - 0.35 * best**2)
    signal[nuclear] *= 0.55  # cytoplasmic stain is dimmer over the nucleus
    # Darken boundaries between different cells, as a membrane-excluded stain would.
    edge = np.zeros(shape, dtype=bool)
    edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    edge[1:, :] |= owner[1:, :] != owner[:-1, :]
    signal[edge] *= 0.6
    return signal


def _default_count(rng: np.random.Generator, shape: tuple[int, int]) -> int:
    density = rng.uniform(*_DENSITY_RANGE)
    return max(1, round(density * shape[0] * shape[1]))


def _cells_field(
    seq: np.random.SeedSequence, size: int, n_cells: int | None
) -> tuple[U16, U16]:
    layout_rng, tex_rng, cell_rng, bg_rng, noise_rng = (
        np.random.default_rng(s) for s in seq.spawn(5)
    )
    shape = (size, size)
    n = _default_count(layout_rng, shape) if n_cells is None else n_cells
    nuc = _place_nuclei(layout_rng, shape, n)
    dapi, labels = _render_nuclei(nuc, shape, tex_rng)
    cyto = _render_cells(nuc, labels, shape, cell_rng)
    pixels = np.empty((2, size, size), dtype=np.uint16)
    for c, (sig, level) in enumerate(((dapi, 200.0), (cyto, 150.0))):
        fy, fx = _background(bg_rng, size, level)
        img = _blur(sig, _OPTICS_SIGMA if c == 0 else 1.6 * _OPTICS_SIGMA)
        img += fy[:, None]
        img += fx[None, :]
        pixels[c] = _camera(img, noise_rng)
    return pixels, labels


def _check_size(size: int, name: str = "size") -> None:
    if size < 1:
        raise ValueError(f"{name} must be positive, got {size}")


# ---------------------------------------------------------------------------- public


def nuclei_and_cells(
    seed: int, size: int = 1024, n_cells: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A two-channel fluorescence field of cells and its ground-truth nucleus labels.

    Args:
        seed: Any integer; the output is a pure function of the arguments.
        size: Edge length in pixels. Nuclei keep their physical size (major semi-axis
            8-20 px), so larger fields hold more cells.
        n_cells: Number of nuclei to place; by default about 70-110 per 1024² of area.
            A crowded field may hold fewer than requested.

    Returns:
        ``(pixels, labels)``: ``pixels`` is uint16 ``(2, size, size)`` with channel 0
        "DAPI" (bright, textured, elliptical nuclei) and channel 1 "Cytoplasm" (dimmer
        cell bodies around each nucleus); ``labels`` is uint16 ``(size, size)`` with 0 for
        background and ``1..N`` for the nuclei.
    """
    _check_size(size)
    return _cells_field(_seq(_TAG_CELLS, seed, size), size, n_cells)


def plate_field(seed: int, row: int, column: int, field: int, size: int = 256) -> np.ndarray:
    """One field of a screening plate well: uint16 ``(2, size, size)`` like
    :func:`nuclei_and_cells`.

    The cell count follows a sigmoidal dose response across the (0-based) columns: column
    0 is dense, column 11 of a 96-well plate sparse. Rows add a small replicate effect,
    and each field is a different random layout.
    """
    _check_size(size)
    seq = _seq(_TAG_PLATE, seed, row, column, field, size)
    rng = np.random.default_rng(seq.spawn(1)[0])
    dose = 1.0 / (1.0 + np.exp((column - 5.5) / 1.4))
    factor = (0.12 + 0.88 * dose) * (1.0 + 0.08 * np.sin(1.7 * row + 0.3))
    full = 20.0 * size * size / 256**2  # a dense, confluent-looking control well
    n = max(0, round(full * factor * rng.uniform(0.9, 1.1)))
    pixels, _ = _cells_field(seq, size, n)
    return pixels


def large(seed: int, size: int = 8192) -> np.ndarray:
    """A big uint16 ``(size, size)`` nuclei plane (DAPI-like), built tile by tile.

    Each 1024² tile has its own layout and noise from a seed derived from its position;
    nuclei never cross tile borders, and the background offset is one smooth surface over
    the whole plane, so tiles join without seams. Only per-tile float32 temporaries are
    made, so peak memory is about the output plus a few MB.
    """
    _check_size(size)
    root = _seq(_TAG_LARGE, seed, size)
    bg_seq, density_seq = root.spawn(2)
    fy, fx = _background(np.random.default_rng(bg_seq), size, 200.0)
    density = np.random.default_rng(density_seq).uniform(*_DENSITY_RANGE)
    out = np.empty((size, size), dtype=np.uint16)
    for ty, y0 in enumerate(range(0, size, _TILE)):
        for tx, x0 in enumerate(range(0, size, _TILE)):
            y1, x1 = min(size, y0 + _TILE), min(size, x0 + _TILE)
            shape = (y1 - y0, x1 - x0)
            layout_rng, tex_rng, noise_rng = (
                np.random.default_rng(s) for s in _seq(_TAG_LARGE, seed, size, ty, tx).spawn(3)
            )
            n = round(density * shape[0] * shape[1])
            nuc = _place_nuclei(layout_rng, shape, n)
            sig, _ = _render_nuclei(nuc, shape, tex_rng)
            img = _blur(sig, _OPTICS_SIGMA)
            img += fy[y0:y1, None]
            img += fx[None, x0:x1]
            out[y0:y1, x0:x1] = _camera(img, noise_rng)
    return out


def rgb(seed: int, size: int = 512) -> np.ndarray:
    """A uint8 ``(3, size, size)`` RGB image resembling an H&E-stained tissue section.

    Built in optical-density space (Beer-Lambert) from standard haematoxylin and eosin
    colour vectors: pink, fibrous eosin-stained tissue with a few empty (white) lumens and
    many small purple haematoxylin-stained nuclei.
    """
    _check_size(size)
    lay_seq, tex_seq, noise_seq = _seq(_TAG_RGB, seed, size).spawn(3)
    lay_rng, tex_rng = np.random.default_rng(lay_seq), np.random.default_rng(tex_seq)
    shape = (size, size)
    # Lumens: where a very smooth random field is high, there is no tissue.
    coarse = _smooth_noise(tex_rng, shape, max(2.0, size / 14))
    tissue = np.clip((1.1 - coarse) / 0.25, 0.0, 1.0)
    fibres = _smooth_noise(tex_rng, shape, 1.5, 6.0)  # stretched along x, like stroma
    eosin = tissue * (0.32 + 0.09 * fibres + 0.06 * _smooth_noise(tex_rng, shape, 3.0))

    n = round(0.0011 * size * size)
    nuc = _place_nuclei(lay_rng, shape, n, radius=(4.0, 9.0), margin=1.0, spacing=0.25)
    # Reuse the fluorescence nucleus renderer as a stain concentration map.
    haem, _ = _render_nuclei(nuc, shape, tex_rng)
    haem *= np.float32(0.9 / 3000.0)
    haem += np.float32(0.06)  # faint haematoxylin counterstain everywhere
    haem *= tissue

    h_vec = np.array([0.65, 0.70, 0.29], dtype=np.float32)
    e_vec = np.array([0.07, 0.95, 0.30], dtype=np.float32)
    od = 1.6 * (haem[None] * h_vec[:, None, None] + eosin[None] * e_vec[:, None, None])
    img = 255.0 * np.exp(-_blur(od.astype(np.float32), 0.8))
    img += np.random.default_rng(noise_seq).normal(0.0, 2.5, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# Value range per OMERO pixel type. Integer types span their full range; float types get a
# finite range with fractional values (their true extremes would make any intensity
# statistics overflow to inf).
_TYPE_RANGES: dict[str, tuple[np.dtype, float, float]] = {
    "int8": (np.dtype(np.int8), -128, 127),
    "uint8": (np.dtype(np.uint8), 0, 255),
    "int16": (np.dtype(np.int16), -32768, 32767),
    "uint16": (np.dtype(np.uint16), 0, 65535),
    "int32": (np.dtype(np.int32), -(2**31), 2**31 - 1),
    "uint32": (np.dtype(np.uint32), 0, 2**32 - 1),
    "float": (np.dtype(np.float32), -1000.0, 1000.0),
    "double": (np.dtype(np.float64), -1.0e6, 1.0e6),
    "bit": (np.dtype(np.bool_), 0, 1),
}


def every_type(seed: int, size: int = 64) -> dict[str, np.ndarray]:
    """One 2-D ``(size, size)`` plane per OMERO pixel type name (see :data:`PIXEL_TYPES`).

    Each plane is a diagonal ramp mixed with smooth random texture, stretched so that its
    minimum and maximum hit the ends of the type's range exactly: integer planes contain
    the dtype's min and max (so negatives for signed types), "float" (float32) spans
    [-1000, 1000] and "double" (float64) [-1e6, 1e6] with non-integer values, and "bit"
    (bool) holds both values.
    """
    if size < 2:
        raise ValueError(f"size must be at least 2, got {size}")
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(PIXEL_TYPES):
        dtype, lo, hi = _TYPE_RANGES[name]
        rng = np.random.default_rng(_seq(_TAG_TYPES, seed, size, i))
        idx = np.arange(size, dtype=np.float64)
        ramp = (idx[:, None] + idx[None, :]) / (2 * size - 2)
        t = 0.6 * ramp + 0.4 * _smooth_noise(rng, (size, size), size / 10).astype(np.float64)
        # Stretch to exactly [0, 1]: the argmin becomes 0.0 and the argmax exactly 1.0.
        t = (t - t.min()) / (t.max() - t.min())
        if dtype == np.bool_:
            out[name] = t > 0.5
        elif dtype.kind == "f":
            out[name] = (lo + t * (hi - lo)).astype(dtype)
        else:
            # float64 holds every 32-bit integer exactly, so lo and hi survive the cast.
            out[name] = np.clip(np.rint(lo + t * (hi - lo)), lo, hi).astype(dtype)
    return out


def z_stack(seed: int, size: int = 256, z: int = 8, channels: int = 3) -> np.ndarray:
    """A uint16 ``(z, channels, size, size)`` stack of a few 3-D blob-like objects.

    Objects are ellipsoids whose cross-sections grow and shrink through z. The channel
    pattern cycles through: solid bodies, thin shells around them, and punctate spots
    inside them; each channel has its own intensities, background and noise.
    """
    for value, name in ((size, "size"), (z, "z"), (channels, "channels")):
        _check_size(value, name)
    obj_seq, noise_seq, *chan_seqs = _seq(_TAG_ZSTACK, seed, size, z, channels).spawn(
        2 + channels
    )
    rng = np.random.default_rng(obj_seq)
    n_obj = int(np.clip(round(6 * size * size / 256**2), 3, 40))
    r_xy = rng.uniform(15.0, 36.0, n_obj) * min(1.0, size / 256)
    cy = rng.uniform(0.15, 0.85, n_obj) * size
    cx = rng.uniform(0.15, 0.85, n_obj) * size
    cz = rng.uniform(0.25, 0.75, n_obj) * (z - 1)
    rz = rng.uniform(0.35, 0.6, n_obj) * max(z, 2)
    aspect = rng.uniform(0.7, 1.3, n_obj)

    shape = (size, size)
    stack = np.zeros((z, channels, size, size), dtype=np.float32)
    for c in range(channels):
        crng = np.random.default_rng(chan_seqs[c])
        pattern = c % 3
        amp = crng.uniform(800.0, 2500.0, n_obj)
        # Spot positions are fixed in 3-D; planes only sample them.
        n_spots = 8
        sy = cy[:, None] + crng.uniform(-0.7, 0.7, (n_obj, n_spots)) * r_xy[:, None]
        sx = cx[:, None] + crng.uniform(-0.7, 0.7, (n_obj, n_spots)) * r_xy[:, None]
        sz = cz[:, None] + crng.uniform(-0.6, 0.6, (n_obj, n_spots)) * rz[:, None]
        for k in range(z):
            plane = stack[k, c]
            for i in range(n_obj):
                if pattern == 2:
                    _add_spots(plane, sy[i], sx[i], sz[i] - k, amp[i])
                    continue
                t = 1.0 - ((k - cz[i]) / rz[i]) ** 2
                if t <= 0:
                    continue
                r = r_xy[i] * np.sqrt(t)
                win = _polar_window(cy[i], cx[i], 1.4 * r * max(aspect[i], 1 / aspect[i]), shape)
                if win is None:
                    continue
                box, dy, dx = win
                d = np.hypot(dy / aspect[i], dx * aspect[i]) / r
                if pattern == 0:
                    blob = np.where(d <= 1.0, amp[i] * (1.0 - 0.3 * d**2), 0.0)
                else:
                    blob = 0.6 * amp[i] * np.exp(-(((d - 1.15) / 0.12) ** 2))
                plane[box] += blob.astype(np.float32)
        stack[:, c] = _blur(stack[:, c], 1.0) + np.float32(crng.uniform(80.0, 200.0))
    noise_rng = np.random.default_rng(noise_seq)
    out = np.empty(stack.shape, dtype=np.uint16)
    for k in range(z):
        out[k] = _camera(stack[k], noise_rng)
    return out


def _add_spots(plane: F32, sy: F64, sx: F64, dz: F64, amp: float) -> None:
    """Add Gaussian puncta at (sy, sx), dimmed by their z distance ``dz`` from the plane."""
    for y, x, d in zip(sy, sx, dz, strict=True):
        wz = np.exp(-0.5 * (d / 0.8) ** 2)
        if wz < 0.02:
            continue  # out of focus: contributes nothing visible
        win = _polar_window(y, x, 6.0, (plane.shape[0], plane.shape[1]))
        if win is None:
            continue
        box, dy, dx = win
        plane[box] += (amp * wz * np.exp(-(dy**2 + dx**2) / (2 * 1.5**2))).astype(np.float32)
