"""Map and problem generator of the control plugin's tests and benchmark (no ROS).

Four kinds of occupancy grid, square, ``size`` cells a side at ``RESOLUTION`` (5 cm):

- ``random``: a random obstacle field (discs and boxes of 0.2 - 1.2 m over about 20 % of it);
- ``corridors``: solid, with straight corridors 0.6 - 1.2 m wide carved along random rows and
  columns (a street grid with some streets missing);
- ``rooms``: an outer wall and rooms split recursively by 10 - 15 cm walls, each wall with one
  door 0.6 - 1.0 m wide;
- ``maze``: a perfect maze (depth-first backtracker) of 1 m cells, corridors 0.8 m wide.

A *problem* is a map with a start and a goal: two cells with the clearance (plus 2.5 cm) in the
same connected part of the configuration space, at least 40 % of the map's side apart (when
possible), that :func:`search.astar` connects; its A* path is kept as the reference.

**Splits.** Every map comes from ``numpy.random.default_rng([split, kind, size, index])``;
``dev`` (split 0) is what settings were tuned on, ``held_out`` (split 1) is what the benchmark
reports and was never used for tuning, ``test`` (split 2) is the unit tests'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from sage_irp_ros.plugins.control.grid import GridMap
from sage_irp_ros.plugins.control.search import astar, cells_length

RESOLUTION = 0.05
KINDS = ('random', 'corridors', 'rooms', 'maze')
SPLITS = {'dev': 0, 'held_out': 1, 'test': 2}
_KIND_ID = {k: i for i, k in enumerate(KINDS)}


def _cells(m: float) -> int:
    return max(1, int(round(m / RESOLUTION)))


def random_field(size: int, rng: np.random.Generator, fill: float = 0.2) -> np.ndarray:
    """Discs and boxes until about ``fill`` of the map is occupied."""
    occ = np.zeros((size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    while occ.mean() < fill:
        r = _cells(rng.uniform(0.1, 0.6))
        cy, cx = rng.integers(0, size, 2)
        if rng.random() < 0.5:
            occ |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            ry = _cells(rng.uniform(0.1, 0.6))
            occ[max(cy - ry, 0):cy + ry, max(cx - r, 0):cx + r] = True
    return occ


def corridors(size: int, rng: np.random.Generator) -> np.ndarray:
    """Straight corridors along random rows and columns of a solid map."""
    occ = np.ones((size, size), bool)
    n = max(2, size // 40)
    for axis in (0, 1):
        lines = np.linspace(0, size, n + 2)[1:-1]
        for c in lines:
            c = int(c + rng.integers(-size // (4 * n + 4), size // (4 * n + 4) + 1))
            w = _cells(rng.uniform(0.6, 1.2))
            lo, hi = max(c - w // 2, 1), min(c + w - w // 2, size - 1)
            # A street runs the whole way, or from one end to a random point.
            a, b = 1, size - 1
            if rng.random() < 0.3:
                cut = int(rng.integers(size // 3, 2 * size // 3))
                a, b = (1, cut) if rng.random() < 0.5 else (cut, size - 1)
            if axis == 0:
                occ[lo:hi, a:b] = False
            else:
                occ[a:b, lo:hi] = False
    return occ


def rooms(size: int, rng: np.random.Generator) -> np.ndarray:
    """Rooms by recursive division: walls 10 - 15 cm, one door 0.6 - 1.0 m in each."""
    occ = np.zeros((size, size), bool)
    t = _cells(rng.uniform(0.1, 0.15))
    occ[:t, :] = occ[-t:, :] = occ[:, :t] = occ[:, -t:] = True
    min_room = _cells(2.0)

    def split(r0, r1, c0, c1, depth):
        h, w = r1 - r0, c1 - c0
        if depth > 6 or max(h, w) < 2 * min_room:
            return
        horizontal = h > w if h != w else rng.random() < 0.5
        door = _cells(rng.uniform(0.6, 1.0))
        if horizontal:
            r = int(rng.integers(r0 + min_room, r1 - min_room + 1))
            occ[r:r + t, c0:c1] = True
            d0 = int(rng.integers(c0 + t, max(c0 + t + 1, c1 - door - t)))
            occ[r:r + t, d0:d0 + door] = False
            split(r0, r, c0, c1, depth + 1)
            split(r + t, r1, c0, c1, depth + 1)
        else:
            c = int(rng.integers(c0 + min_room, c1 - min_room + 1))
            occ[r0:r1, c:c + t] = True
            d0 = int(rng.integers(r0 + t, max(r0 + t + 1, r1 - door - t)))
            occ[d0:d0 + door, c:c + t] = False
            split(r0, r1, c0, c, depth + 1)
            split(r0, r1, c + t, c1, depth + 1)

    split(t, size - t, t, size - t, 0)
    return occ


def maze(size: int, rng: np.random.Generator, cell_m: float = 1.0,
         wall_m: float = 0.2) -> np.ndarray:
    """Return a perfect maze (depth-first backtracker): ``cell_m`` cells, ``wall_m`` walls."""
    cell, wall = _cells(cell_m), _cells(wall_m)
    n = max(2, (size - wall) // cell)
    occ = np.ones((size, size), bool)
    seen = np.zeros((n, n), bool)
    off = (size - n * cell - wall) // 2 + wall

    def carve(r, c):
        occ[off + r * cell:off + (r + 1) * cell - wall,
            off + c * cell:off + (c + 1) * cell - wall] = False

    stack = [(0, 0)]
    seen[0, 0] = True
    carve(0, 0)
    while stack:
        r, c = stack[-1]
        nxt = [(r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
               if 0 <= r + dr < n and 0 <= c + dc < n and not seen[r + dr, c + dc]]
        if not nxt:
            stack.pop()
            continue
        rr, cc = nxt[int(rng.integers(len(nxt)))]
        seen[rr, cc] = True
        carve(rr, cc)
        # Knock down the wall between the two cells.
        r0, r1 = sorted((r, rr))
        c0, c1 = sorted((c, cc))
        occ[off + r0 * cell:off + (r1 + 1) * cell - wall,
            off + c0 * cell:off + (c1 + 1) * cell - wall] = False
        stack.append((rr, cc))
    return occ


_MAKERS = {'random': random_field, 'corridors': corridors, 'rooms': rooms, 'maze': maze}


def make_map(kind: str, size: int, rng: np.random.Generator) -> GridMap:
    """Return a ``size x size`` map of ``kind`` (occupied 100, free 0) at 5 cm."""
    if kind not in _MAKERS:
        raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
    occ = _MAKERS[kind](size, rng)
    return GridMap.from_occupancy(np.where(occ, 100, 0).astype(np.int8), RESOLUTION)


@dataclass
class Problem:
    """A benchmark problem: the map, start, goal (map frame) and the A* reference."""

    kind: str
    size: int
    index: int
    grid: GridMap
    start: np.ndarray
    goal: np.ndarray
    astar_cells: list
    astar_length: float  # metres

    @property
    def name(self) -> str:
        """``kind-size-index``."""
        return f'{self.kind}-{self.size}-{self.index}'


def rng_for(split: str, kind: str, size: int, index: int) -> np.random.Generator:
    """Return the generator of one map of a split (see the module's docstring)."""
    return np.random.default_rng([SPLITS[split], _KIND_ID[kind], size, index])


def make_problem(split: str, kind: str, size: int, index: int, clearance: float = 0.1,
                 tries: int = 20) -> Optional[Problem]:
    """Return the problem ``index`` of a split, or None when its map has no usable pair."""
    from scipy import ndimage
    rng = rng_for(split, kind, size, index)
    grid = make_map(kind, size, rng)
    free = grid.cspace_free(clearance)
    ends = grid.sdf[1:-1, 1:-1] >= clearance + 0.025
    labels, n = ndimage.label(free, structure=np.ones((3, 3)))
    if n == 0:
        return None
    counts = np.bincount(labels[ends], minlength=n + 1)
    counts[0] = 0
    if counts.max() < 2:
        return None
    part = (labels == int(np.argmax(counts))) & ends
    cells = np.argwhere(part)
    min_dist = 0.4 * size
    for _ in range(tries):
        s = cells[int(rng.integers(len(cells)))]
        far = cells[np.linalg.norm(cells - s, axis=1) >= min_dist]
        pool = far if len(far) else cells
        g = pool[int(rng.integers(len(pool)))]
        if (s == g).all():
            continue
        path = astar(free, tuple(map(int, s)), tuple(map(int, g)))
        if path is not None:
            return Problem(kind, size, index, grid, grid.center_of(s), grid.center_of(g),
                           path, cells_length(path) * grid.resolution)
    return None


def problems(split: str, kinds: Sequence[str] = KINDS, sizes: Sequence[int] = (200,),
             n: int = 10, clearance: float = 0.1) -> List[Problem]:
    """Return ``n`` problems per kind and size of a split (maps without a pair are skipped)."""
    out = []
    for size in sizes:
        for kind in kinds:
            got, index = 0, 0
            while got < n and index < 10 * n:
                p = make_problem(split, kind, size, index, clearance)
                index += 1
                if p is not None:
                    out.append(p)
                    got += 1
    return out


def ascii_map(grid: GridMap, path=None) -> str:
    """Return a text picture of a map (``#`` obstacle, ``*`` path), for debugging."""
    rows = [['#' if b else '.' for b in row] for row in grid.blocked]
    if path is not None:
        for x, y in np.asarray(path):
            r, c = grid.cell_of((x, y))
            rows[r][c] = '*'
    return '\n'.join(''.join(r) for r in rows[::-1])


def diag(size: int) -> float:
    """Diagonal of a map of ``size`` cells, metres."""
    return math.sqrt(2) * size * RESOLUTION
