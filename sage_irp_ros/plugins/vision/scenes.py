"""Procedural segmentation scenes with exact class maps, and the held-out evaluation set.

A scene is a textured, noisy background with a few shapes drawn by ``skimage.draw``: disks,
axis-aligned rectangles and triangles. The class of a pixel is the class of the top-most shape
covering it (``0`` = background). Shape colour and texture are drawn independently of the class,
so a class can only be told from the *shape*: a pixel inside a large shape needs context from
the shape's outline, which is what the latent refiner propagates step by step.

Difficulty is one number ``d`` in [0, 1] that sets the knobs (each drawn from a range that moves
with ``d``). Two generators (``task``):

- ``'shapes'`` (the committed model's): sensor noise, blur (sigma up to 1.2 px), contrast of the
  shapes against the background (down to 0.45), occluding bars (background-textured strips
  drawn over the shapes, d > 0.5) and the object count;
- ``'sizes'`` (the redesign tried for issue #11): above all the **size** of the shapes (radius
  4-8 px at ``d = 0``, 18-28 px at ``d = 1``; fewer shapes when they are large), so that the
  interior of a large shape needs several refinement steps and a small one none or one; noise,
  blur (up to 0.7 px) and contrast loss (down to 0.7) grow a little with ``d``.

Every scene is a pure function of its integer seed, ``d`` and the task, so data sets are
defined by seed ranges:

================  =====================  ==================================
set               seeds                  difficulty
================  =====================  ==================================
train             ``[0, 1_000_000)``     ``d ~ U(0, 1)`` (drawn from the seed)
validation        ``[1_000_000, ...)``   ``d ~ U(0, 1)`` (halting, unknown threshold)
OOD validation    ``[2_000_000, ...)``   ``ood_set(..., held_out=False)``
held-out easy     ``[5_000_000, ...)``   ``d ~ U(0.0, 0.3)``
held-out hard     ``[6_000_000, ...)``   ``d ~ U(0.7, 1.0)``
OOD held-out      ``[7_000_000, ...)``   ``ood_set(...)``: photos, blurred, low contrast,
                                         unseen shapes
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
    size_lo: float = 0.0  # 'sizes' task: shape radius range, pixels at 64x64
    size_hi: float = 0.0


#: Scene generators: 'shapes' (the committed model's task) and 'sizes' (difficulty = shape size,
#: the redesign tried for issue #11, docs/VISION.md).
TASKS = ('shapes', 'sizes', 'tags')


def knobs_for(d: float, rng: np.random.Generator, task: str = 'shapes') -> Knobs:
    """Draw the knobs of a scene of difficulty ``d`` in [0, 1] for ``task``."""
    if task == 'sizes':
        return _knobs_sizes(d, rng)
    if task == 'tags':
        return _knobs_tags(d, rng)
    if task != 'shapes':
        raise ValueError(f'unknown task {task!r}; expected one of {TASKS}')
    d = float(np.clip(d, 0.0, 1.0))
    noise = rng.uniform(0.0, 0.02) + d * rng.uniform(0.04, 0.09)
    blur = rng.uniform(0.0, 0.3) + d * rng.uniform(0.4, 0.9)
    contrast = 1.0 - d * rng.uniform(0.35, 0.55)
    occluders = int(rng.integers(0, 3)) if d > 0.5 else 0
    count = int(rng.integers(1, 3 + int(round(3 * d)) + 1))
    return Knobs(noise, blur, contrast, occluders, count)


def _knobs_sizes(d: float, rng: np.random.Generator) -> Knobs:
    """Draw the knobs of the 'sizes' task: difficulty is mostly **size**.

    A shape's class is told by its outline (corners, curvature), and the refiner carries that
    evidence a few pixels further inwards per step, so the larger
    the shapes, the more steps their interiors need. Noise, blur and contrast loss grow a little
    with ``d`` as well (ranges that the out-of-distribution sets leave: ``ood_set``).
    """
    d = float(np.clip(d, 0.0, 1.0))
    noise = rng.uniform(0.0, 0.015) + d * rng.uniform(0.0, 0.04)
    blur = rng.uniform(0.0, 0.3) + d * rng.uniform(0.0, 0.4)
    contrast = 1.0 - d * rng.uniform(0.0, 0.3)
    lo, hi = 4.0 + 14.0 * d, 8.0 + 20.0 * d
    count = int(rng.integers(1, 3 + int(round(3 * (1 - d))) + 1)) if d > 0.5 else \
        int(rng.integers(2, 6))
    return Knobs(noise, blur, contrast, 0, count, lo, hi)


def _foreground(rng: np.random.Generator, bg_mean: np.ndarray, contrast: float) -> np.ndarray:
    """Return an object's colour: random, pulled towards the background mean as contrast falls.

    Kept at least a little apart from the background so the task stays well posed.
    """
    diff = rng.uniform(0.0, 1.0, 3) - bg_mean
    if np.abs(diff).max() < 0.35:
        diff = diff / (np.abs(diff).max() + 1e-6) * 0.35
    return bg_mean + contrast * diff


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


#: Shapes never drawn by the training generator (the ``unseen_shapes`` OOD set).
UNSEEN_SHAPES = ('star', 'cross', 'ring', 'crescent')


def _shape_pixels(kind: str, rng: np.random.Generator, cy: float, cx: float, r: float,
                  shape: Tuple[int, int]):
    """Pixel rows and columns of one shape of radius ``r`` centred at (cy, cx)."""
    if kind == 'disk':
        return draw.disk((cy, cx), r, shape=shape)
    if kind == 'rectangle':
        h, w = r * rng.uniform(1.2, 2.0, 2)
        return draw.polygon([cy - h / 2, cy - h / 2, cy + h / 2, cy + h / 2],
                            [cx - w / 2, cx + w / 2, cx + w / 2, cx - w / 2], shape=shape)
    if kind == 'triangle':
        ys, xs = _triangle(rng, cy, cx, r * 1.25)
        return draw.polygon(ys, xs, shape=shape)
    if kind == 'star':
        a = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r * 1.2, r * 0.5)
        return draw.polygon(cy + rad * np.sin(a), cx + rad * np.cos(a), shape=shape)
    if kind == 'cross':
        t = r * 0.4
        ys = [cy - r, cy - r, cy - t, cy - t, cy + t, cy + t, cy + r, cy + r, cy + t, cy + t,
              cy - t, cy - t]
        xs = [cx - t, cx + t, cx + t, cx + r, cx + r, cx + t, cx + t, cx - t, cx - t, cx - r,
              cx - r, cx - t]
        return draw.polygon(ys, xs, shape=shape)
    if kind == 'ring':
        m = np.zeros(shape, bool)
        m[draw.disk((cy, cx), r, shape=shape)] = True
        m[draw.disk((cy, cx), r * 0.55, shape=shape)] = False
        return np.nonzero(m)
    if kind == 'crescent':
        m = np.zeros(shape, bool)
        m[draw.disk((cy, cx), r, shape=shape)] = True
        a = rng.uniform(0, 2 * np.pi)
        m[draw.disk((cy + 0.5 * r * np.sin(a), cx + 0.5 * r * np.cos(a)), r * 0.85,
                    shape=shape)] = False
        return np.nonzero(m)
    raise ValueError(f'unknown shape {kind!r}')


def _knobs_tags(d: float, rng: np.random.Generator) -> Knobs:
    """Draw the knobs of the 'tags' task: difficulty is mostly how far objects extend.

    ``size_lo``..``size_hi`` is the object's length in pixels at 64x64, and its tag may sit
    anywhere on it, so long objects have pixels far from their tag.
    Noise, blur and contrast loss grow a little with ``d`` (ranges the out-of-distribution sets
    leave, ``ood_set``); easy scenes hold more, smaller objects.
    """
    d = float(np.clip(d, 0.0, 1.0))
    noise = rng.uniform(0.0, 0.015) + d * rng.uniform(0.0, 0.04)
    blur = rng.uniform(0.0, 0.3) + d * rng.uniform(0.0, 0.4)
    contrast = 1.0 - d * rng.uniform(0.0, 0.3)
    length = 10.0 + 48.0 * d
    count = int(rng.integers(2, 6)) if d < 0.35 else int(rng.integers(1, 4))
    return Knobs(noise, blur, contrast, 0, count, 0.85 * length, 1.1 * length)


#: Tag patterns of the 'tags' task (8x8, 1 = light ink, 0 = dark ink), class id = index + 1.
#: All are unchanged (up to inverting a checker) by the flips and 90-degree rotations of
#: training augmentation.
_I, _J = np.mgrid[0:8, 0:8]
_CENTRE = (_I >= 2) & (_I < 6) & (_J >= 2) & (_J < 6)
TAG_PATTERNS = {
    'dot': (~_CENTRE).astype(np.float32),                       # light, dark centre
    'frame': _CENTRE.astype(np.float32),                        # dark, light centre
    'checker': (((_I // 2) + (_J // 2)) % 2).astype(np.float32),
}
#: Patterns never drawn by the training generator (the ``unseen_tags`` OOD set).
UNSEEN_TAG_PATTERNS = {
    'stripes': ((_I // 2) % 2).astype(np.float32),
    'cross': (~(((_I >= 3) & (_I < 5)) | ((_J >= 3) & (_J < 5)))).astype(np.float32),
    'half': (_J < 4).astype(np.float32),
}
TAG_CLASSES = ('background',) + tuple(TAG_PATTERNS)
OBJECT_KINDS = ('blob', 'bar', 'elbow', 'snake')


def classes_for(task: str) -> Tuple[str, ...]:
    """Class names of a task's class ids (0 = background)."""
    if task not in TASKS:
        raise ValueError(f'unknown task {task!r}; expected one of {TASKS}')
    return TAG_CLASSES if task == 'tags' else CLASSES


