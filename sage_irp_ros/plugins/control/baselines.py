"""Baselines of the control benchmark (no ROS): A* + a standard smoother, and IPOPT.

- :func:`astar_path`: A* (:func:`search.astar`) on the configuration space (cells with the
  required clearance), as a map-frame polyline from the start to the goal.
- :func:`simple_smoother`: Nav2's ``SimpleSmoother`` algorithm (nav2_smoother), re-implemented:
  every interior point moves by ``w_data * (original - p) + w_smooth * (prev + next - 2 p)``
  until the total change is under ``tolerance`` or ``max_its``; a point whose move would bring
  it closer to an obstacle than the clearance is put back; the smoothing is repeated on its own
  output ``refinement_num`` times. Nav2's defaults (0.2, 0.3, 1e-10, 1000, 2). The update is
  vectorised (all points at once, a Jacobi sweep) where Nav2 sweeps point by point.
- :func:`ipopt_path`: a general nonlinear optimiser on the plugin's own cost: the same energy
  (squared length plus the squared-hinge obstacle term over the same distance field, here
  sampled at the waypoints and segment midpoints through a B-spline of the field), the same
  constraints as hard constraints (fixed ends, on the map, segment length, curvature as
  ``|p_(i+1) - 2 p_i + p_(i-1)| <= max_curvature * |p_i - p_(i-1)| * |p_(i+1) - p_i|``), solved
  by IPOPT through casadi (L-BFGS Hessian) from the straight line between start and goal.
  It gets as many waypoints as the plugin would use on the A* path's length (generous: it
  learns the length from A*).
"""

from __future__ import annotations

import math
import time
from typing import Optional, Tuple

import numpy as np

from sage_irp_ros.plugins.control.grid import GridMap, PathLimits
from sage_irp_ros.plugins.control.search import astar


def astar_path(grid: GridMap, start, goal, clearance: float) -> Optional[np.ndarray]:
    """Run A* over the configuration space; return the polyline (start, cells, goal) or None."""
    cells = astar(grid.cspace_free(clearance), grid.cell_of(start), grid.cell_of(goal))
    if cells is None:
        return None
    pts = grid.center_of(np.asarray(cells))
    pts[0], pts[-1] = start, goal
    return pts


def simple_smoother(path: np.ndarray, grid: GridMap, clearance: float, w_data: float = 0.2,
                    w_smooth: float = 0.3, tolerance: float = 1e-10, max_its: int = 1000,
                    refinement_num: int = 2) -> np.ndarray:
    """Nav2's SimpleSmoother on a map-frame polyline (see the module's docstring)."""
    data = np.asarray(path, dtype=np.float64).copy()
    if len(data) < 3:
        return data
    out = data
    for _ in range(1 + refinement_num):
        orig = out.copy()
        new = out.copy()
        for _ in range(max_its):
            upd = new[1:-1] + w_data * (orig[1:-1] - new[1:-1]) \
                + w_smooth * (new[:-2] + new[2:] - 2.0 * new[1:-1])
            ok = grid.distance(upd) >= clearance
            moved = np.where(ok[:, None], upd, new[1:-1])
            change = float(np.abs(moved - new[1:-1]).sum())
            new[1:-1] = moved
            if change < tolerance:
                break
        out = new
    return out


def ipopt_path(grid: GridMap, start, goal, limits: PathLimits, n_points: int,
               margin: float = 0.05, w_obs: float = 2000.0, max_cpu_s: float = 5.0,
               max_iter: int = 500) -> Tuple[np.ndarray, dict]:
    """IPOPT on the plugin's cost from the straight line; returns (path, info).

    ``info``: ``solver_status`` (IPOPT's return status), ``success`` (IPOPT's own),
    ``build_ms`` and ``solve_ms``.
    """
    import casadi as ca
    t0 = time.perf_counter()
    sdf = grid.sdf
    res = grid.resolution
    hp, wp = sdf.shape
    # Padded cell centres in map-local metres: (i - 0.5) * res.
    xs = (np.arange(wp) - 0.5) * res
    ys = (np.arange(hp) - 0.5) * res
    lut = ca.interpolant('sdf', 'bspline', [xs, ys], sdf.T.ravel(order='F'))
    n = max(3, int(n_points))
    s0 = grid.to_local(start)
    g0 = grid.to_local(goal)
    opti = ca.Opti()
    X = opti.variable(n, 2)
    opti.subject_to(X[0, :] == ca.DM(s0).T)
    opti.subject_to(X[n - 1, :] == ca.DM(g0).T)
    w, h = grid.extent
    opti.subject_to(opti.bounded(0.0, X[:, 0], w))
    opti.subject_to(opti.bounded(0.0, X[:, 1], h))
    d = X[1:, :] - X[:-1, :]
    seg2 = ca.sum2(d * d)
    opti.subject_to(seg2 <= limits.max_segment ** 2)
    dd = X[2:, :] - 2 * X[1:-1, :] + X[:-2, :]
    opti.subject_to(ca.sum2(dd * dd) <= limits.max_curvature ** 2 * seg2[:-1] * seg2[1:])
    mid = 0.5 * (X[1:, :] + X[:-1, :])
    pts = ca.vertcat(X, mid)
    dist = lut(pts.T)
    pen = ca.fmax(0, limits.clearance + margin - dist)
    spacing = 0.5 * limits.max_segment
    e_len = (n - 1) * ca.sumsqr(d)
    e_obs = w_obs * (n - 1) * (spacing / 2) * ca.sumsqr(pen)
    opti.minimize(e_len + e_obs)
    t = np.linspace(0, 1, n)[:, None]
    opti.set_initial(X, s0[None, :] + t * (g0 - s0)[None, :])
    opti.solver('ipopt', {'print_time': False},
                {'print_level': 0, 'max_cpu_time': max_cpu_s, 'max_iter': max_iter,
                 'hessian_approximation': 'limited-memory', 'sb': 'yes'})
    t1 = time.perf_counter()
    try:
        sol = opti.solve()
        x = np.asarray(sol.value(X))
        stats = sol.stats()
    except RuntimeError:
        x = np.asarray(opti.debug.value(X))
        stats = opti.stats()
    t2 = time.perf_counter()
    info = {'solver_status': str(stats.get('return_status', '?')),
            'success': bool(stats.get('success', False)),
            'build_ms': (t1 - t0) * 1e3, 'solve_ms': (t2 - t1) * 1e3,
            'iterations': int(stats.get('iter_count', -1))}
    if not np.isfinite(x).all():
        x = s0[None, :] + t * (g0 - s0)[None, :]
    return grid.to_world(x), info


def n_points_for(length: float, spacing: float) -> int:
    """Waypoints the plugin uses on a path of ``length`` metres."""
    return max(2, math.ceil(length / spacing - 1e-9)) + 1
