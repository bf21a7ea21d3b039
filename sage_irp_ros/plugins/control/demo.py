"""The control plugin's hooks for ``make demo`` (no ROS): scoring and pictures of the paths.

- :func:`score`: the share of the bag's goals answered with a feasible path (matched by the
  goal's stamp on ``/control/plan_status``), with their clearance and length against A*;
- :func:`plot_steps`: steps per goal;
- :func:`plots`: ``control_paths.png``: the map, every goal's path (green feasible, red not)
  and its iterates (from ``/control/plan_markers`` when recorded), and the energy per step of
  each run (from telemetry).

Messages are read through their fields only, so any object with those fields will do. The
bag's truth for the plugin is ``truth['control']``: ``map`` (``width``, ``height``,
``resolution``, ``origin``), ``start`` and ``goals`` (each ``stamp_ns``, ``x``, ``y``,
``expect`` (``feasible``, ``unreachable``, ``goal_in_obstacle``, ...), ``astar_length``).
"""

from __future__ import annotations

import json
from typing import Callable, Dict, List

import numpy as np

STATUS_TOPIC = '/control/plan_status'
PLAN_TOPIC = '/control/plan'
MARKERS_TOPIC = '/control/plan_markers'


def stamp_ns(header) -> int:
    """Return a header's stamp in nanoseconds."""
    return header.stamp.sec * 10 ** 9 + header.stamp.nanosec


def score(recorded: Dict[str, list], truth: dict) -> dict:
    """Score the answers: goals whose status matches the truth's expectation (first answer).

    ``answered`` counts the goals a run answered (feasible or infeasible); a refused goal
    (unreachable, in an obstacle, bad input) is answered by a status too, but the node counts
    it as bad input, so the demo's bookkeeping counts it there. The quality covers all goals.
    """
    goals = {g['stamp_ns']: g for g in truth['control']['goals']}
    answered, seen, right, ratios, clear = set(), set(), 0, [], []
    for _, m in recorded.get(STATUS_TOPIC, []):
        t = stamp_ns(m.header)
        if t not in goals or t in seen:
            continue
        seen.add(t)
        if m.status in ('feasible', 'infeasible'):
            answered.add(t)
        g = goals[t]
        right += int(m.status == g['expect'])
        if m.feasible and g.get('astar_length'):
            ratios.append(m.length / g['astar_length'])
            clear.append(m.min_clearance)
    return {'answered': len(answered), 'quality': {
        'metric': 'status_as_expected', 'value': round(right / max(len(goals), 1), 4),
        'n': len(goals),
        'length_ratio_astar': round(float(np.mean(ratios)), 4) if ratios else None,
        'min_clearance': round(float(min(clear)), 4) if clear else None}}


def plot_steps(ax, records: List[dict], truth: dict) -> None:
    """Draw steps per goal (the control node's telemetry, in arrival order)."""
    ax.bar(range(len(records)), [r['steps'] for r in records], color='tab:red')
    ax.set(title='control: steps per goal', xlabel='goal (arrival order)', ylabel='steps')


def plots(out_dir: str, recorded: Dict[str, list], truth: dict,
          save: Callable[[object, str], None]) -> None:
    """Draw ``control_paths.png`` (map, paths, iterates; energy per step)."""
    import matplotlib.pyplot as plt
    info = truth.get('control')
    if not info:
        return
    grid = np.asarray(info['map']['occupancy'], dtype=np.int16)
    res = info['map']['resolution']
    ox, oy = info['map']['origin']
    h, w = grid.shape
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 5))
    ax.imshow(grid >= 65, origin='lower', cmap='Greys',
              extent=(ox, ox + w * res, oy, oy + h * res))
    for _, arr in recorded.get(MARKERS_TOPIC, []):
        for mk in arr.markers:
            if mk.ns == 'iterates' and mk.points:
                ax.plot([p.x for p in mk.points], [p.y for p in mk.points], '-',
                        color='tab:blue', lw=0.4, alpha=0.3)
    for _, path in recorded.get(PLAN_TOPIC, []):
        xy = np.array([[p.pose.position.x, p.pose.position.y] for p in path.poses])
        if len(xy):
            ax.plot(xy[:, 0], xy[:, 1], '-', color='tab:green', lw=1.4)
    s = info['start']
    ax.plot([s['x']], [s['y']], 'o', color='tab:orange', label='start')
    for g in info['goals']:
        ax.plot([g['x']], [g['y']], 'x', color='tab:red' if g['expect'] != 'feasible'
                else 'tab:green')
    ax.set_title('control: map, paths (green), iterates (blue), goals (x)', fontsize=9)
    ax.legend(fontsize=7)
    records = [json.loads(m.data) for _, m in recorded.get('/irp/telemetry_json', [])]
    for r in records:
        if r.get('entity_id', '').endswith('/control_irp_node'):
            ax2.plot(range(len(r['E_trace'])), r['E_trace'], '-o', ms=2)
    ax2.set(yscale='log', xlabel='step', ylabel='energy (m^2)',
            title='control: energy per step, one line per goal')
    save(fig, 'control_paths.png')
