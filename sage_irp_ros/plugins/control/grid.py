"""The map of the control plugin: an occupancy grid, its distance field and path metrics (no ROS).

Conventions (those of ``nav_msgs/OccupancyGrid``): ``occupancy`` is ``(H, W)`` int, row ``r`` is
``y``, column ``c`` is ``x``; cell ``(r, c)`` spans ``[ox + c * res, ox + (c + 1) * res]`` in x
(``ox, oy``: the map origin, which must not be rotated). Values: ``-1`` unknown, ``0..100``
occupancy probability in percent; a cell is an obstacle when its value is at least
``occupied_threshold`` (65, as ``map_server``'s ``occupied_thresh`` 0.65), or when it is unknown
and ``unknown_is_occupied`` (the default: a planner must not route through unknown space). The
world outside the map counts as an obstacle.

**Distance field.** ``sdf`` is the signed distance to the nearest obstacle cell's edge, metres,
at the cell centres: ``(EDT - 0.5) * res`` in free cells (``EDT``: Euclidean distance, in cells,
from the cell's centre to the nearest obstacle cell's centre), minus the same inside obstacles.
It is padded with one ring of obstacle cells (the outside of the map). Between centres it is
interpolated bilinearly (:meth:`GridMap.distance`); that interpolant is *the* clearance of this
package: the plugin's energy, its feasibility check and every baseline of the benchmark read it.

**Path metrics** (:func:`path_metrics`), for a polyline of waypoints in the map frame (metres):
length; the smallest clearance along the polyline, sampled every quarter cell; curvature at each
interior waypoint, its turning angle divided by the mean of its two segments (1/m); the longest
segment. A path is *feasible* when its ends are the start and the goal, it stays on the map,
its clearance is at least the required one, and its curvature and segments are within the
limits (curvature with a 1 % tolerance, for the floating-point rounding of the projection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

#: Default occupancy threshold (percent), as map_server's ``occupied_thresh``.
OCCUPIED_THRESHOLD = 65
#: Relative tolerance of the curvature limit in the feasibility check.
CURVATURE_TOL = 0.01
#: Clearance samples per cell along a path.
SAMPLES_PER_CELL = 4


class MapError(ValueError):
    """The map is unusable (empty, mismatched sizes, bad resolution or origin)."""


@dataclass
class GridMap:
    """An occupancy grid with its (lazily computed, cached) distance field.

    Build it with :meth:`from_occupancy`, which checks the input. ``frame_id`` is the map's
    frame (poses in another frame are refused by the node).
    """

    occupancy: np.ndarray
    resolution: float
    origin: Tuple[float, float] = (0.0, 0.0)
    frame_id: str = 'map'
    occupied_threshold: int = OCCUPIED_THRESHOLD
    unknown_is_occupied: bool = True
    _cache: Dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_occupancy(cls, occupancy, resolution: float, origin=(0.0, 0.0),
                       frame_id: str = 'map', occupied_threshold: int = OCCUPIED_THRESHOLD,
                       unknown_is_occupied: bool = True) -> 'GridMap':
        """Check and wrap an ``(H, W)`` occupancy array; raise :class:`MapError` if unusable."""
        occ = np.asarray(occupancy)
        if occ.ndim != 2:
            raise MapError(f'occupancy must be 2-D (H, W), got shape {occ.shape}')
        if occ.size == 0:
            raise MapError(f'empty map ({occ.shape[1]} x {occ.shape[0]} cells)')
        if not (isinstance(resolution, (int, float)) and math.isfinite(resolution)
                and resolution > 0):
            raise MapError(f'map resolution must be a finite number > 0, got {resolution!r}')
        ox, oy = (float(v) for v in origin)
        if not (math.isfinite(ox) and math.isfinite(oy)):
            raise MapError(f'map origin must be finite, got {origin!r}')
        if not 0 < occupied_threshold <= 100:
            raise MapError(f'occupied_threshold must be in 1..100, got {occupied_threshold}')
        return cls(occ.astype(np.int16, copy=False), float(resolution), (ox, oy), frame_id,
                   int(occupied_threshold), bool(unknown_is_occupied))

    # ------------------------------------------------------------------ geometry

    @property
    def shape(self) -> Tuple[int, int]:
        """``(H, W)`` in cells."""
        return self.occupancy.shape

    @property
    def extent(self) -> Tuple[float, float]:
        """Width and height of the map, metres."""
        h, w = self.shape
        return w * self.resolution, h * self.resolution

    def to_local(self, xy) -> np.ndarray:
        """Map-frame metres -> metres from the map origin."""
        return np.asarray(xy, dtype=np.float64) - np.asarray(self.origin)

    def to_world(self, local) -> np.ndarray:
        """Metres from the map origin -> map-frame metres."""
        return np.asarray(local, dtype=np.float64) + np.asarray(self.origin)

    def contains(self, xy) -> bool:
        """Whether a map-frame point lies on the map."""
        lx, ly = self.to_local(xy)
        w, h = self.extent
        return bool(0.0 <= lx <= w and 0.0 <= ly <= h)

    def cell_of(self, xy) -> Tuple[int, int]:
        """Return the ``(row, col)`` of a map-frame point (clipped to the map)."""
        lx, ly = self.to_local(xy)
        h, w = self.shape
        return (int(min(max(math.floor(ly / self.resolution), 0), h - 1)),
                int(min(max(math.floor(lx / self.resolution), 0), w - 1)))

    def center_of(self, rc) -> np.ndarray:
        """Return the map-frame centre of cell ``(row, col)`` (or arrays of them)."""
        rc = np.asarray(rc, dtype=np.float64)
        return self.to_world(np.stack([(rc[..., 1] + 0.5) * self.resolution,
                                       (rc[..., 0] + 0.5) * self.resolution], axis=-1))

    # --------------------------------------------------------------- the fields

    @property
    def blocked(self) -> np.ndarray:
        """``(H, W)`` bool: obstacle cells (occupied, or unknown when that counts)."""
        if 'blocked' not in self._cache:
            occ = self.occupancy
            b = occ >= self.occupied_threshold
            if self.unknown_is_occupied:
                b |= occ < 0
            self._cache['blocked'] = b
        return self._cache['blocked']

    @property
    def sdf(self) -> np.ndarray:
        """``(H + 2, W + 2)`` float64 signed distance, metres, padded with an obstacle ring."""
        if 'sdf' not in self._cache:
            from scipy import ndimage
            b = np.pad(self.blocked, 1, constant_values=True)
            if b.all():  # no free cell: everything is inside an obstacle
                sdf = np.full(b.shape, -0.5)
            else:
                out = ndimage.distance_transform_edt(~b)
                inside = ndimage.distance_transform_edt(b)
                sdf = np.where(b, -(inside - 0.5), out - 0.5)
            self._cache['sdf'] = sdf * self.resolution
        return self._cache['sdf']

    def cspace_free(self, clearance: float) -> np.ndarray:
        """``(H, W)`` bool: cells whose centre has at least ``clearance`` (configuration space)."""
        key = f'cspace:{clearance!r}'
        if key not in self._cache:
            self._cache[key] = self.sdf[1:-1, 1:-1] >= clearance
        return self._cache[key]

    def distance(self, xy) -> np.ndarray:
        """Bilinear signed distance (metres) at map-frame points ``(..., 2)``."""
        return self.distance_and_gradient(xy)[0]

    def distance_and_gradient(self, xy) -> Tuple[np.ndarray, np.ndarray]:
        """Bilinear signed distance and its gradient (per metre) at map-frame points."""
        q = self.to_local(xy)
        sdf = self.sdf
        hp, wp = sdf.shape
        fx = q[..., 0] / self.resolution + 0.5  # padded index space (cell centres at i + 0.5)
        fy = q[..., 1] / self.resolution + 0.5
        x0 = np.clip(np.floor(fx), 0, wp - 2).astype(np.int64)
        y0 = np.clip(np.floor(fy), 0, hp - 2).astype(np.int64)
        wx = np.clip(fx - x0, 0.0, 1.0)
        wy = np.clip(fy - y0, 0.0, 1.0)
        v00, v01 = sdf[y0, x0], sdf[y0, x0 + 1]
        v10, v11 = sdf[y0 + 1, x0], sdf[y0 + 1, x0 + 1]
        val = (1 - wy) * ((1 - wx) * v00 + wx * v01) + wy * ((1 - wx) * v10 + wx * v11)
        gx = ((1 - wy) * (v01 - v00) + wy * (v11 - v10)) / self.resolution
        gy = ((1 - wx) * (v10 - v00) + wx * (v11 - v01)) / self.resolution
        return val, np.stack([gx, gy], axis=-1)


# ---------------------------------------------------------------------------- metrics

@dataclass
class PathLimits:
    """The constraints a path must meet (map-frame metres)."""

    clearance: float = 0.1
    max_curvature: float = 4.0
    max_segment: float = 0.2


def densify(points: np.ndarray, step: float) -> np.ndarray:
    """Return the polyline ``points`` sampled at most ``step`` apart (vertices included).

    Every segment gets the same number of samples, enough for the longest one.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return points.copy()
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    k = max(1, int(math.ceil(float(seg.max()) / step)))
    t = (np.arange(k) / k)[None, :, None]
    inner = points[:-1, None, :] + t * (points[1:] - points[:-1])[:, None, :]
    return np.concatenate([inner.reshape(-1, 2), points[-1:]], axis=0)


