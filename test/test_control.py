"""Control plugin (no ROS): constraints on every feasible path, bad input, budgets, baselines."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sage_irp_ros.core import Budget
from sage_irp_ros.core.loop import refine
from sage_irp_ros.plugins.control import baselines, maps
from sage_irp_ros.plugins.control.grid import (
    GridMap,
    MapError,
    PathLimits,
    curvatures,
    path_metrics,
)
from sage_irp_ros.plugins.control.plugin import (
    STATUS_BAD_INPUT,
    STATUS_GOAL_IN_OBSTACLE,
    STATUS_START_IN_OBSTACLE,
    STATUS_UNREACHABLE,
    ControlIRP,
    ControlProblem,
    PlanningError,
    load_default,
)
from sage_irp_ros.plugins.control.search import _cuts_corner, astar, cells_length, grid_search

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def open_map(size=60, res=0.05, block=True):
    occ = np.zeros((size, size), np.int8)
    if block:
        occ[size // 3:2 * size // 3, size // 2 - 3:size // 2 + 3] = 100
    return GridMap.from_occupancy(occ, res, origin=(-1.0, 2.0))


def independent_check(grid, path, limits, start, goal):
    """Constraints re-measured without the plugin's code paths (fine sampling, numpy)."""
    p = np.asarray(path)
    assert np.allclose(p[0], start, atol=1e-6) and np.allclose(p[-1], goal, atol=1e-6)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    assert seg.max() <= limits.max_segment * (1 + 1e-6)
    k = curvatures(p)
    assert len(k) == 0 or k.max() <= limits.max_curvature * 1.01
    lx, ly = grid.to_local(p).T
    w, h = grid.extent
    assert lx.min() >= -1e-9 and ly.min() >= -1e-9 and lx.max() <= w + 1e-9 \
        and ly.max() <= h + 1e-9
    t = np.linspace(0.0, 1.0, 17)[:-1]
    dense = (p[:-1, None, :] + t[None, :, None] * (p[1:] - p[:-1])[:, None, :]).reshape(-1, 2)
    assert grid.distance(dense).min() >= limits.clearance - 1e-9
    # No sample lies in an obstacle cell either (the grid itself, not the distance field).
    rc = np.array([grid.cell_of(q) for q in dense[::4]])
    assert not grid.blocked[rc[:, 0], rc[:, 1]].any()


@st.composite
def random_problem(draw):
    size = draw(st.integers(30, 70))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    occ = maps.random_field(size, rng, fill=draw(st.floats(0.0, 0.25)))
    grid = GridMap.from_occupancy(np.where(occ, 100, 0).astype(np.int8), 0.05)
    free = np.argwhere(grid.sdf[1:-1, 1:-1] >= 0.1)
    if len(free) < 2:
        return grid, None, None
    i, j = draw(st.integers(0, len(free) - 1)), draw(st.integers(0, len(free) - 1))
    return grid, grid.center_of(free[i]), grid.center_of(free[j])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_problem())
def test_every_feasible_path_meets_the_constraints(problem):
    grid, start, goal = problem
    plugin = ControlIRP()
    if start is None:
        return
    try:
        res = refine(plugin, ControlProblem(grid, tuple(start), tuple(goal)),
                     config=plugin.halt_config())
    except PlanningError as exc:  # only these outcomes may refuse a free start and goal
        assert exc.status in (STATUS_UNREACHABLE, STATUS_START_IN_OBSTACLE,
                              STATUS_GOAL_IN_OBSTACLE)
        if exc.status == STATUS_UNREACHABLE:
            free = grid.cspace_free(plugin.limits.clearance)
            assert astar(free, grid.cell_of(start), grid.cell_of(goal)) is None
        return
    out = res.output
    m = path_metrics(grid, out.path, plugin.limits, start, goal)
    assert m['feasible'] == out.feasible  # the flag tells the truth
    if out.feasible:
        independent_check(grid, out.path, plugin.limits, start, goal)
    assert res.trace.steps <= plugin.halt_config().max_steps


