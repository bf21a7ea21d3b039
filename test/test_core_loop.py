"""The refinement loop: halting rules, errors, budgets, re-entrancy."""

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scripted import NAN, ScriptedPlugin, geometric

from sage_irp_ros.core import (
    Budget,
    HaltConfig,
    StepCostMeter,
    make_record,
    refine,
    validate_record,
)
from sage_irp_ros.plugins.fixture import NoisyFixture, SmoothingFixture


def run(energies, eps=0.0, K=2, max_steps=100, **kw):
    plugin_kw = {k: kw.pop(k) for k in ('on_step', 'raise_at', 'halt_at') if k in kw}
    return refine(ScriptedPlugin(energies, **plugin_kw), None,
                  config=HaltConfig(eps=eps, K=K, max_steps=max_steps), **kw)


def valid(result, kind='custom'):
    return validate_record(make_record(kind, result.trace, entity_id='/t'))


def test_zero_max_steps_is_a_valid_run():
    r = run(geometric(5), max_steps=0)
    assert r.trace.steps == 0 and r.output == 0
    assert r.trace.halt_reason == 'max_steps'
    assert r.trace.trust().monotonicity_ratio == 1.0
    valid(r)


def test_zero_budget_runs_no_step():
    r = run(geometric(5), budget=Budget(0.0))
    assert (r.trace.steps, r.trace.halt_reason) == (0, 'budget')
    valid(r)


def test_max_steps_caps_a_descending_run():
    r = run(geometric(50), max_steps=7)
    assert (r.trace.steps, r.trace.halt_reason, r.output) == (7, 'max_steps', 7)


def test_flat_energy_halts_on_slope_after_k_steps():
    r = run([3.0] * 20, eps=1e-6, K=3)
    assert (r.trace.steps, r.trace.halt_reason) == (3, 'slope<eps')


def test_oscillating_energy_halts_on_slope():
    r = run([10, 5, 10, 5, 10, 5, 10, 5], eps=1e-3, K=2)
    assert r.trace.halt_reason == 'slope<eps' and r.trace.steps == 2
    t = r.trace.trust()
    assert t.monotonicity_ratio == 0.5 and t.dE_variance == pytest.approx(25.0)


def test_slope_rule_is_relative_to_energy_scale():
    # E falls 1 % of E0 per step: halts with eps=0.02, runs on with eps=0.005.
    energies = [100 - i for i in range(30)]
    assert run(energies, eps=0.02, K=2).trace.steps == 2
    assert run(energies, eps=0.005, K=2, max_steps=20).trace.halt_reason == 'max_steps'


def test_nan_energy_ends_with_error_and_keeps_last_good_state():
    r = run([4.0, 3.0, 2.0, NAN, 1.0])
    assert r.trace.halt_reason == 'error' and 'non-finite' in r.trace.error
    assert r.output == 2 and r.trace.steps == 2 and r.trace.energies == [4.0, 3.0, 2.0]
    rec = make_record('custom', r.trace)
    validate_record(rec)
    assert 'non-finite' in rec['metadata']['error']


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_non_finite_initial_energy_gives_a_valid_zero_step_record(bad):
    r = run([bad, 1.0])
    assert r.trace.halt_reason == 'error' and r.trace.steps == 0
    rec = make_record('custom', r.trace)
    validate_record(rec)
    assert rec['E'] == 0.0 and rec['E_trace'] == []


def test_step_exception_ends_with_error():
    r = run(geometric(10), raise_at=3)
    assert r.trace.halt_reason == 'error' and 'RuntimeError' in r.trace.error
    assert r.output == 3
    valid(r)


def test_plugin_specific_reason_and_priority():
    r = run(geometric(10), halt_at={4: 'confident'})
    assert (r.trace.steps, r.trace.halt_reason) == (4, 'confident')
    # budget comes before the plugin's own reason
    r = run(geometric(10), halt_at={2: 'confident'}, budget=Budget(2.0),
            cost=StepCostMeter(1.0, learn=False))
    assert (r.trace.steps, r.trace.halt_reason) == (2, 'budget')


def test_invalid_plugin_reason_is_an_error():
    r = run(geometric(10), halt_at={1: 'bored'})
    assert r.trace.halt_reason == 'error' and 'bored' in r.trace.error


def test_cancel_is_manual():
    cancel = threading.Event()
    r = run(geometric(50), on_step=lambda i: cancel.set() if i == 3 else None, cancel=cancel)
    assert (r.trace.steps, r.trace.halt_reason) == (4, 'manual')


def test_deadline_is_timeout():
    now = [0.0]

    def clock():
        return now[0]

    def tick(i):
        now[0] += 0.010  # every step takes 10 ms on the fake clock

    r = run(geometric(100), on_step=tick, deadline=0.0505, clock=clock,
            cost=StepCostMeter(10.0, learn=False))
    # 10 ms steps against a 50.5 ms deadline: 5 steps end by 50 ms, a 6th would overrun
    assert (r.trace.steps, r.trace.halt_reason) == (5, 'timeout')