def curvatures(points: np.ndarray) -> np.ndarray:
    """Return the curvature (1/m) at each interior waypoint: turning angle / mean segment."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return np.zeros(0)
    d = np.diff(points, axis=0)
    seg = np.linalg.norm(d, axis=1)
    a, b = d[:-1], d[1:]
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    dot = (a * b).sum(axis=1)
    theta = np.abs(np.arctan2(cross, dot))
    mean_seg = 0.5 * (seg[:-1] + seg[1:])
    with np.errstate(divide='ignore', invalid='ignore'):
        k = np.where(mean_seg > 1e-12, theta / np.maximum(mean_seg, 1e-12), 0.0)
    return k


def path_metrics(grid: GridMap, points, limits: PathLimits, start=None, goal=None) -> dict:
    """Measure a map-frame polyline against ``limits``: the figures and ``feasible``.

    ``start`` / ``goal`` (map-frame points): when given, the path's ends must be them (1 mm).
    Returns ``length``, ``min_clearance``, ``max_curvature``, ``mean_curvature``,
    ``max_segment``, ``in_bounds``, ``feasible`` and ``violations`` (a list of words).
    """
    pts = np.asarray(points, dtype=np.float64)
    out = {'n_points': int(len(pts))}
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2 or not np.isfinite(pts).all():
        out.update(length=math.nan, min_clearance=-math.inf, max_curvature=math.inf,
                   mean_curvature=math.inf, max_segment=math.inf, in_bounds=False,
                   feasible=False, violations=['malformed'])
        return out
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    dense = densify(pts, grid.resolution / SAMPLES_PER_CELL)
    clear = float(grid.distance(dense).min())
    k = curvatures(pts)
    lx, ly = grid.to_local(pts).T
    w, h = grid.extent
    eps = 1e-9
    in_bounds = bool((lx >= -eps).all() and (lx <= w + eps).all() and (ly >= -eps).all()
                     and (ly <= h + eps).all())
    violations = []
    if start is not None and np.linalg.norm(pts[0] - np.asarray(start, float)) > 1e-3:
        violations.append('start')
    if goal is not None and np.linalg.norm(pts[-1] - np.asarray(goal, float)) > 1e-3:
        violations.append('goal')
    if not in_bounds:
        violations.append('bounds')
    if clear < limits.clearance:
        violations.append('clearance')
    kmax = float(k.max()) if len(k) else 0.0
    if kmax > limits.max_curvature * (1 + CURVATURE_TOL):
        violations.append('curvature')
    smax = float(seg.max())
    if smax > limits.max_segment * (1 + 1e-6):
        violations.append('segment')
    out.update(length=float(seg.sum()), min_clearance=clear, max_curvature=kmax,
               mean_curvature=float(k.mean()) if len(k) else 0.0, max_segment=smax,
               in_bounds=in_bounds, feasible=not violations, violations=violations)
    return out


def nearest_free(free: np.ndarray, rc: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """Return the free cell nearest to ``rc`` (``rc`` itself when free), None if none is."""
    if free[rc]:
        return rc
    idx = np.argwhere(free)
    if len(idx) == 0:
        return None
    j = int(np.argmin(((idx - np.asarray(rc)) ** 2).sum(axis=1)))
    return int(idx[j, 0]), int(idx[j, 1])
