"""Does adaptive compute pay? Quality against mean compute, fixed step counts vs halting.

The strongest simple baseline of an iterative refiner is the same refiner run for a **fixed**
number of steps ``k`` on every input: a feed-forward network of ``k`` layers. This module runs
a plugin both ways on the same held-out items, plugin-agnostically (through the contract only):

- **fixed k** (``k = 0 .. k_max``): ``init_state``, ``project``, ``k`` steps, ``result``, and
  nothing else: no energy, no halting checks (a fixed network does not pay for them);
- **adaptive**: :func:`~sage_irp_ros.core.loop.refine` with each of several halting
  configurations (thresholds swept), which computes the energy and checks halting every step.

For each it measures quality and mean compute per input: steps, and wall time in ms (batch 1,
one run per item, in one process). :func:`summarize` turns the curves into the two figures a
sceptical reader asks for:

- ``adaptive_gain_compute``: the mean compute of the cheapest fixed ``k`` whose quality reaches
  the adaptive quality (within ``tolerance``), divided by the adaptive mean compute (> 1: the
  adaptive method is cheaper for the same quality; None when no fixed ``k`` reaches it);
- ``adaptive_gain_quality``: the adaptive quality minus the best quality of a fixed ``k`` that
  costs no more (> 0: better at equal or lower compute), with a paired sign test over items.

Compute is measured in steps (the ``*_steps`` keys, exact) and in wall ms (the ``*_wall`` keys,
which include the energy and halting overhead of the adaptive runs).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from sage_irp_ros.core.loop import refine
from sage_irp_ros.core.plugin import HaltConfig, IRPPlugin, Schedule


@dataclass
class Item:
    """One held-out input: what the plugin reads and the truth its quality is scored on."""

    x0: Any
    truth: Any
    ctx: Optional[Mapping[str, Any]] = None


@dataclass
class Point:
    """One operating point: a fixed ``k`` or an adaptive configuration, on all items."""

    label: str
    kind: str                 # 'fixed' or 'adaptive'
    steps: float              # mean steps per item
    wall_ms: float            # mean wall time per item, ms
    quality: float            # the set's quality (e.g. mIoU over all items)
    param: Any = None         # k, or the HaltConfig / schedule settings as a dict
    item_scores: List[float] = field(default_factory=list, repr=False)
    halts: Dict[str, int] = field(default_factory=dict)


def run_fixed(plugin: IRPPlugin, item: Item, k: int):
    """Run ``k`` steps of ``plugin`` on ``item`` with no energy or halting; return the state."""
    state = plugin.project(plugin.init_state(item.x0, item.ctx))
    for i in range(k):
        sched = Schedule(step_idx=i, max_steps=k, steps_left=k - i,
                         noise_level=1.0 - i / max(k, 1))
        state = plugin.project(plugin.step(state, sched))
    return plugin.result(state), state


#: ``quality(outputs, states, truths) -> float`` for a whole set, and the per-item score
#: ``item_score(output, state, truth) -> float`` used by the paired test.
SetQuality = Callable[[list, list, list], float]
ItemScore = Callable[[Any, Any, Any], float]


def measure_fixed(plugin: IRPPlugin, items: Sequence[Item], k: int, quality: SetQuality,
                  item_score: ItemScore, clock=time.perf_counter) -> Point:
    """Return the fixed-``k`` operating point of ``plugin`` on ``items``."""
    outs, states, walls = [], [], []
    for it in items:
        t = clock()
        out, st = run_fixed(plugin, it, k)
        walls.append((clock() - t) * 1e3)
        outs.append(out)
        states.append(st)
    truths = [it.truth for it in items]
    return Point(label=f'fixed k={k}', kind='fixed', steps=float(k),
                 wall_ms=_mean(walls), quality=float(quality(outs, states, truths)), param=k,
                 item_scores=[float(item_score(o, s, t)) for o, s, t in
                              zip(outs, states, truths, strict=True)])


def measure_adaptive(plugin: IRPPlugin, items: Sequence[Item], label: str,
                     config: HaltConfig, quality: SetQuality, item_score: ItemScore,
                     param: Any = None, clock=time.perf_counter) -> Point:
    """Return the operating point of :func:`refine` with ``config`` on ``items``."""
    outs, states, walls, steps, halts = [], [], [], [], {}
    for it in items:
        t = clock()
        res = refine(plugin, it.x0, it.ctx, config=config)
        walls.append((clock() - t) * 1e3)
        outs.append(res.output)
        states.append(res.state)
        steps.append(res.trace.steps)
        halts[res.trace.halt_reason] = halts.get(res.trace.halt_reason, 0) + 1
    truths = [it.truth for it in items]
    return Point(label=label, kind='adaptive', steps=_mean(steps), wall_ms=_mean(walls),
                 quality=float(quality(outs, states, truths)),
                 param=param if param is not None else asdict(config),
                 item_scores=[float(item_score(o, s, t)) for o, s, t in
                              zip(outs, states, truths, strict=True)], halts=halts)


def sign_test_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided exact sign test of paired scores: p of a difference at least this lopsided."""
    wins = sum(x > y for x, y in zip(a, b, strict=True))
    losses = sum(x < y for x, y in zip(a, b, strict=True))
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(min(1.0, 2 * tail))