def test_budget_limits_steps_by_price():
    meter = StepCostMeter(initial_ms=2.0, learn=False)
    r = run(geometric(100), budget=Budget(9.0), cost=meter)
    assert r.trace.halt_reason == 'budget' and r.trace.steps == 4
    assert r.trace.atp_spent <= 9.0 and r.trace.atp_granted == 9.0


def test_budget_top_up_mid_run_is_picked_up():
    budget = Budget(3.0)
    cost = StepCostMeter(1.0, learn=False)
    r = run(geometric(100), budget=budget, cost=cost,
            on_step=lambda i: budget.top_up(4.0) if i == 2 else None)
    # without the top-up the run would stop at 3 steps
    assert r.trace.steps == 7 and r.trace.halt_reason == 'budget'
    assert r.trace.atp_granted == 7.0


def test_budget_top_up_from_another_thread():
    budget = Budget(2.0)
    gate = threading.Event()

    def on_step(i):
        if i == 1:
            gate.set()
            time.sleep(0.05)  # the other thread tops up while step 1 runs

    t = threading.Thread(target=lambda: (gate.wait(5), budget.top_up(10.0)))
    t.start()
    r = run(geometric(100), budget=budget, cost=StepCostMeter(1.0, learn=False),
            on_step=on_step)
    t.join()
    assert r.trace.steps == 12


def test_shared_budget_is_never_overspent_by_concurrent_runs():
    budget = Budget(50.0)
    cost = StepCostMeter(1.0, learn=False)
    plugin = ScriptedPlugin(geometric(100))
    cfg = HaltConfig(eps=0.0, K=2, max_steps=100)
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda _: refine(plugin, None, config=cfg, budget=budget,
                                               cost=cost), range(8)))
    assert sum(r.trace.steps for r in results) == 50
    assert budget.spent == pytest.approx(50.0)


def _signals(n=8, length=128):
    rng = np.random.default_rng(1)
    t = np.linspace(0, 6, length)
    return [np.sin(t * (1 + i)) + 0.3 * rng.standard_normal(length) for i in range(n)]


@pytest.mark.parametrize('plugin', [SmoothingFixture(), NoisyFixture(noise=0.2)],
                         ids=['smoothing', 'noisy'])
def test_reentrant_concurrent_runs_match_sequential(plugin):
    cfg = HaltConfig(eps=1e-4, K=2, max_steps=40)
    xs = _signals()
    seq = [refine(plugin, x, config=cfg) for x in xs]
    with ThreadPoolExecutor(8) as ex:
        par = list(ex.map(lambda x: refine(plugin, x, config=cfg), xs))
    for a, b in zip(seq, par, strict=True):
        np.testing.assert_array_equal(a.output, b.output)
        assert a.trace.energies == b.trace.energies
        assert a.trace.halt_reason == b.trace.halt_reason


def test_fixture_converges_and_lowers_energy():
    y = _signals(1, 256)[0]
    r = refine(SmoothingFixture(), y, config=HaltConfig(eps=1e-3, K=2, max_steps=200))
    e = r.trace.energies
    assert r.trace.halt_reason == 'slope<eps'
    assert all(b <= a for a, b in zip(e[:-1], e[1:], strict=True))
    assert e[-1] < 0.2 * e[0]


def test_spec_signature_unpacks_to_output_and_trace():
    out, trace = refine(SmoothingFixture(), _signals(1)[0], config=HaltConfig(max_steps=3))
    assert out.shape == (128,) and trace.steps == 3


class _TimedScripted(ScriptedPlugin):
    """Scripted energies, with ``init_state`` / ``result`` hooks (to move a fake clock)."""

    def __init__(self, energies, on_init=None, on_result=None, **kw):
        super().__init__(energies, **kw)
        self.on_init, self.on_result = on_init, on_result

    def init_state(self, x0, ctx=None):
        if self.on_init is not None:
            self.on_init()
        return super().init_state(x0, ctx)

    def result(self, state):
        if self.on_result is not None:
            self.on_result()
        return super().result(state)


def test_per_input_price_is_charged_once_at_the_start():
    cost = StepCostMeter(1.0, learn=False, per_input_ms=3.0)
    budget = Budget(5.0)
    r = run(geometric(100), budget=budget, cost=cost)
    assert (r.trace.atp_input, r.trace.steps, r.trace.halt_reason) == (3.0, 2, 'budget')
    assert r.trace.atp_spent == pytest.approx(5.0) == budget.spent
    rec = make_record('custom', r.trace)
    assert rec['budget']['ATP_spent'] == pytest.approx(5.0)
    # Unlimited: the whole per-input price plus every step.
    r = run(geometric(100), max_steps=4, cost=cost)
    assert (r.trace.atp_input, r.trace.atp_spent) == (3.0, 7.0)