def test_open_map_is_planned_around_the_block_and_energy_never_rises():
    grid = open_map()
    plugin = ControlIRP()
    start, goal = (-0.7, 3.5), (1.7, 3.5)
    res = refine(plugin, ControlProblem(grid, start, goal), config=plugin.halt_config())
    out = res.output
    assert out.feasible and out.status == 'feasible'
    assert res.trace.halt_reason == 'feasible'
    independent_check(grid, out.path, plugin.limits, start, goal)
    e = res.trace.energies
    assert all(b <= a + 1e-9 for a, b in zip(e, e[1:], strict=False))
    assert len(out.yaws) == len(out.path)
    a = baselines.astar_path(grid, start, goal, 0.1)
    assert out.metrics['length'] <= 1.15 * path_metrics(grid, a, plugin.limits)['length']


def test_bad_input_gets_a_clear_error():
    grid = open_map()
    plugin = ControlIRP()
    cases = [((math.nan, 3.0), (1.0, 3.0), STATUS_BAD_INPUT, 'not finite'),
             ((-0.7, 3.5), (5.0, 3.5), STATUS_BAD_INPUT, 'off the map'),
             ((-0.7, 3.5), (0.5, 3.5), STATUS_GOAL_IN_OBSTACLE, 'inside an obstacle'),
             ((0.5, 3.5), (1.7, 3.5), STATUS_START_IN_OBSTACLE, 'inside an obstacle')]
    for start, goal, status, text in cases:
        with pytest.raises(PlanningError, match=text) as info:
            refine(plugin, ControlProblem(grid, start, goal))
        assert info.value.status == status
    occ = np.zeros((40, 40), np.int8)
    occ[:, 18:22] = 100  # a wall across the map
    walled = GridMap.from_occupancy(occ, 0.05)
    with pytest.raises(PlanningError, match='no path') as info:
        refine(plugin, ControlProblem(walled, (0.3, 1.0), (1.7, 1.0)))
    assert info.value.status == STATUS_UNREACHABLE
    for bad, text in ((np.zeros((0, 5)), 'empty'), (np.zeros(25), '2-D'),
                      (np.zeros((5, 5, 2)), '2-D')):
        with pytest.raises(MapError, match=text):
            GridMap.from_occupancy(bad, 0.05)
    for res in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(MapError, match='resolution'):
            GridMap.from_occupancy(np.zeros((5, 5)), res)
    with pytest.raises(MapError, match='origin'):
        GridMap.from_occupancy(np.zeros((5, 5)), 0.05, origin=(math.nan, 0.0))
    unknown = GridMap.from_occupancy(np.full((20, 20), -1, np.int8), 0.05)
    with pytest.raises(PlanningError) as info:
        refine(plugin, ControlProblem(unknown, (0.3, 0.3), (0.7, 0.7)))
    assert info.value.status == STATUS_START_IN_OBSTACLE


def test_a_run_stopped_by_budget_or_deadline_returns_its_best_path_with_a_flag():
    p = maps.make_problem('test', 'maze', 100, 0)
    plugin = ControlIRP()
    problem = ControlProblem(p.grid, tuple(p.start), tuple(p.goal))
    for kwargs in ({'budget': Budget(0.0)}, {'deadline': 0.0}):
        res = refine(plugin, problem, config=plugin.halt_config(), **kwargs)
        assert res.trace.halt_reason in ('budget', 'timeout')
        assert res.trace.steps == 0
        out = res.output
        assert np.allclose(out.path[0], p.start) and np.allclose(out.path[-1], p.goal)
        assert out.feasible == path_metrics(p.grid, out.path, plugin.limits, p.start,
                                            p.goal)['feasible']


def test_held_out_style_floor_on_small_maps():
    # The test split (never the benchmark's), 100x100, one map per kind: feasible and short.
    plugin = ControlIRP()
    for p in maps.problems('test', sizes=(100,), n=1):
        res = refine(plugin, ControlProblem(p.grid, tuple(p.start), tuple(p.goal)),
                     config=plugin.halt_config())
        assert res.output.feasible, (p.name, res.output.metrics['violations'])
        assert res.output.metrics['length'] <= 1.15 * p.astar_length, p.name
        assert res.trace.steps < plugin.halt_config().max_steps