def summarize(fixed: Sequence[Point], adaptive: Sequence[Point], operating: str,
              tolerance: float = 0.0) -> dict:
    """Compare the adaptive operating point ``operating`` with the fixed-``k`` curve.

    ``tolerance``: how much lower a fixed ``k`` may score and still count as reaching the
    adaptive quality (e.g. 0.005 for "within 0.5 points of mIoU").
    """
    op = next(p for p in adaptive if p.label == operating)
    out = {'operating_point': operating, 'tolerance': tolerance,
           'adaptive': _row(op), 'best_fixed': _row(max(fixed, key=lambda p: p.quality))}
    for unit in ('steps', 'wall'):
        cost = (lambda p: p.steps) if unit == 'steps' else (lambda p: p.wall_ms)
        reaching = [p for p in fixed if p.quality >= op.quality - tolerance]
        cheapest = min(reaching, key=cost) if reaching else None
        within = [p for p in fixed if cost(p) <= cost(op) + 1e-9]
        best_cheaper = max(within, key=lambda p: p.quality) if within else None
        out[f'adaptive_gain_compute_{unit}'] = (
            None if cheapest is None else round(cost(cheapest) / max(cost(op), 1e-9), 4))
        out[f'fixed_reaching_adaptive_{unit}'] = None if cheapest is None else cheapest.label
        out[f'adaptive_gain_quality_{unit}'] = (
            None if best_cheaper is None else round(op.quality - best_cheaper.quality, 6))
        out[f'fixed_at_no_more_compute_{unit}'] = (
            None if best_cheaper is None else best_cheaper.label)
        if best_cheaper is not None and op.item_scores and best_cheaper.item_scores:
            wins = sum(x > y for x, y in zip(op.item_scores, best_cheaper.item_scores,
                                             strict=True))
            losses = sum(x < y for x, y in zip(op.item_scores, best_cheaper.item_scores,
                                               strict=True))
            out[f'adaptive_gain_p_{unit}'] = round(sign_test_p(op.item_scores,
                                                               best_cheaper.item_scores), 6)
            out[f'items_adaptive_better_{unit}'] = wins
            out[f'items_fixed_better_{unit}'] = losses
    # The headline keys: compute in steps (exact, machine-independent).
    out['adaptive_gain_compute'] = out['adaptive_gain_compute_steps']
    out['adaptive_gain_quality'] = out['adaptive_gain_quality_steps']
    out['adaptive_gain_p'] = out.get('adaptive_gain_p_steps')
    out['pareto'] = {'fixed': [_row(p) for p in fixed], 'adaptive': [_row(p) for p in adaptive]}
    return out


def plot(path: str, fixed: Sequence[Point], adaptive: Sequence[Point], operating: str,
         title: str, quality_name: str) -> str:
    """Write a PNG of quality against mean steps and against mean wall ms; return ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, unit in zip(axes, ('steps', 'wall_ms'), strict=True):
        fx = sorted(fixed, key=lambda p: getattr(p, unit))
        ad = sorted(adaptive, key=lambda p: getattr(p, unit))
        ax.plot([getattr(p, unit) for p in fx], [p.quality for p in fx], '-o', ms=4,
                label='fixed k')
        for p in fx:
            ax.annotate(str(p.param), (getattr(p, unit), p.quality), fontsize=7,
                        textcoords='offset points', xytext=(3, -9))
        ax.plot([getattr(p, unit) for p in ad], [p.quality for p in ad], '-s', ms=4,
                label='adaptive (thresholds swept)')
        op = next(p for p in adaptive if p.label == operating)
        ax.plot([getattr(op, unit)], [op.quality], '*', ms=14, color='tab:red',
                label=f'adaptive default ({operating})')
        ax.set(xlabel='mean steps per input' if unit == 'steps' else 'mean wall ms per input',
               ylabel=quality_name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def _row(p: Point) -> dict:
    return {'label': p.label, 'kind': p.kind, 'steps': round(p.steps, 4),
            'wall_ms': round(p.wall_ms, 4), 'quality': round(p.quality, 6),
            'param': p.param, **({'halts': p.halts} if p.halts else {})}


def sweep(plugin: IRPPlugin, items: Sequence[Item], quality: SetQuality,
          item_score: ItemScore, k_max: int, adaptive: Mapping[str, tuple],
          operating: str, tolerance: float = 0.0) -> Tuple[dict, List[Point], List[Point]]:
    """Measure fixed ``k = 0..k_max`` and every adaptive configuration; summarize.

    ``adaptive`` maps a label to ``(HaltConfig, param)`` or ``(HaltConfig, param, plugin)``:
    a plugin whose own halting rule has a threshold (a confidence level) is swept by passing
    an instance with that threshold set. Returns the summary and the two curves.
    """
    fixed = [measure_fixed(plugin, items, k, quality, item_score) for k in range(k_max + 1)]
    ad = []
    for label, spec in adaptive.items():
        cfg, param = spec[0], spec[1]
        ad.append(measure_adaptive(spec[2] if len(spec) > 2 else plugin, items, label, cfg,
                                   quality, item_score, param))
    return summarize(fixed, ad, operating, tolerance), fixed, ad