def _thick_polyline(ys, xs, width: float, shape) -> np.ndarray:
    """Boolean mask of a polyline of the given width (segments as rotated rectangles + joints)."""
    m = np.zeros(shape, bool)
    for (y0, x0, y1, x1) in zip(ys[:-1], xs[:-1], ys[1:], xs[1:], strict=True):
        L = max(np.hypot(y1 - y0, x1 - x0), 1e-6)
        ny, nx = (x1 - x0) / L * width / 2, -(y1 - y0) / L * width / 2
        rr, cc = draw.polygon([y0 - ny, y0 + ny, y1 + ny, y1 - ny],
                              [x0 - nx, x0 + nx, x1 + nx, x1 - nx], shape=shape)
        m[rr, cc] = True
    for (y, x) in zip(ys[1:-1], xs[1:-1], strict=True):
        m[draw.disk((y, x), width / 2, shape=shape)] = True
    return m


def _tag_object(kind: str, rng: np.random.Generator, length: float, width: float,
                shape) -> np.ndarray:
    """Mask of one object of the 'tags' task: ``length`` is its extent along its skeleton."""
    H, W = shape
    cy, cx = rng.uniform(0.15 * H, 0.85 * H), rng.uniform(0.15 * W, 0.85 * W)
    th = rng.uniform(0, 2 * np.pi)
    if kind == 'blob':
        m = np.zeros(shape, bool)
        rr, cc = draw.ellipse(cy, cx, max(length / 2, width / 2),
                              width / 2 * rng.uniform(1.0, 1.4), shape=shape, rotation=th)
        m[rr, cc] = True
        return m
    if kind == 'bar':
        pts = [(-length / 2, 0.0), (length / 2, 0.0)]
    elif kind == 'elbow':
        a = rng.uniform(0.35, 0.65) * length
        pts = [(-a / 2, 0.0), (a / 2, 0.0), (a / 2, (length - a) * rng.choice([-1, 1]))]
    else:  # snake: three segments with random turns
        seg = length / 3
        pts, ang, p = [(0.0, 0.0)], 0.0, np.zeros(2)
        for _ in range(3):
            p = p + seg * np.array([np.cos(ang), np.sin(ang)])
            pts.append((float(p[0]), float(p[1])))
            ang += rng.uniform(0.6, 1.6) * rng.choice([-1, 1])
        c = np.mean(pts, 0)
        pts = [(u - c[0], v - c[1]) for u, v in pts]
    ct, st = np.cos(th), np.sin(th)
    ys = [cy + u * st + v * ct for u, v in pts]
    xs = [cx + u * ct - v * st for u, v in pts]
    return _thick_polyline(ys, xs, width, shape)