def test_searches_agree_and_baselines_run():
    p = maps.make_problem('test', 'rooms', 100, 1)
    free = p.grid.cspace_free(0.1)
    s, g = p.grid.cell_of(p.start), p.grid.cell_of(p.goal)
    a, b = astar(free, s, g), grid_search(free, s, g)
    assert a[0] == s and a[-1] == g and b[0] == s and b[-1] == g
    # A* is the shortest path that cuts no corner; the compiled search cuts none either (it
    # falls back to 4-connected moves when its 8-connected path would).
    assert cells_length(a) <= cells_length(b) + 1e-6
    assert not _cuts_corner(free, np.asarray(b)) and not _cuts_corner(free, np.asarray(a))
    path = baselines.astar_path(p.grid, p.start, p.goal, 0.1)
    assert path_metrics(p.grid, path, PathLimits(max_curvature=100.0))['min_clearance'] >= 0.1
    sm = baselines.simple_smoother(path, p.grid, 0.1)
    assert sm.shape == path.shape and np.allclose(sm[0], path[0])
    assert np.all(p.grid.distance(sm) >= 0.1 - 1e-9)


def test_a_remembered_path_warm_starts_a_near_request_and_a_bad_one_is_ignored(tmp_path):
    """Memory (issue #14): a feasible path is stored; a request to nearly the same place on the
    same map starts from it (closer, no seed search) and stays feasible; another map, or
    the same map with a wall across the remembered path, starts from its own seed."""
    from sage_irp_ros.plugins.memory.experience import (
        check_experience,
        recall_from,
        recall_threshold,
        run_experience,
    )
    from sage_irp_ros.plugins.memory.store import ExperienceStore
    plugin = load_default()
    cfg = plugin.halt_config()
    pr = maps.make_problem('dev', 'corridors', 100, 0)
    first = refine(plugin, ControlProblem(pr.grid, tuple(pr.start), tuple(pr.goal)), None,
                   config=cfg)
    assert first.output.feasible
    with ExperienceStore(str(tmp_path / 'm.db')) as store:
        store.add(**check_experience(run_experience(plugin, first, 'control')))
        recall = recall_from(store, 'control', recall_threshold(plugin))
        near = (tuple(np.asarray(pr.start) + [0.04, -0.03]),
                tuple(np.asarray(pr.goal) + [-0.03, 0.05]))
        cold = refine(plugin, ControlProblem(pr.grid, *near), None, config=cfg)
        warm = refine(plugin, ControlProblem(pr.grid, *near), {'recall': recall}, config=cfg)
        ws = warm.state.meta['warm_start']
        assert ws['used'] and ws['similarity'] >= plugin.recall_similarity
        # it starts closer (lower energy) and takes no more steps (half as many on average,
        # bench/memory_bench.py)
        assert warm.output.feasible and warm.trace.energies[0] < cold.trace.energies[0]
        assert warm.trace.steps <= cold.trace.steps
        assert np.allclose(warm.output.path[0], near[0]) and np.allclose(warm.output.path[-1],
                                                                         near[1])
        # a run that started from memory is not remembered again
        assert plugin.experience(warm.state, warm.output) is None

        other = maps.make_problem('dev', 'rooms', 100, 0)
        r = refine(plugin, ControlProblem(other.grid, tuple(other.start), tuple(other.goal)),
                   {'recall': recall}, config=cfg)
        assert not r.state.meta['warm_start']['used']
        assert r.state.meta['warm_start']['why'] == 'not similar enough'

        # the same map with a new wall across the remembered path's middle
        occ = pr.grid.occupancy.copy()
        mid = first.output.path[len(first.output.path) // 2]
        rc = pr.grid.cell_of(mid)
        occ[max(rc[0] - 2, 0):rc[0] + 3, max(rc[1] - 2, 0):rc[1] + 3] = 100
        walled = GridMap.from_occupancy(occ, pr.grid.resolution, pr.grid.origin)
        r = refine(plugin, ControlProblem(walled, *near), {'recall': recall}, config=cfg)
        ws = r.state.meta['warm_start']
        assert ws['similarity'] >= plugin.recall_similarity and not ws['used']
        assert ws['why'] == 'crosses what is an obstacle now'
