"""Procedural segmentation scenes with exact class maps, and the held-out evaluation set.

A scene is a textured, noisy background with a few shapes drawn by ``skimage.draw``: disks,
axis-aligned rectangles and triangles. The class of a pixel is the class of the top-most shape
covering it (``0`` = background). Shape colour and texture are drawn independently of the class,
so a class can only be told from the *shape*: a pixel inside a large shape needs context from
the shape's outline, which is what the latent refiner propagates step by step.

Difficulty is one number ``d`` in [0, 1] that sets the knobs (each drawn from a range that moves
with ``d``): sensor noise, blur, contrast of the shapes against the background, occluding bars
(background-textured strips drawn over the shapes) and the object count. Every scene is a pure
function of its integer seed (and ``d``), so data sets are defined by seed ranges:

================  =====================  ==================================
set               seeds                  difficulty
================  =====================  ==================================
train             ``[0, 1_000_000)``     ``d ~ U(0, 1)`` (drawn from the seed)
validation        ``[1_000_000, ...)``   ``d ~ U(0, 1)`` (halting thresholds)
held-out easy     ``[5_000_000, ...)``   ``d ~ U(0.0, 0.3)``
held-out hard     ``[6_000_000, ...)``   ``d ~ U(0.7, 1.0)``
================  =====================  ==================================

Training never draws a seed at or above ``VAL_SEED0``; the held-out sets are only read by the
benchmark, the tests and the final report of the training script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Tuple

import numpy as np
from scipy import ndimage
from skimage import draw

CLASSES = ('background', 'disk', 'rectangle', 'triangle')
SIZE = 64

TRAIN_SEED0 = 0
TRAIN_SEED_END = 1_000_000
VAL_SEED0 = 1_000_000
EASY_SEED0 = 5_000_000
HARD_SEED0 = 6_000_000
SPLITS = {'easy': (EASY_SEED0, 0.0, 0.3), 'hard': (HARD_SEED0, 0.7, 1.0)}


@dataclass(frozen=True)
class Knobs:
    """The difficulty knobs of one scene (intensities in [0, 1] units, lengths in pixels)."""

    noise: float      # std of additive Gaussian sensor noise
    blur: float       # sigma of the Gaussian optical blur
    contrast: float   # how far shape colours sit from the background colour (0..1)
    occluders: int    # background-textured bars drawn over the shapes
    count: int        # number of shapes


def knobs_for(d: float, rng: np.random.Generator) -> Knobs:
    """Draw the knobs of a scene of difficulty ``d`` in [0, 1]."""
    d = float(np.clip(d, 0.0, 1.0))
    noise = rng.uniform(0.0, 0.02) + d * rng.uniform(0.04, 0.09)
    blur = rng.uniform(0.0, 0.3) + d * rng.uniform(0.4, 0.9)
    contrast = 1.0 - d * rng.uniform(0.35, 0.55)
    occluders = int(rng.integers(0, 3)) if d > 0.5 else 0
    count = int(rng.integers(1, 3 + int(round(3 * d)) + 1))
    return Knobs(noise, blur, contrast, occluders, count)


def _texture(rng: np.random.Generator, size: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Draw a smooth random texture (low-frequency noise plus stripes) mixing two colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    low = ndimage.zoom(rng.standard_normal((6, 6)).astype(np.float32), size / 6, order=1)
    low = low[:size, :size]
    f = rng.uniform(2.0, 8.0)
    th = rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * f * (np.cos(th) * xx + np.sin(th) * yy) + rng.uniform(0, 6.3))
    t = 0.6 * low / (np.abs(low).max() + 1e-6) + 0.4 * rng.uniform(0.2, 1.0) * stripes
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    return c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]


def _triangle(rng: np.random.Generator, cy: float, cx: float, r: float):
    """Vertices of a triangle around (cy, cx) with circumradius ``r`` and no sliver angles."""
    a0 = rng.uniform(0, 2 * np.pi)
    angles = a0 + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
    return cy + r * np.sin(angles), cx + r * np.cos(angles)


def make_scene(seed: int, difficulty: float = None, size: int = SIZE
               ) -> Tuple[np.ndarray, np.ndarray, Knobs]:
    """Render scene ``seed``: ``(image (size, size, 3) uint8, classes (size, size) uint8, knobs)``.

    With ``difficulty`` None it is drawn uniformly from [0, 1] by the seed's generator.
    """
    rng = np.random.default_rng(int(seed))
    d = rng.uniform(0.0, 1.0) if difficulty is None else float(difficulty)
    k = knobs_for(d, rng)
    bg_a, bg_b = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    img = _texture(rng, size, bg_a, bg_b)
    background = img.copy()
    fg_pattern = _texture(rng, size, np.full(3, -0.08), np.full(3, 0.08))
    bg_mean = img.reshape(-1, 3).mean(0)
    cls = np.zeros((size, size), np.uint8)
    s = size / 64.0
    for _ in range(k.count):
        c = int(rng.integers(1, 4))
        cy, cx = rng.uniform(8 * s, size - 8 * s, 2)
        if c == 1:
            r = rng.uniform(5, 12) * s
            rr, cc = draw.disk((cy, cx), r, shape=cls.shape)
        elif c == 2:
            h, w = rng.uniform(8, 22, 2) * s
            rr, cc = draw.polygon([cy - h / 2, cy - h / 2, cy + h / 2, cy + h / 2],
                                  [cx - w / 2, cx + w / 2, cx + w / 2, cx - w / 2],
                                  shape=cls.shape)
        else:
            ys, xs = _triangle(rng, cy, cx, rng.uniform(7, 14) * s)
            rr, cc = draw.polygon(ys, xs, shape=cls.shape)
        if rr.size == 0:
            continue
        # Shape colour: a random colour, pulled towards the background mean as contrast falls;
        # kept at least a little apart from the background so the task stays well posed.
        col = rng.uniform(0.0, 1.0, 3)
        diff = col - bg_mean
        if np.abs(diff).max() < 0.35:
            diff = diff / (np.abs(diff).max() + 1e-6) * 0.35
        fg = bg_mean + k.contrast * diff
        img[rr, cc] = fg[None, :] + fg_pattern[rr, cc]
        cls[rr, cc] = c
    for _ in range(k.occluders):  # bars of background texture over the shapes
        wbar = rng.uniform(2, 4) * s
        y0, x0 = rng.uniform(0, size, 2)
        th = rng.uniform(0, np.pi)
        L = size * 1.5
        dy, dx = np.sin(th) * L / 2, np.cos(th) * L / 2
        ny, nx = np.cos(th) * wbar / 2, -np.sin(th) * wbar / 2
        rr, cc = draw.polygon([y0 - dy - ny, y0 - dy + ny, y0 + dy + ny, y0 + dy - ny],
                              [x0 - dx - nx, x0 - dx + nx, x0 + dx + nx, x0 + dx - nx],
                              shape=cls.shape)
        img[rr, cc] = background[rr, cc]
        cls[rr, cc] = 0
    if k.blur > 0.05:
        img = ndimage.gaussian_filter(img, sigma=(k.blur, k.blur, 0))
    img = img + rng.standard_normal(img.shape).astype(np.float32) * k.noise
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img, cls, k


def make_batch(seeds: Iterable[int], difficulties=None, size: int = SIZE
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Render many scenes: ``(images (N, size, size, 3) uint8, classes (N, size, size) uint8)``."""
    seeds = list(seeds)
    if difficulties is None:
        difficulties = [None] * len(seeds)
    imgs = np.empty((len(seeds), size, size, 3), np.uint8)
    clss = np.empty((len(seeds), size, size), np.uint8)
    for i, (s, d) in enumerate(zip(seeds, difficulties, strict=True)):
        imgs[i], clss[i], _ = make_scene(s, d, size)
    return imgs, clss


def split_seeds(split: str, n: int) -> List[Tuple[int, float]]:
    """Return the first ``n`` ``(seed, difficulty)`` pairs of a held-out split ('easy' or 'hard').

    The difficulty of item ``i`` is spread evenly over the split's range (deterministic).
    """
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; expected one of {tuple(SPLITS)}')
    seed0, lo, hi = SPLITS[split]
    return [(seed0 + i, lo + (hi - lo) * ((i * 0.618034) % 1.0)) for i in range(n)]


def held_out(split: str, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Images and class maps of the first ``n`` scenes of a held-out split."""
    pairs = split_seeds(split, n)
    return make_batch([p[0] for p in pairs], [p[1] for p in pairs])


def train_seeds(start: int, n: int) -> List[int]:
    """Training seeds ``[start, start + n)``; refuses any seed outside the training range."""
    if start < TRAIN_SEED0 or start + n > TRAIN_SEED_END:
        raise ValueError('training seeds must lie in [0, 1_000_000)')
    return list(range(start, start + n))