def _render_tags(rng: np.random.Generator, k: Knobs, s: float, img: np.ndarray,
                 cls: np.ndarray, bg_mean: np.ndarray, fg_pattern: np.ndarray,
                 patterns) -> None:
    """Draw the objects of a 'tags' scene, each carrying one tag, into ``img`` and ``cls``.

    Objects never touch (a 2-pixel gap), so every object pixel is connected to its own tag
    inside the object; an object whose tag does not fit is dropped. ``patterns``: a dict of
    name -> (class id, 8x8 pattern); ``s`` the scale (pixels per pixel of a 64x64 scene).
    """
    occupied = np.zeros(cls.shape, bool)
    tag = int(round(8 * s))
    names = list(patterns)
    for _ in range(k.count):
        name = names[int(rng.integers(0, len(names)))]
        cid, pat = patterns[name]
        length = rng.uniform(k.size_lo, k.size_hi) * s
        width = rng.uniform(11.0, 14.0) * s
        kind = OBJECT_KINDS[int(rng.integers(0, len(OBJECT_KINDS)))]
        for _attempt in range(25):
            m = _tag_object(kind, rng, length, width, cls.shape)
            if m.sum() < tag * tag * 1.5 or (m & ndimage.binary_dilation(occupied,
                                                                          iterations=2)).any():
                continue
            # tag centres: object pixels whose tag square lies in the object
            inner = ndimage.binary_erosion(m, structure=np.ones((tag, tag), bool),
                                           border_value=0)
            ys, xs = np.nonzero(inner)
            if len(ys) == 0:
                continue
            j = int(rng.integers(0, len(ys)))
            ty, tx = ys[j] - tag // 2, xs[j] - tag // 2
            break
        else:
            continue
        fg = _foreground(rng, bg_mean, k.contrast)
        img[m] = fg[None, :] + fg_pattern[m]
        pick = np.arange(tag) * 8 // tag  # nearest-neighbour resize of the 8x8 pattern
        ink = pat[pick][:, pick]
        light = bg_mean + k.contrast * (0.92 - bg_mean)
        dark = bg_mean + k.contrast * (0.06 - bg_mean)
        img[ty:ty + tag, tx:tx + tag] = (dark[None, None, :] * (1 - ink[..., None])
                                         + light[None, None, :] * ink[..., None])
        cls[m] = cid
        occupied |= m


