"""The Pareto benchmark helper: fixed step counts against adaptive halting, and its figures."""

import numpy as np
import pytest

from sage_irp_ros.core import HaltConfig
from sage_irp_ros.core.pareto import Item, Point, run_fixed, sign_test_p, summarize, sweep
from sage_irp_ros.plugins.fixture import SmoothingFixture


def pt(label, kind, steps, q, scores=(), wall=None):
    return Point(label, kind, steps, steps if wall is None else wall, q, item_scores=list(scores))


def test_gains_against_the_fixed_curve():
    fixed = [pt('k0', 'fixed', 0, 0.5, [0, 0, 0, 0]), pt('k1', 'fixed', 1, 0.7, [1, 0, 0, 0]),
             pt('k2', 'fixed', 2, 0.8, [1, 1, 0, 0]), pt('k4', 'fixed', 4, 0.85, [1, 1, 1, 0])]
    adaptive = [pt('a', 'adaptive', 1.5, 0.8, [1, 1, 1, 0])]
    s = summarize(fixed, adaptive, 'a')
    assert s['adaptive_gain_compute'] == pytest.approx(2 / 1.5, abs=1e-4)   # k2 reaches 0.8
    assert s['fixed_reaching_adaptive_steps'] == 'k2'
    assert s['adaptive_gain_quality'] == pytest.approx(0.1)                 # vs k1 (<= 1.5)
    assert s['fixed_at_no_more_compute_steps'] == 'k1'
    assert s['items_adaptive_better_steps'] == 2 and s['items_fixed_better_steps'] == 0
    assert len(s['pareto']['fixed']) == 4 and s['best_fixed']['label'] == 'k4'
    # nothing reaches a better adaptive quality: no compute gain to report, and say so
    s = summarize(fixed, [pt('a', 'adaptive', 3, 0.9)], 'a')
    assert s['adaptive_gain_compute'] is None
    # tolerance: k1 (0.7) is within 0.11 of 0.8
    assert summarize(fixed, adaptive, 'a', tolerance=0.11)['fixed_reaching_adaptive_steps'] == 'k1'


def test_sign_test():
    assert sign_test_p([1] * 10, [0] * 10) == pytest.approx(2 / 1024)
    assert sign_test_p([1, 0], [0, 1]) == 1.0
    assert sign_test_p([0, 0], [0, 0]) == 1.0


def test_fixed_runs_skip_energy_and_halting():
    class Counting(SmoothingFixture):
        energies = 0

        def energy(self, state):
            Counting.energies += 1
            return super().energy(state)
    out, state = run_fixed(Counting(), Item(np.ones(8), None), 5)
    assert state.step_idx == 5 and Counting.energies == 0 and out.shape == (8,)


def test_sweep_on_the_fixture():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 6, 64)
    items = []
    for i in range(6):
        clean = np.sin(t * (1 + i % 3))
        items.append(Item(clean + (0.1 + 0.3 * (i % 2)) * rng.standard_normal(t.size), clean))

    def item_score(out, state, clean):
        return -float(np.mean((out - clean) ** 2))

    def quality(outs, states, truths):
        return float(np.mean([item_score(o, s, c) for o, s, c in
                              zip(outs, states, truths, strict=True)]))
    adaptive = {f'eps={e}': (HaltConfig(eps=e, K=2, max_steps=40), e)
                for e in (1e-2, 1e-3, 1e-4)}
    s, fixed, ad = sweep(SmoothingFixture(), items, quality, item_score, 12, adaptive,
                         'eps=0.001')
    assert [p.steps for p in fixed] == list(range(13))
    assert fixed[12].quality > fixed[0].quality           # smoothing helps
    assert ad[0].steps < ad[2].steps                        # tighter eps, more steps
    for key in ('adaptive_gain_compute', 'adaptive_gain_quality', 'pareto'):
        assert key in s
