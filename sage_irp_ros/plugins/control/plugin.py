"""``ControlIRP``: a path from a start to a goal on an occupancy grid, refined until feasible.

Trajectory optimisation in the spirit of CHOMP (Ratliff et al. 2009) and TrajOpt: a polyline of
waypoints is moved down the gradient of a smoothness-plus-obstacle energy over the map's
distance field, with a covariant (smoothness-metric) preconditioner, while ``project`` enforces
the hard constraints after every step. The refinement is seeded from a coarse grid search, as
Nav2 pairs a global grid planner with a smoother (``initial_path``). No ROS here; the node is
``node.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from sage_irp_ros.core.plugin import (
    HALT_FEASIBLE,
    HaltConfig,
    IRPPlugin,
    IRPState,
    Schedule,
    recalled_hint,
)
from sage_irp_ros.plugins.control.grid import (
    SAMPLES_PER_CELL,
    GridMap,
    PathLimits,
    curvatures,
    path_metrics,
)
from sage_irp_ros.plugins.control.search import coarse_free, coarse_min, grid_search

# Outcomes (the ``status`` of sage_irp_ros/msg/PathStatus).
STATUS_FEASIBLE = 'feasible'
STATUS_INFEASIBLE = 'infeasible'
STATUS_UNREACHABLE = 'unreachable'
STATUS_GOAL_IN_OBSTACLE = 'goal_in_obstacle'
STATUS_START_IN_OBSTACLE = 'start_in_obstacle'
STATUS_BAD_INPUT = 'bad_input'
#: Distance beyond the clearance that the seed search prefers to keep, m.
PREFERRED_EXTRA = 0.2


class PlanningError(ValueError):
    """The problem has no answer to refine: ``status`` says why (a ``STATUS_*`` value).

    A ``ValueError``, so the node host counts it as a refused input; the node also publishes it
    as a ``PathStatus``.
    """

    def __init__(self, status: str, message: str):
        super().__init__(f'{status}: {message}')
        self.status = status
        self.message = message


@dataclass
class ControlProblem:
    """One planning request: the map, the start and the goal (map-frame metres, radians).

    ``init_path`` (map frame, ``(N, 2)``) is the seed of the refinement; when None,
    :meth:`ControlIRP.init_state` runs :meth:`ControlIRP.initial_path` itself (and its time
    counts in the run's). The node computes it beforehand (:meth:`ControlIRP.prepare`) so that
    an unreachable goal is answered before a run starts.
    """

    grid: GridMap
    start: Tuple[float, float]
    goal: Tuple[float, float]
    start_yaw: Optional[float] = None
    goal_yaw: Optional[float] = None
    init_path: Optional[np.ndarray] = None


@dataclass
class PlanResult:
    """The answer of one run: the best path found and what it is worth.

    ``path``: ``(N, 2)`` map-frame waypoints from the start to the goal; ``yaws``: heading at
    each waypoint (along the path; the goal's own yaw at the end when it had one);
    ``feasible``: whether it meets every constraint; ``metrics``: :func:`grid.path_metrics`;
    ``first_feasible_step``: the first step whose path was feasible (None: none was);
    ``iterates``: the accepted waypoints of every step (map frame) when kept.
    """

    path: np.ndarray
    yaws: np.ndarray
    feasible: bool
    status: str
    metrics: Dict[str, Any]
    steps: int
    first_feasible_step: Optional[int] = None
    iterates: List[np.ndarray] = field(default_factory=list)


def _solve_tridiagonal(diag: torch.Tensor, off: float, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``M x = rhs`` for the symmetric tridiagonal ``M`` (``diag``, constant ``off``).

    LAPACK's banded solver on the CPU (microseconds), a dense solve on other devices.
    """
    n = diag.shape[0]
    if diag.device.type == 'cpu':
        from scipy.linalg import solve_banded
        ab = np.empty((3, n))
        ab[0, :] = off
        ab[2, :] = off
        ab[1, :] = diag.numpy()
        x = solve_banded((1, 1), ab, rhs.numpy(), check_finite=False)
        return torch.from_numpy(np.ascontiguousarray(x)).to(rhs.dtype)
    m = torch.diag(diag)
    if n > 1:
        idx = torch.arange(n - 1, device=diag.device)
        m[idx, idx + 1] = off
        m[idx + 1, idx] = off
    return torch.linalg.solve(m, rhs)


class ControlIRP(IRPPlugin):
    """Refine a path on an occupancy grid until it is feasible and no longer improving.

    Four invariants:

    - **state space**: the payload is the waypoints ``P``, ``(N, 2)`` float64 torch tensor on
      the plugin's device, in metres from the map origin; ``P[0]`` is the start and ``P[-1]``
      the goal. ``N`` follows the length (about one waypoint per ``spacing`` metres). A step
      moves the interior waypoints by the covariant gradient step of CHOMP,
      ``-alpha * K^-1 grad E / (2 (N - 1))`` (``K``: the second-difference matrix, so
      ``alpha = 1`` is the exact minimiser of the length term alone), with ``alpha`` adapted by
      backtracking (a step is kept only when the energy does not rise), then projects.
    - **noise model**: none is sampled; the initial path comes from a coarse grid search
      (``initial_path``): a shortest 8-connected path through blocks of ``f x f`` cells that all
      have the required clearance (``f`` makes the coarse grid about ``coarse_cells`` wide),
      the full grid when the coarse one has no path. Its error is the grid's: corners, steps
      of 45 degrees and hugging the clearance boundary, which refinement removes.
    - **energy** (m^2, lower is better): ``E = (N - 1) * sum_i |p_(i+1) - p_i|^2`` (the
      squared length for evenly spaced waypoints, never less) ``+ w_obs * (N - 1) * h *
      sum_k max(0, d_t - d(q_k))^2`` over samples ``q_k`` every quarter cell along the
      polyline (``h``: the nominal sample spacing), ``d`` the map's signed distance field
      (:mod:`grid`) and ``d_t = clearance + margin`` the distance it aims for. Constraints are
      not in the energy: ``project`` keeps the ends at the start and the goal, the waypoints on
      the map, the segments evenly spaced and no longer than ``max_segment``, and the
      curvature (turning angle per metre) under ``max_curvature`` (moving a waypoint towards
      the midpoint of its neighbours). Halting: ``feasible`` once the path meets every
      constraint (:func:`grid.path_metrics`) and the energy fell by less than ``flat_tol`` of
      itself in the last step; the core's slope rule and ``max_steps`` stop the runs that do
      not get there. The result is the best path of the run: the feasible one of least
      energy, else the one with the most clearance, with a flag saying whether it is feasible.
    - **contribution (coherence)**: a ``nav_msgs/Path`` in the map frame that a controller can
      follow, with its clearance, length and curvature (``PathStatus``), and markers of the path
      and of its iterates for rviz. Open maps halt after a few steps; mazes spend more.

    The instance holds configuration only: concurrent runs keep everything in their states.
    The start and goal headings are not constrained (the path's first and last segments set
    them), as for Nav2's grid planners.
    """

    kind = 'control'
    version = 'control-irp-1'
    #: A remembered path is considered when its key is at least this similar (memory,
    #: ``warm_start``): the same map and both ends within about 0.2 m (``memory_key``).
    recall_similarity = 0.9
    #: Length scale (m) of the ends in the memory key: ends this far apart lower the
    #: similarity of the ends' part to about exp(-1/2).
    KEY_LENGTH_M = 0.25
    KEY_FEATURES = 64

    def __init__(self, clearance: float = 0.1, max_curvature: float = 4.0,
                 max_segment: float = 0.2, spacing: Optional[float] = None,
                 margin: float = 0.05, w_obs: float = 2000.0, flat_tol: float = 5e-3,
                 coarse_cells: int = 100, curvature_passes: int = 50, device: str = 'cpu',
                 keep_iterates: bool = False):
        """Set the limits (metres, 1/m), the energy's weights and the device.

        ``spacing`` (default ``max_segment / 2``): nominal distance between waypoints.
        ``margin``: clearance aimed for beyond the required one. ``w_obs``: weight of the
        obstacle term. ``flat_tol``: relative energy drop per step under which a feasible
        path halts. ``keep_iterates``: record every step's waypoints (for markers and plots).
        """
        for name, v in (('clearance', clearance), ('max_curvature', max_curvature),
                        ('max_segment', max_segment), ('margin', margin), ('w_obs', w_obs),
                        ('flat_tol', flat_tol)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f'{name} must be a finite number >= 0, got {v!r}')
        if max_segment <= 0 or max_curvature <= 0:
            raise ValueError('max_segment and max_curvature must be > 0')
        self.limits = PathLimits(float(clearance), float(max_curvature), float(max_segment))
        self.spacing = float(spacing) if spacing else 0.5 * self.limits.max_segment
        if not 0 < self.spacing <= self.limits.max_segment:
            raise ValueError(f'spacing must be in (0, max_segment], got {self.spacing}')
        self.margin = float(margin)
        self.w_obs = float(w_obs)
        self.flat_tol = float(flat_tol)
        self.coarse_cells = int(coarse_cells)
        self.curvature_passes = int(curvature_passes)
        self.device = torch.device(device)
        self.dtype = torch.float64 if self.device.type == 'cpu' else torch.float32
        self.keep_iterates = bool(keep_iterates)

    def halt_config(self) -> HaltConfig:
        """Slope rule 1e-4 of E_0 over 3 steps (runs stuck infeasible), at most 100 steps."""
        return HaltConfig(eps=1e-4, K=3, max_steps=100)

    # --------------------------------------------------------------------- problem

    def check(self, problem: ControlProblem) -> None:
        """Raise :class:`PlanningError` when the start or goal is unusable (cheap checks)."""
        grid = problem.grid
        for name, p in (('start', problem.start), ('goal', problem.goal)):
            p = np.asarray(p, dtype=np.float64)
            if p.shape != (2,) or not np.isfinite(p).all():
                raise PlanningError(STATUS_BAD_INPUT, f'{name} position is not finite: {p}')
            if not grid.contains(p):
                w, h = grid.extent
                raise PlanningError(STATUS_BAD_INPUT, (
                    f'{name} ({p[0]:.3f}, {p[1]:.3f}) is off the map (x in [{grid.origin[0]:.3f}'
                    f', {grid.origin[0] + w:.3f}], y in [{grid.origin[1]:.3f}, '
                    f'{grid.origin[1] + h:.3f}])'))
        for name, p, status in (('start', problem.start, STATUS_START_IN_OBSTACLE),
                                ('goal', problem.goal, STATUS_GOAL_IN_OBSTACLE)):
            d = float(grid.distance(np.asarray(p, dtype=np.float64)))
            if d < self.limits.clearance:
                where = 'inside an obstacle' if d < 0 else 'closer to an obstacle than'
                raise PlanningError(status, (
                    f'{name} ({p[0]:.3f}, {p[1]:.3f}) is {where} the required clearance '
                    f'{self.limits.clearance:.3f} m (distance {d:.3f} m)'))

    def initial_path(self, problem: ControlProblem) -> Optional[np.ndarray]:
        """Return the seed path (map frame, ``(K, 2)``), or None when the goal is unreachable.

        A least-cost path over the configuration space (cells with the required clearance):
        first on the coarse grid of ``f x f`` blocks, then, when it has none, on the full grid.
        A cell costs ``1 + 4 * max(0, (d_pref - d) / (d_pref - clearance))`` per length, ``d``
        its distance to obstacles and ``d_pref = clearance + 0.2 m`` (Nav2's inflation idea):
        the seed keeps to the middle of corridors, so its turns around wall ends are wide
        enough for the curvature limit.
        """
        grid = problem.grid
        free = grid.cspace_free(self.limits.clearance)
        d = grid.sdf[1:-1, 1:-1]
        d_pref = self.limits.clearance + PREFERRED_EXTRA
        cell_cost = 1.0 + 4.0 * np.clip((d_pref - d) / (d_pref - self.limits.clearance),
                                        0.0, 1.0)
        s_rc, g_rc = grid.cell_of(problem.start), grid.cell_of(problem.goal)
        h, w = free.shape
        f = max(1, math.ceil(max(h, w) / max(self.coarse_cells, 1)))
        pts = None
        if f > 1:
            cf = coarse_free(free, f).copy()
            cs, cg = (s_rc[0] // f, s_rc[1] // f), (g_rc[0] // f, g_rc[1] // f)
            cf[cs] = cf[cg] = True
            cells = grid_search(cf, cs, cg, 1.0 + 4.0 * np.clip(
                (d_pref - coarse_min(d, f)) / (d_pref - self.limits.clearance), 0.0, 1.0))
            if cells is not None:
                rc = np.asarray(cells, dtype=np.float64)
                centres = (rc + 0.5) * f
                centres[:, 0] = np.minimum(centres[:, 0], h - 0.5)
                centres[:, 1] = np.minimum(centres[:, 1], w - 0.5)
                pts = grid.center_of(centres - 0.5)
        if pts is None:
            fine = free.copy()
            fine[s_rc] = fine[g_rc] = True
            cells = grid_search(fine, s_rc, g_rc, cell_cost)
            if cells is None:
                return None
            pts = grid.center_of(np.asarray(cells))
        mid = pts[1:-1] if len(pts) > 2 else pts[:0]
        return np.concatenate([np.asarray([problem.start], float), mid,
                               np.asarray([problem.goal], float)])

    def prepare(self, problem: ControlProblem) -> ControlProblem:
        """Check the problem and attach its seed path; :class:`PlanningError` when none."""
        self.check(problem)
        if problem.init_path is None:
            path = self.initial_path(problem)
            if path is None:
                raise PlanningError(STATUS_UNREACHABLE, (
                    f'no path from ({problem.start[0]:.3f}, {problem.start[1]:.3f}) to '
                    f'({problem.goal[0]:.3f}, {problem.goal[1]:.3f}) keeps the clearance '
                    f'{self.limits.clearance:.3f} m on this map'))
            problem.init_path = path
        return problem

    # ---------------------------------------------------------------- memory

    def memory_key(self, problem: ControlProblem) -> np.ndarray:
        """Return the problem's key for memory (1-D float32, unit norm): the map and the ends.

        Half of it describes the map (its obstacle share in 8 x 8 blocks, centred and
        normalised, so another map, or the same map with new walls, points elsewhere), half
        the start and goal (random Fourier features of the four coordinates, length scale
        ``KEY_LENGTH_M``: their dot product is a Gaussian kernel of the ends' distance). The
        cosine of two keys is the mean of the two parts' similarities.
        """
        cache = problem.grid._cache
        desc = cache.get('memory_desc')
        if desc is None:  # once per map (the node keeps its latched map)
            b = problem.grid.blocked
            h, w = b.shape
            if h < 8 or w < 8:
                b = np.pad(b, ((0, max(8 - h, 0)), (0, max(8 - w, 0))), constant_values=True)
                h, w = b.shape
            hb, wb = h // 8, w // 8  # 8 x 8 blocks (a remainder under 8 cells left out)
            desc = b[:8 * hb, :8 * wb].reshape(8, hb, 8, wb).mean(axis=(1, 3),
                                                                  dtype=np.float32).ravel()
            desc -= desc.mean()
            n = float(np.linalg.norm(desc))
            desc = desc / n if n > 1e-9 else np.full_like(desc, 1.0 / math.sqrt(desc.size))
            cache['memory_desc'] = desc
        rng = np.random.default_rng(20261130)  # fixed: the same features in every process
        W = rng.standard_normal((self.KEY_FEATURES, 4)) / self.KEY_LENGTH_M
        phase = rng.uniform(0, 2 * math.pi, self.KEY_FEATURES)
        ends = np.asarray([*problem.start, *problem.goal], np.float64)
        rff = np.cos(W @ ends + phase) * math.sqrt(2.0 / self.KEY_FEATURES)
        rff = rff / max(float(np.linalg.norm(rff)), 1e-9)
        key = np.concatenate([desc, rff.astype(np.float32)]) / math.sqrt(2.0)
        return key.astype(np.float32)

    def warm_start(self, problem: ControlProblem, record: Any) -> Tuple[Optional[np.ndarray],
                                                                          dict]:
        """Return a remembered path moved to this problem's ends, when it fits; else None.

        A record (memory's ``nearest``) is used when (1) its key is at least
        ``recall_similarity`` similar, (2) its latent is a path ``(K, 2)``, and (3) that path,
        its ends moved to this start and goal (each waypoint by the two ends' displacements,
        weighted by where it lies along the path), keeps at least half the required clearance
        at every waypoint on this map: a remembered path through a new obstacle is ignored.
        The refinement then starts from it instead of a grid search's seed (which is not run
        when the problem has none yet). Returns the path (map frame) or None and the
        ``warm_start`` record for telemetry.
        """
        hint, info = recalled_hint(record, self.recall_similarity)
        if hint is None:
            return None, info
        hint = np.asarray(hint, np.float64)
        if hint.ndim != 2 or hint.shape[1] != 2 or len(hint) < 2 or not np.isfinite(hint).all():
            info['why'] = 'no path'
            return None, info
        seg = np.linalg.norm(np.diff(hint, axis=0), axis=1)
        t = np.concatenate([[0.0], np.cumsum(seg)]) / max(float(seg.sum()), 1e-9)
        ds = np.asarray(problem.start, np.float64) - hint[0]
        dg = np.asarray(problem.goal, np.float64) - hint[-1]
        moved = hint + (1.0 - t)[:, None] * ds + t[:, None] * dg
        least = float(np.min(problem.grid.distance(moved)))
        info['min_clearance'] = least
        if not least >= 0.5 * self.limits.clearance:
            info['why'] = 'crosses what is an obstacle now'
            return None, info
        info['used'] = True
        return moved, info

    def experience(self, state: IRPState, output: Any) -> Optional[dict]:
        """Return what memory keeps of a run: the key, the final path, a summary.

        Only feasible paths of runs that started from the grid search's seed (a path refined
        from memory is not stored again, so an error cannot compound from memory to memory).
        """
        if output is None or not getattr(output, 'feasible', False):
            return None
        m = state.meta
        if m.get('warm_start', {}).get('used'):
            return None
        problem = m['problem']
        key = m.get('key')
        if key is None:
            key = self.memory_key(problem)
        return {'key': key, 'latent': np.asarray(output.path, np.float32),
                'summary': {'start': [float(v) for v in problem.start],
                            'goal': [float(v) for v in problem.goal],
                            'length': float(output.metrics.get('length', 0.0)),
                            'feasible': True}}

    # ---------------------------------------------------------------- the contract

    def init_state(self, x0: ControlProblem, ctx: Optional[Mapping[str, Any]] = None
                   ) -> IRPState:
        """Check the problem, seed the path, set up the run's fields on the device.

        With memory (``ctx['recall']``), a remembered path of a near problem on the same map
        may replace the seed (:meth:`warm_start`); ``meta['warm_start']`` says whether.
        """
        if not isinstance(x0, ControlProblem):
            raise TypeError(f'expected a ControlProblem, got {type(x0).__name__}')
        problem = ControlProblem(x0.grid, x0.start, x0.goal, x0.start_yaw, x0.goal_yaw,
                                 x0.init_path)
        recall = (ctx or {}).get('recall')
        mkey = warm = None
        if recall is not None:
            self.check(problem)
            mkey = self.memory_key(problem)
            hint, warm = self.warm_start(problem, recall(mkey))
            if hint is not None:
                problem.init_path = hint  # no grid search when it has not run yet
        problem = self.prepare(problem)
        grid = problem.grid
        key = f'torch:{self.device}:{self.dtype}'
        if key not in grid._cache:
            sdf = torch.as_tensor(grid.sdf, dtype=self.dtype, device=self.device)
            grid._cache[key] = sdf.contiguous()
        keep = self.keep_iterates if ctx is None else bool(ctx.get('keep_iterates',
                                                                   self.keep_iterates))
        ox, oy = grid.origin
        init = torch.as_tensor(grid.to_local(problem.init_path), dtype=self.dtype,
                               device=self.device)
        w, h = grid.extent
        meta = {
            'problem': problem, 'sdf': grid._cache[key], 'res': grid.resolution,
            'bounds': (w, h), 'start': init[0].clone(), 'goal': init[-1].clone(),
            'lam': 0.5, 'S': max(1, math.ceil(self.spacing * SAMPLES_PER_CELL
                                                / grid.resolution)),
            'iterates': [] if keep else None, 'best': None, 'first_feasible': None,
            'key': mkey,
        }
        if warm is not None:
            meta['warm_start'] = warm
        payload = self._project_points(init, meta, resample='force')
        return IRPState(payload=payload, meta=meta)

    def project(self, state: IRPState) -> IRPState:
        """Enforce the constraints (a no-op on what ``step`` already projected)."""
        if state.meta.get('projected_payload') is state.payload:
            return state
        p = self._project_points(state.payload, state.meta, resample=True)
        state.payload = p
        state.meta = dict(state.meta, projected_payload=p, eval=None)
        return state

    def energy(self, state: IRPState) -> float:
        """Return ``E`` (m^2) of the payload; also measures it against the limits."""
        ev = state.meta.get('eval')
        if ev is None or ev[0] is not state.payload:
            ev = (state.payload, *self._eval(state.payload, state.meta))
            state.meta['eval'] = ev
        e = ev[1]
        if state.meta.get('metrics_of') is not state.payload:
            m = self._metrics(state.payload, state.meta)
            state.meta['metrics'], state.meta['metrics_of'] = m, state.payload
            if m['feasible'] and state.meta.get('first_feasible') is None:
                state.meta['first_feasible'] = state.step_idx
            key = (not m['feasible'], e if m['feasible'] else -m['min_clearance'])
            best = state.meta.get('best')
            if best is None or key < best[0]:
                state.meta['best'] = (key, state.payload, m, state.step_idx)
            if state.meta.get('iterates') is not None:
                state.meta['iterates'].append(
                    state.meta['problem'].grid.to_world(state.payload.cpu().numpy()))
        return e

    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """Take one damped Gauss-Newton step (covariant, as CHOMP), projected.

        The step is kept only if the energy does not rise; else the damping grows 4x and the
        step is retried (6 tries; then the state stays as it was).
        """
        meta = state.meta
        p = state.payload
        n = p.shape[0] - 2
        ev = meta.get('eval')
        if ev is None or ev[0] is not p:
            ev = (p, *self._eval(p, meta))
        _, e, g, hess = ev
        if n <= 0:
            return state.evolve(p, projected_payload=p, eval=ev)
        lam = meta['lam']
        k = 2.0 * (n + 1)
        for _ in range(6):
            diag = k * (2.0 + lam) + hess[1:-1]
            direction = _solve_tridiagonal(diag, -k, g[1:-1])
            trial = p.clone()
            trial[1:-1] -= direction
            trial = self._project_points(trial, meta)
            ev_t = (trial, *self._eval(trial, meta))
            if ev_t[1] <= e:
                return state.evolve(trial, lam=max(lam * 0.3, 1e-4), projected_payload=trial,
                                    eval=ev_t, stalled=False)
            lam = min(lam * 4.0, 1e6)
        return state.evolve(p, lam=lam, projected_payload=p, eval=ev, stalled=True)

    def halt(self, state: IRPState, energies: list) -> Optional[str]:
        """``feasible``: every constraint met and the energy flat (last step < ``flat_tol``)."""
        m = state.meta.get('metrics')
        if m is None or not m['feasible'] or len(energies) < 2:
            return None
        if energies[-2] - energies[-1] <= self.flat_tol * abs(energies[-1]):
            return HALT_FEASIBLE
        return None

    def result(self, state: IRPState) -> PlanResult:
        """Return the run's best path (feasible, least energy; else most clearance)."""
        best = state.meta.get('best')
        if best is None:
            self.energy(state)
            best = state.meta['best']
        _, payload, metrics, _ = best
        problem: ControlProblem = state.meta['problem']
        path = problem.grid.to_world(payload.cpu().numpy())
        d = np.diff(path, axis=0)
        yaws = np.arctan2(d[:, 1], d[:, 0]) if len(d) else np.zeros(0)
        yaws = np.concatenate([yaws, yaws[-1:]]) if len(yaws) else np.zeros(len(path))
        if problem.goal_yaw is not None and math.isfinite(problem.goal_yaw):
            yaws[-1] = problem.goal_yaw
        return PlanResult(path=path, yaws=yaws, feasible=bool(metrics['feasible']),
                          status=STATUS_FEASIBLE if metrics['feasible'] else STATUS_INFEASIBLE,
                          metrics=metrics, steps=state.step_idx,
                          first_feasible_step=state.meta.get('first_feasible'),
                          iterates=list(state.meta.get('iterates') or []))

    # ------------------------------------------------------------------- internals

    def _metrics(self, p: torch.Tensor, meta) -> dict:
        problem: ControlProblem = meta['problem']
        return path_metrics(problem.grid, problem.grid.to_world(p.cpu().numpy()), self.limits,
                            problem.start, problem.goal)

    def _sample(self, q: torch.Tensor, meta) -> Tuple[torch.Tensor, torch.Tensor]:
        """Bilinear signed distance and its gradient at local points ``q`` (M, 2)."""
        sdf, res = meta['sdf'], meta['res']
        hp, wp = sdf.shape
        fx = q[:, 0] / res + 0.5
        fy = q[:, 1] / res + 0.5
        x0 = fx.floor().clamp(0, wp - 2)
        y0 = fy.floor().clamp(0, hp - 2)
        wx = (fx - x0).clamp(0.0, 1.0)
        wy = (fy - y0).clamp(0.0, 1.0)
        idx = (y0 * wp + x0).long()
        flat = sdf.view(-1)
        v00, v01 = flat[idx], flat[idx + 1]
        v10, v11 = flat[idx + wp], flat[idx + wp + 1]
        a = v00 + wx * (v01 - v00)
        b = v10 + wx * (v11 - v10)
        val = a + wy * (b - a)
        gx = ((1 - wy) * (v01 - v00) + wy * (v11 - v10)) / res
        gy = (b - a) / res
        return val, torch.stack([gx, gy], dim=1)

    def _eval(self, p: torch.Tensor, meta) -> Tuple[float, torch.Tensor, torch.Tensor]:
        """Return the energy, its gradient and the obstacle term's curvature at ``p``.

        The gradient is zero at the ends; the curvature (Gauss-Newton, ``(N,)``) is per waypoint.
        """
        n_seg = p.shape[0] - 1
        if n_seg < 1:
            return 0.0, torch.zeros_like(p), torch.zeros_like(p[:, 0])
        d = p[1:] - p[:-1]
        e_len = n_seg * (d * d).sum()
        grad = torch.zeros_like(p)
        grad[1:-1] = 2.0 * n_seg * (d[:-1] - d[1:])
        s = meta['S']
        t = torch.arange(s, dtype=p.dtype, device=p.device) / s
        q = (p[:-1, None, :] + t[None, :, None] * d[:, None, :]).reshape(-1, 2)
        val, gq = self._sample(q, meta)
        pen = (self.limits.clearance + self.margin - val).clamp(min=0.0)
        h = self.spacing / s
        w = self.w_obs * n_seg * h
        e_obs = w * (pen * pen).sum()
        gs = ((-2.0 * w * pen)[:, None] * gq).view(n_seg, s, 2)  # dE/dq
        grad[:-1] += ((1 - t)[None, :, None] * gs).sum(1)
        grad[1:] += (t[None, :, None] * gs).sum(1)
        grad[0] = 0.0
        grad[-1] = 0.0
        hs = (2.0 * w * (pen > 0).to(p.dtype) * (gq * gq).sum(1)).view(n_seg, s)
        hess = torch.zeros_like(p[:, 0])
        hess[:-1] += (((1 - t) ** 2)[None, :] * hs).sum(1)
        hess[1:] += ((t ** 2)[None, :] * hs).sum(1)
        return float(e_len + e_obs), grad, hess

    def _project_points(self, p: torch.Tensor, meta, resample=True) -> torch.Tensor:
        """Project: ends fixed, on the map, evenly spaced (<= max_segment), curvature limited."""
        p = p.clone()
        p[0], p[-1] = meta['start'], meta['goal']
        w, h = meta['bounds']
        p[:, 0].clamp_(0.0, w)
        p[:, 1].clamp_(0.0, h)
        if resample:
            p = self._resample(p, force=resample == 'force')
        if p.shape[0] >= 3:
            p = self._limit_curvature(p)
        return p

    def _resample(self, p: torch.Tensor, force: bool = False) -> torch.Tensor:
        """Evenly spaced along the polyline, about ``spacing`` apart (never over the limit).

        Unless ``force``, a path whose segments are all between a quarter of ``spacing`` and
        95 % of ``max_segment`` is kept as it is (resampling moves every waypoint a little,
        which would blur the energy's descent).
        """
        seg = (p[1:] - p[:-1]).norm(dim=1)
        if not force and p.shape[0] >= 2:
            lo, hi = float(seg.min()), float(seg.max())
            if hi <= 0.95 * self.limits.max_segment and lo >= 0.25 * self.spacing:
                return p
        length = float(seg.sum())
        if length <= 1e-12:
            return torch.stack([p[0], p[-1]])
        n_seg = max(1, math.ceil(length / self.spacing - 1e-9))
        cum = torch.cat([torch.zeros(1, dtype=p.dtype, device=p.device), seg.cumsum(0)])
        target = torch.linspace(0.0, length, n_seg + 1, dtype=p.dtype, device=p.device)
        j = torch.searchsorted(cum, target, right=True).clamp(1, len(seg)) - 1
        frac = ((target - cum[j]) / seg[j].clamp(min=1e-12)).clamp(0.0, 1.0)
        out = p[j] + frac[:, None] * (p[j + 1] - p[j])
        out[0], out[-1] = p[0], p[-1]
        return out

    def _limit_curvature(self, p: torch.Tensor) -> torch.Tensor:
        """Pull waypoints whose turning angle exceeds ``max_curvature`` towards their chord.

        Red-black passes (even, then odd interior waypoints) until none is over the limit or
        ``curvature_passes`` passes are done; a waypoint ``b`` between ``a`` and ``c`` may stand
        at most ``|c - a| / 2 * tan(theta_max / 2)`` from the chord's midpoint, with
        ``theta_max = max_curvature * |c - a| / 2`` (a little below the limit, since the mean
        segment is at least half the chord). Runs in numpy (many tiny operations).
        """
        q = p.detach().cpu().numpy().copy()
        kmax = self.limits.max_curvature
        n = q.shape[0]
        parities = (np.arange(1, n - 1, 2), np.arange(2, n - 1, 2))
        moved = False
        for _ in range(self.curvature_passes):
            changed = False
            for idx in parities:
                if idx.size == 0:
                    continue
                a, b, c = q[idx - 1], q[idx], q[idx + 1]
                m = 0.5 * (a + c)
                half = 0.5 * np.sqrt(((c - a) ** 2).sum(1))
                off = b - m
                hgt = np.sqrt((off ** 2).sum(1))
                theta_max = np.minimum(kmax * half * 0.995, math.pi * 0.95)
                h_max = half * np.tan(0.5 * theta_max)
                over = hgt > h_max + 1e-12
                if over.any():
                    sel = idx[over]
                    q[sel] = m[over] + off[over] * (h_max[over] / hgt[over])[:, None]
                    changed = True
            if not changed:
                break
            moved = True
        if not moved:
            return p
        return torch.as_tensor(q, dtype=p.dtype, device=p.device)


def max_curvature_of(points: np.ndarray) -> float:
    """Largest curvature (1/m) of a polyline (0 for fewer than three points)."""
    k = curvatures(points)
    return float(k.max()) if len(k) else 0.0


def load_default(device: str = 'cpu', precision: str = 'fp32') -> ControlIRP:
    """Return the control plugin with its default limits (no weights: nothing is learned)."""
    del precision  # fp32 / fp64 by device; there is no model to run at half precision
    return ControlIRP(device=device)