def make_scene(seed: int, difficulty: float = None, size: int = SIZE, *, task: str = 'shapes',
               blur: float = None, contrast: float = None, shapes: Tuple[str, ...] = None,
               noise_seed: int = None, scale: float = None
               ) -> Tuple[np.ndarray, np.ndarray, Knobs]:
    """Render scene ``seed``: ``(image (size, size, 3) uint8, classes (size, size) uint8, knobs)``.

    With ``difficulty`` None it is drawn uniformly from [0, 1] by the seed's generator.
    ``blur`` / ``contrast`` override the drawn knob (the OOD sets); ``shapes`` draws the
    shapes from these names instead of the three classes (their class id is then 255: no
    class of the model). ``noise_seed`` draws the sensor noise from its own generator (the
    same scene seen again with new noise: :func:`revisit`). ``scale``: object size in pixels
    per pixel of a 64x64 scene (default ``size / 64``; the 'tags' task only).
    """
    rng = np.random.default_rng(int(seed))
    d = rng.uniform(0.0, 1.0) if difficulty is None else float(difficulty)
    k = knobs_for(d, rng, task)
    if blur is not None or contrast is not None:
        k = Knobs(k.noise, k.blur if blur is None else float(blur),
                  k.contrast if contrast is None else float(contrast), k.occluders, k.count,
                  k.size_lo, k.size_hi)
    bg_a, bg_b = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    img = _texture(rng, size, bg_a, bg_b)
    background = img.copy()
    fg_pattern = _texture(rng, size, np.full(3, -0.08), np.full(3, 0.08))
    bg_mean = img.reshape(-1, 3).mean(0)
    cls = np.zeros((size, size), np.uint8)
    s = size / 64.0 if scale is None or task != 'tags' else float(scale)
    if task == 'tags':
        pats = ({n: (255, p) for n, p in UNSEEN_TAG_PATTERNS.items()} if shapes is not None
                else {n: (i + 1, p) for i, (n, p) in enumerate(TAG_PATTERNS.items())})
        _render_tags(rng, k, s, img, cls, bg_mean, fg_pattern, pats)
    for _ in range(0 if task == 'tags' else k.count):
        c = int(rng.integers(1, 4))
        if task == 'shapes':
            cy, cx = rng.uniform(8 * s, size - 8 * s, 2)
            if shapes is not None:
                kind = shapes[int(rng.integers(0, len(shapes)))]
                rr, cc = _shape_pixels(kind, rng, cy, cx, rng.uniform(5, 12) * s, cls.shape)
            elif c == 1:
                rr, cc = draw.disk((cy, cx), rng.uniform(5, 12) * s, shape=cls.shape)
            elif c == 2:
                h, w = rng.uniform(8, 22, 2) * s
                rr, cc = draw.polygon([cy - h / 2, cy - h / 2, cy + h / 2, cy + h / 2],
                                      [cx - w / 2, cx + w / 2, cx + w / 2, cx - w / 2],
                                      shape=cls.shape)
            else:
                ys, xs = _triangle(rng, cy, cx, rng.uniform(7, 14) * s)
                rr, cc = draw.polygon(ys, xs, shape=cls.shape)
        else:
            r = rng.uniform(k.size_lo, k.size_hi) * s
            margin = min(r * 0.8, size / 2 - 1)
            cy, cx = rng.uniform(margin, size - margin, 2)
            kind = CLASSES[c] if shapes is None else shapes[int(rng.integers(0, len(shapes)))]
            rr, cc = _shape_pixels(kind, rng, cy, cx, r, cls.shape)
        if len(rr) == 0:
            continue
        fg = _foreground(rng, bg_mean, k.contrast)
        img[rr, cc] = fg[None, :] + fg_pattern[rr, cc]
        cls[rr, cc] = c if shapes is None else 255
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
        img = ndimage.gaussian_filter(img, sigma=(k.blur * s, k.blur * s, 0))
    nrng = rng if noise_seed is None else np.random.default_rng([int(seed), int(noise_seed)])
    img = img + nrng.standard_normal(img.shape).astype(np.float32) * k.noise
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img, cls, k


