"""Grid searches of the control plugin (no ROS): A* and the coarse search that seeds refinement.

- :func:`astar`: textbook A* on an 8-connected grid (octile heuristic, diagonal moves only
  between two free side cells), in plain Python. The benchmark's reference: its path length is
  the "A* length" every method is divided by, and a start/goal pair is used only when A* finds a
  path (it *proves* the pair connected).
- :func:`grid_search`: the same shortest 8-connected path problem solved by scikit-image's
  compiled Dijkstra (``MCP_Geometric``); the plugin's initialiser runs it on a coarse grid (as
  Nav2 pairs a global grid planner with a smoother), falling back to the full grid.
- :func:`coarse_free`: a conservative coarse configuration space: a block of ``f x f`` cells is
  free only when every cell of it is.
"""

from __future__ import annotations

import heapq
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

Cell = Tuple[int, int]
_SQRT2 = math.sqrt(2.0)


def astar(free: np.ndarray, start: Cell, goal: Cell) -> Optional[List[Cell]]:
    """Return the shortest 8-connected path of cells from ``start`` to ``goal``, or None.

    ``free`` is ``(H, W)`` bool. Straight moves cost 1, diagonal ones sqrt(2); a diagonal move
    needs both cells beside it free (no cutting corners).
    """
    h, w = free.shape
    if not (free[start] and free[goal]):
        return None
    fr = free.ravel().tolist()
    s, g = start[0] * w + start[1], goal[0] * w + goal[1]
    gr, gc = goal
    best = {s: 0.0}
    parent = {s: -1}
    closed = bytearray(h * w)
    heap = [(0.0, 0.0, s)]
    moves = ((-1, 0, 1.0), (1, 0, 1.0), (0, -1, 1.0), (0, 1, 1.0),
             (-1, -1, _SQRT2), (-1, 1, _SQRT2), (1, -1, _SQRT2), (1, 1, _SQRT2))
    while heap:
        _, cost, u = heapq.heappop(heap)
        if closed[u]:
            continue
        closed[u] = 1
        if u == g:
            break
        r, c = divmod(u, w)
        for dr, dc, step in moves:
            rr, cc = r + dr, c + dc
            if not (0 <= rr < h and 0 <= cc < w):
                continue
            v = rr * w + cc
            if closed[v] or not fr[v]:
                continue
            if dr and dc and not (fr[r * w + cc] and fr[rr * w + c]):
                continue
            nc = cost + step
            if nc < best.get(v, math.inf):
                best[v] = nc
                parent[v] = u
                ar, ac = abs(rr - gr), abs(cc - gc)
                hh = (ar + ac) + (_SQRT2 - 2.0) * min(ar, ac)
                heapq.heappush(heap, (nc + hh, nc, v))
    if g not in parent:
        return None
    path = []
    u = g
    while u != -1:
        path.append(divmod(u, w))
        u = parent[u]
    return path[::-1]


def cells_length(cells: Sequence[Cell]) -> float:
    """Length, in cells, of a path of cells."""
    a = np.asarray(cells, dtype=np.float64)
    return float(np.linalg.norm(np.diff(a, axis=0), axis=1).sum()) if len(a) > 1 else 0.0


def grid_search(free: np.ndarray, start: Cell, goal: Cell,
                cell_cost: Optional[np.ndarray] = None) -> Optional[List[Cell]]:
    """Return a least-cost path of free cells (compiled Dijkstra), or None.

    ``cell_cost`` (>= 1, default 1): the cost of crossing a cell per cell length (as Nav2's
    inflation costs). 8-connected; when the path cuts a corner (a diagonal move between two
    blocked cells, which the compiled search allows), it is searched again 4-connected, which
    never does.
    """
    if not (free[start] and free[goal]):
        return None
    from skimage.graph import MCP_Geometric
    base = np.ones(free.shape) if cell_cost is None else cell_cost
    cost = np.where(free, base, -1.0)  # negative: impassable
    for fully_connected in (True, False):
        mcp = MCP_Geometric(cost, fully_connected=fully_connected)
        cum, _ = mcp.find_costs([start], [goal])
        if not np.isfinite(cum[goal]):
            return None
        cells = np.asarray(mcp.traceback(goal), dtype=np.int64)
        if not fully_connected or not _cuts_corner(free, cells):
            return [tuple(map(int, rc)) for rc in cells]
    return None


def _cuts_corner(free: np.ndarray, cells: np.ndarray) -> bool:
    """Whether a path of cells makes a diagonal move with a blocked cell on either side."""
    if len(cells) < 2:
        return False
    a, b = cells[:-1], cells[1:]
    diag = (a[:, 0] != b[:, 0]) & (a[:, 1] != b[:, 1])
    if not diag.any():
        return False
    a, b = a[diag], b[diag]
    return bool((~free[a[:, 0], b[:, 1]] | ~free[b[:, 0], a[:, 1]]).any())


def coarse_min(values: np.ndarray, f: int) -> np.ndarray:
    """Return the minimum of every ``f x f`` block (the grid padded with its own minimum)."""
    if f <= 1:
        return values
    h, w = values.shape
    hp, wp = -(-h // f) * f, -(-w // f) * f
    padded = np.full((hp, wp), values.min())
    padded[:h, :w] = values
    return padded.reshape(hp // f, f, wp // f, f).min(axis=(1, 3))


def coarse_free(free: np.ndarray, f: int) -> np.ndarray:
    """Return the ``ceil(H / f) x ceil(W / f)`` grid whose blocks are free in every cell."""
    if f <= 1:
        return free
    h, w = free.shape
    hp, wp = -(-h // f) * f, -(-w // f) * f
    padded = np.zeros((hp, wp), bool)
    padded[:h, :w] = free
    return padded.reshape(hp // f, f, wp // f, f).all(axis=(1, 3))