def test_per_input_charge_is_bounded_by_the_grant_and_zero_step_runs_still_answer():
    cost = StepCostMeter(1.0, learn=False, per_input_ms=3.0)
    budget = Budget(2.0)
    r = run(geometric(100), budget=budget, cost=cost)
    assert (r.trace.steps, r.trace.halt_reason, r.output) == (0, 'budget', 0)  # unrefined
    assert r.trace.atp_input == r.trace.atp_spent == budget.spent == 2.0  # never > granted
    valid(r)
    r = run(geometric(100), budget=Budget(0.0), cost=cost)
    assert (r.trace.atp_spent, r.trace.steps, r.output) == (0.0, 0, 0)


def test_per_input_charge_is_refunded_when_the_input_is_refused():
    class Refusing(ScriptedPlugin):
        def init_state(self, x0, ctx=None):
            raise ValueError('not an input')

    budget = Budget(10.0)
    with pytest.raises(ValueError):
        refine(Refusing([1.0]), None, budget=budget,
               cost=StepCostMeter(1.0, learn=False, per_input_ms=3.0))
    assert budget.spent == 0.0


def test_shared_budget_with_per_input_price_is_never_overspent():
    budget = Budget(50.0)
    cost = StepCostMeter(1.0, learn=False, per_input_ms=2.5)
    plugin = ScriptedPlugin(geometric(100))
    cfg = HaltConfig(eps=0.0, K=2, max_steps=100)
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda _: refine(plugin, None, config=cfg, budget=budget,
                                               cost=cost), range(8)))
    assert sum(r.trace.atp_spent for r in results) == pytest.approx(50.0) == budget.spent
    assert sum(r.trace.steps for r in results) == round(
        50.0 - sum(r.trace.atp_input for r in results))


def test_meter_learns_the_non_step_time_of_runs():
    now = [0.0]
    init_s = [0.030]

    def advance(s):
        now[0] += s

    plugin = _TimedScripted(geometric(100), on_init=lambda: advance(init_s[0]),
                            on_result=lambda: advance(0.005),
                            on_step=lambda i: advance(0.010))
    cost = StepCostMeter(1.0, alpha=0.5, per_input_ms=0.0)
    cfg = HaltConfig(eps=0.0, max_steps=3)
    r = refine(plugin, None, config=cfg, cost=cost, clock=lambda: now[0])
    # 30 ms encoding + 5 ms decoding beyond the three 10 ms steps (on the fake clock).
    assert r.trace.atp_input == 0.0 and r.trace.time_ms == pytest.approx(65.0)
    assert cost.per_input_ms == pytest.approx(35.0) and cost.per_step_ms == pytest.approx(10.0)
    init_s[0] = 0.045
    r = refine(plugin, None, config=cfg, cost=cost, clock=lambda: now[0])
    assert r.trace.atp_input == pytest.approx(35.0)  # charged at the price learned so far
    assert cost.per_input_ms == pytest.approx(35.0 + 0.5 * (50.0 - 35.0))
    # A zero-step run is all per-input time; a failed step's time is not per-input time.
    r = refine(_TimedScripted(geometric(5), on_init=lambda: advance(0.040),
                              on_step=lambda i: advance(0.010), raise_at=0),
               None, config=cfg, cost=cost, clock=lambda: now[0])
    assert r.trace.halt_reason == 'error'
    assert cost.per_input_ms == pytest.approx(42.5 + 0.5 * (40.0 - 42.5))
    fixed = StepCostMeter(1.0, learn=False, per_input_ms=2.0)
    refine(plugin, None, config=cfg, cost=fixed, clock=lambda: now[0])
    assert fixed.per_input_ms == 2.0


class _SlowInit(SmoothingFixture):
    """Test fixture: 20 ms to encode an input, 2 ms per step (sleeps, so no CPU is needed)."""

    def init_state(self, x0, ctx=None):
        time.sleep(0.020)
        return super().init_state(x0, ctx)

    def step(self, state, schedule):
        time.sleep(0.002)
        return super().step(state, schedule)


@pytest.mark.parametrize('calibrated', [True, False], ids=['calibrated', 'learned'])
def test_atp_spent_tracks_wall_time_with_an_expensive_init(calibrated):
    plugin = _SlowInit()
    xs = _signals(6)
    cost = StepCostMeter()
    if calibrated:
        cost.calibrate(plugin, xs[0], steps=4, warmup=1)
    else:
        refine(plugin, xs[0], config=HaltConfig(max_steps=3), cost=cost)  # learns from a run
    atp = wall = 0.0
    for i, x in enumerate(xs[1:]):
        r = refine(plugin, x, config=HaltConfig(eps=0.0, max_steps=2 + 3 * i), cost=cost)
        atp += r.trace.atp_spent
        wall += r.trace.time_ms
        assert r.trace.atp_input >= 18.0  # the encoding is paid for, not only the steps
    assert 0.8 <= atp / wall <= 1.2, (atp, wall)