def revisit(seed: int, difficulty: float, visit: int, task: str = 'tags', max_shift: int = 3,
            size: int = SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """Scene ``seed`` seen again: visit ``visit`` has its own sensor noise and view shift.

    The place is rendered once on a canvas ``2 * max_shift`` pixels larger (same content for
    every visit) and each visit crops a ``size`` window shifted by up to ``max_shift`` pixels
    in each direction, with new noise: a robot coming back to a place. Returns ``(image,
    class map)``.
    """
    big = size + 2 * max_shift
    img, cls, _ = make_scene(seed, difficulty, big, task=task, noise_seed=1000 + int(visit),
                             scale=size / 64.0)
    dy, dx = np.random.default_rng([int(seed), int(visit), 3]).integers(0, 2 * max_shift + 1, 2)
    return (np.ascontiguousarray(img[dy:dy + size, dx:dx + size]),
            np.ascontiguousarray(cls[dy:dy + size, dx:dx + size]))


def make_batch(seeds: Iterable[int], difficulties=None, size: int = SIZE, task: str = 'shapes'
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Render many scenes: ``(images (N, size, size, 3) uint8, classes (N, size, size) uint8)``."""
    seeds = list(seeds)
    if difficulties is None:
        difficulties = [None] * len(seeds)
    imgs = np.empty((len(seeds), size, size, 3), np.uint8)
    clss = np.empty((len(seeds), size, size), np.uint8)
    for i, (s, d) in enumerate(zip(seeds, difficulties, strict=True)):
        imgs[i], clss[i], _ = make_scene(s, d, size, task=task)
    return imgs, clss


def split_seeds(split: str, n: int) -> List[Tuple[int, float]]:
    """Return the first ``n`` ``(seed, difficulty)`` pairs of a held-out split ('easy' or 'hard').

    The difficulty of item ``i`` is spread evenly over the split's range (deterministic).
    """
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; expected one of {tuple(SPLITS)}')
    seed0, lo, hi = SPLITS[split]
    return [(seed0 + i, lo + (hi - lo) * ((i * 0.618034) % 1.0)) for i in range(n)]


def held_out(split: str, n: int, task: str = 'shapes') -> Tuple[np.ndarray, np.ndarray]:
    """Images and class maps of the first ``n`` scenes of a held-out split."""
    pairs = split_seeds(split, n)
    return make_batch([p[0] for p in pairs], [p[1] for p in pairs], task=task)


def train_seeds(start: int, n: int) -> List[int]:
    """Training seeds ``[start, start + n)``; refuses any seed outside the training range."""
    if start < TRAIN_SEED0 or start + n > TRAIN_SEED_END:
        raise ValueError('training seeds must lie in [0, 1_000_000)')
    return list(range(start, start + n))


# --- Out-of-distribution sets (the unknown flag) ----------------------------------------------

#: Natural photos of ``skimage.data`` that ship with scikit-image (no download).
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'camera', 'coins', 'moon', 'clock',
          'hubble_deep_field', 'immunohistochemistry', 'retina', 'grass', 'gravel', 'brick',
          'cat', 'page', 'text')
OOD_SETS = ('photos', 'blurred', 'low_contrast', 'unseen_shapes')
#: First seed of each OOD set: held-out (bench, tests) and validation (calibration checks).
OOD_HELD_OUT_SEED0 = 7_000_000
OOD_VAL_SEED0 = 2_000_000
#: Streams of recurring places for the memory plugin (``revisit``): held-out (benchmark) and
#: validation (warm-start thresholds) seeds.
MEMORY_HELD_OUT_SEED0 = 8_000_000
MEMORY_VAL_SEED0 = 1_500_000
OOD_BLUR = (1.8, 3.0)          # training blur sigma is at most 1.2 ('shapes'; 'sizes': 0.7)
OOD_CONTRAST = (0.12, 0.3)     # training contrast is at least 0.45 ('shapes'; 'sizes': 0.7)


def _photo(name: str) -> np.ndarray:
    from skimage import data
    a = getattr(data, name)()
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3]).astype(np.uint8)


def photo_crop(seed: int, max_side: int = 128) -> Tuple[np.ndarray, str]:
    """Return a random crop (square, 4:3 or 3:4) of a photo of :data:`PHOTOS` and its name.

    The crop is resized so that its longer side is ``max_side``.
    """
    from skimage.transform import resize
    rng = np.random.default_rng(int(seed))
    name = PHOTOS[int(rng.integers(0, len(PHOTOS)))]
    a = _photo(name)
    H, W = a.shape[:2]
    ratio = (1.0, 4 / 3, 3 / 4)[int(rng.integers(0, 3))]
    h = int(rng.uniform(0.35, 1.0) * min(H, W / ratio))
    w = min(int(h * ratio), W)
    y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    crop = a[y0:y0 + h, x0:x0 + w]
    sc = max_side / max(h, w)
    out = resize(crop, (max(int(round(h * sc)), 1), max(int(round(w * sc)), 1)),
                 anti_aliasing=True, preserve_range=True)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), name


def ood_set(name: str, n: int, held_out: bool = True, task: str = 'shapes'
            ) -> List[np.ndarray]:
    """``n`` frames of an out-of-distribution set (held-out seeds, or validation seeds).

    - ``photos``: crops of real photos (:func:`photo_crop`), 128 px on the longer side;
    - ``blurred``: scenes of any difficulty with Gaussian blur sigma in ``OOD_BLUR``;
    - ``low_contrast``: scenes with shape contrast in ``OOD_CONTRAST``;
    - ``unseen_shapes``: scenes whose shapes are all :data:`UNSEEN_SHAPES`.
    """
    if name not in OOD_SETS:
        raise ValueError(f'unknown OOD set {name!r}; expected one of {OOD_SETS}')
    seed0 = (OOD_HELD_OUT_SEED0 if held_out else OOD_VAL_SEED0) + 100_000 * OOD_SETS.index(name)
    out = []
    for i in range(n):
        seed, d = seed0 + i, (i * 0.618034) % 1.0
        u = np.random.default_rng([seed, 7]).uniform()
        if name == 'photos':
            out.append(photo_crop(seed)[0])
        elif name == 'blurred':
            out.append(make_scene(seed, d, task=task, blur=OOD_BLUR[0] + u * (
                OOD_BLUR[1] - OOD_BLUR[0]))[0])
        elif name == 'low_contrast':
            out.append(make_scene(seed, d, task=task, contrast=OOD_CONTRAST[0] + u * (
                OOD_CONTRAST[1] - OOD_CONTRAST[0]))[0])
        else:
            out.append(make_scene(seed, d, task=task, shapes=UNSEEN_SHAPES)[0])
    return out
