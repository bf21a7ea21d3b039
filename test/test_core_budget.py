"""ATP accounting: prices, grants, top-ups, and the promise never to overspend."""

import math
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted import ScriptedPlugin, geometric

from sage_irp_ros.core import Budget, HaltConfig, StepCostMeter, refine
from sage_irp_ros.plugins.fixture import SmoothingFixture


def test_meter_learns_an_ema_and_ignores_garbage():
    m = StepCostMeter(initial_ms=5.0, alpha=0.5)
    m.update(2.0)  # the first measurement replaces the guess
    assert m.per_step_ms == 2.0
    m.update(4.0)
    assert m.per_step_ms == 3.0
    for bad in (math.nan, math.inf, -1.0):
        m.update(bad)
    assert m.per_step_ms == 3.0 and m.samples == 2


def test_meter_calibrates_from_real_steps():
    m = StepCostMeter()
    ms = m.calibrate(SmoothingFixture(), [0.0, 1.0, 0.0, 1.0] * 64, steps=5)
    assert 0 < ms < 50 and m.per_step_ms == ms and m.samples == 5


def test_calibration_price_ignores_pauses_from_other_processes():
    class Paused(SmoothingFixture):
        calls = 0

        def step(self, state, schedule):
            Paused.calls += 1
            if Paused.calls % 3 == 0:
                time.sleep(0.05)  # another process took the core
            return super().step(state, schedule)

    ms = StepCostMeter().calibrate(Paused(), [0.0, 1.0] * 64, steps=8, warmup=1)
    assert ms < 20  # the lower quartile is an unpaused step, not a 50 ms pause


def test_meter_rejects_bad_config():
    with pytest.raises(ValueError):
        StepCostMeter(initial_ms=0.0)
    with pytest.raises(ValueError):
        StepCostMeter(alpha=0.0)


def test_budget_accounting():
    b = Budget(10.0, step_cap=3)
    assert b.steps_affordable(3.0) == 3
    assert b.try_charge(4.0) and b.spent == 4.0 and b.remaining == 6.0
    assert b.steps_affordable(4.0) == 1
    assert b.try_charge(4.0) and not b.try_charge(4.0)
    b.top_up(10.0)
    assert b.try_charge(4.0) and not b.try_charge(1.0)  # step cap of 3 reached
    with pytest.raises(ValueError):
        Budget(-1.0)
    with pytest.raises(ValueError):
        b.top_up(math.nan)


@given(granted=st.floats(0, 200), price=st.floats(0.01, 20),
       topups=st.lists(st.floats(0, 20), max_size=5))
@settings(max_examples=200, deadline=None)
def test_runs_never_spend_more_than_granted(granted, price, topups):
    budget = Budget(granted)
    cost = StepCostMeter(price, learn=False)
    ups = list(topups)

    def on_step(i):
        if ups:
            budget.top_up(ups.pop())

    r = refine(ScriptedPlugin(geometric(1000), on_step=on_step), None,
               config=HaltConfig(eps=0.0, max_steps=1000), budget=budget, cost=cost)
    assert r.trace.atp_spent <= budget.granted + 1e-6
    assert r.trace.steps == round(r.trace.atp_spent / price)
    if r.trace.halt_reason == 'budget':
        assert budget.remaining < price + 1e-6


def test_concurrent_charges_are_atomic():
    b = Budget(1000.0)
    ok = []

    def worker():
        n = 0
        while b.try_charge(1.0):
            n += 1
        ok.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(ok) == 1000 and b.spent == 1000.0


def test_meter_learns_the_per_input_price_as_an_ema():
    m = StepCostMeter(initial_ms=1.0, alpha=0.5, per_input_ms=7.0)
    assert m.per_input_ms == 7.0 and m.input_samples == 0
    m.update_input(20.0)  # the first measurement replaces the initial value
    assert m.per_input_ms == 20.0
    m.update_input(30.0)
    assert m.per_input_ms == 25.0
    for bad in (math.nan, math.inf, -1.0):
        m.update_input(bad)
    assert m.per_input_ms == 25.0 and m.input_samples == 2
    assert m.per_step_ms == 1.0 and m.samples == 0  # the step price is its own estimate
    fixed = StepCostMeter(2.0, learn=False, per_input_ms=5.0)
    fixed.update_input(50.0)
    fixed.update(9.0)
    assert (fixed.per_input_ms, fixed.per_step_ms) == (5.0, 2.0)
    assert StepCostMeter().per_input_ms == 0.0  # unknown until measured
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            StepCostMeter(per_input_ms=bad)


class SlowInit(SmoothingFixture):
    """Test fixture: an expensive encoding (``init_ms``) and a fixed step time (``step_ms``)."""

    def __init__(self, init_ms=20.0, step_ms=2.0):
        super().__init__()
        self.init_ms, self.step_ms = init_ms, step_ms

    def init_state(self, x0, ctx=None):
        time.sleep(self.init_ms * 1e-3)
        return super().init_state(x0, ctx)

    def step(self, state, schedule):
        time.sleep(self.step_ms * 1e-3)
        return super().step(state, schedule)


def test_calibrate_measures_the_per_input_price_too():
    m = StepCostMeter(learn=False)
    step = m.calibrate(SlowInit(20.0, 2.0), [0.0, 1.0] * 64, steps=4, warmup=1)
    assert step == m.per_step_ms and 2.0 <= step < 6.0
    assert 20.0 <= m.per_input_ms < 30.0 and m.input_samples == 4


def test_charge_up_to_pays_what_the_account_allows_and_is_not_a_step():
    b = Budget(10.0, step_cap=2)
    assert b.charge_up_to(3.0) == 3.0 and b.spent == 3.0
    assert b.steps_affordable(1.0) == 2  # the step cap is untouched
    assert b.charge_up_to(100.0) == pytest.approx(7.0) and b.remaining == 0.0
    assert b.charge_up_to(1.0) == 0.0 and b.spent == pytest.approx(10.0)
    b.refund(4.0)
    assert b.spent == pytest.approx(6.0)
    u = Budget()
    assert u.charge_up_to(5.0) == 5.0 and u.spent == 5.0
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            b.charge_up_to(bad)
        with pytest.raises(ValueError):
            b.refund(bad)


@given(granted=st.floats(0, 200), price=st.floats(0.01, 20), per_input=st.floats(0, 50),
       topups=st.lists(st.floats(0, 20), max_size=5))
@settings(max_examples=200, deadline=None)
def test_runs_with_a_per_input_price_never_spend_more_than_granted(granted, price, per_input,
                                                                   topups):
    budget = Budget(granted)
    cost = StepCostMeter(price, learn=False, per_input_ms=per_input)
    ups = list(topups)

    def on_step(i):
        if ups:
            budget.top_up(ups.pop())

    r = refine(ScriptedPlugin(geometric(1000), on_step=on_step), None,
               config=HaltConfig(eps=0.0, max_steps=1000), budget=budget, cost=cost)
    t = r.trace
    assert t.atp_spent <= budget.granted + 1e-6 and t.atp_spent == pytest.approx(budget.spent)
    assert t.atp_input == pytest.approx(min(per_input, granted))
    assert t.steps == round((t.atp_spent - t.atp_input) / price)
    if t.halt_reason == 'budget':
        assert budget.remaining < price + 1e-6


def test_meter_copy_keeps_prices_and_goes_on_as_an_ema():
    m = StepCostMeter(alpha=0.5)
    m.update(4.0)
    m.update_input(10.0)
    c = m.copy()
    assert (c.per_step_ms, c.per_input_ms, c.samples, c.input_samples) == (4.0, 10.0, 1, 1)
    c.update(8.0)
    c.update_input(20.0)
    assert (c.per_step_ms, c.per_input_ms) == (6.0, 15.0)  # an EMA, not a replacement
    assert (m.per_step_ms, m.per_input_ms) == (4.0, 10.0)  # the original is untouched
    fixed = m.copy(learn=False)
    fixed.update(100.0)
    fixed.update_input(100.0)
    assert (fixed.per_step_ms, fixed.per_input_ms) == (4.0, 10.0)


class CountingInit(SmoothingFixture):
    """Test fixture: counts the inputs it was asked to encode."""

    def __init__(self):
        super().__init__()
        self.encoded = 0

    def init_state(self, x0, ctx=None):
        self.encoded += 1
        return super().init_state(x0, ctx)


def test_try_charge_input_pays_the_whole_price_or_nothing():
    b = Budget(10.0, step_cap=1)
    assert b.try_charge_input(4.0) and b.spent == 4.0
    assert b.steps_affordable(1.0) == 1  # not a step
    assert not b.try_charge_input(7.0) and b.spent == 4.0  # 6 left: nothing charged
    assert b.try_charge_input(6.0) and b.remaining == 0.0
    assert not b.try_charge_input(0.0)  # nothing left: not even a free input
    assert not Budget(0.0).try_charge_input(0.0)
    u = Budget()
    assert u.try_charge_input(5.0) and u.spent == 5.0
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            b.try_charge_input(bad)


@pytest.mark.parametrize('granted', [0.0, 2.9])
def test_an_input_its_grant_cannot_pay_is_not_run_at_all(granted):
    """Issue #11: a run on a zero (or too small) grant must not encode and answer for free."""
    plugin = CountingInit()
    budget = Budget(granted)
    cost = StepCostMeter(1.0, learn=False, per_input_ms=3.0)
    assert refine(plugin, [0.0, 1.0, 0.0, 1.0], budget=budget, cost=cost,
                  skip_unpaid=True) is None
    assert plugin.encoded == 0 and budget.spent == 0.0
    # Without skip_unpaid the run starts anyway (tools, evaluation), paying what it can.
    r = refine(plugin, [0.0, 1.0, 0.0, 1.0], budget=budget, cost=cost)
    assert plugin.encoded == 1 and r.trace.atp_input == pytest.approx(granted)


def test_a_paid_input_is_charged_its_whole_price():
    plugin = CountingInit()
    budget = Budget(5.0)
    cost = StepCostMeter(1.0, learn=False, per_input_ms=3.0)
    r = refine(plugin, [0.0, 1.0, 0.0, 1.0], budget=budget, cost=cost,
               config=HaltConfig(eps=0.0, max_steps=10), skip_unpaid=True)
    assert plugin.encoded == 1 and r.trace.atp_input == 3.0
    assert r.trace.steps == 2 and r.trace.atp_spent == pytest.approx(5.0) == budget.spent
    # The account is spent: the next input on it is dropped, not answered on credit.
    assert refine(plugin, [0.0, 1.0], budget=budget, cost=cost, skip_unpaid=True) is None
    assert plugin.encoded == 1


class Cycles:
    """A node's held grant as cycles pass: ``current()`` is this cycle's account."""

    def __init__(self, atp, n, period_s=0.03):
        self.accounts = [Budget(atp) for _ in range(n)]
        self.i, self.alive = 0, True
        self.period = period_s
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while self.i < len(self.accounts) - 1:
            time.sleep(self.period)
            self.i += 1

    def current(self):
        return self.accounts[self.i] if self.alive else None


def test_a_patient_budget_draws_on_cycle_after_cycle():
    from sage_irp_ros.core.budget import PatientBudget
    cycles = Cycles(atp=2.0, n=5)
    budget = PatientBudget(cycles.current, patience_s=2.0)
    r = refine(ScriptedPlugin(geometric(12)), None,
               config=HaltConfig(eps=0.0, max_steps=9), budget=budget,
               cost=StepCostMeter(1.0, learn=False))
    # 2 ATP per cycle, 1 per step: a plain budget of one cycle halts after 2 steps
    assert r.trace.steps == 9 and r.trace.halt_reason == 'max_steps'
    assert budget.cycles == 5 and budget.waited_s > 0.05
    assert math.isclose(budget.spent, 9.0) and r.trace.atp_spent == 9.0
    assert all(a.spent <= a.granted for a in cycles.accounts)
    plain = refine(ScriptedPlugin(geometric(12)), None, config=HaltConfig(eps=0.0, max_steps=9),
                   budget=Budget(2.0), cost=StepCostMeter(1.0, learn=False))
    assert plain.trace.steps == 2 and plain.trace.halt_reason == 'budget'


def test_a_patient_budget_gives_up_without_a_grant_or_when_stopped():
    from sage_irp_ros.core.budget import PatientBudget
    cfg, cost = HaltConfig(eps=0.0, max_steps=9), StepCostMeter(1.0, learn=False)
    acc = Budget(2.0)
    t = time.monotonic()
    r = refine(ScriptedPlugin(geometric(12)), None, config=cfg, cost=cost,
               budget=PatientBudget(lambda: acc, patience_s=0.2))
    assert r.trace.steps == 2 and r.trace.halt_reason == 'budget'
    assert 0.2 <= time.monotonic() - t < 1.5          # waited its patience, no longer
    r = refine(ScriptedPlugin(geometric(12)), None, config=cfg, cost=cost,
               budget=PatientBudget(lambda: None, patience_s=5.0))
    assert r.trace.steps == 0 and r.trace.halt_reason == 'budget'  # no grant: no wait
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    t = time.monotonic()
    spent = Budget(0.0)
    r = refine(ScriptedPlugin(geometric(12)), None, config=cfg, cost=cost,
               budget=PatientBudget(lambda: spent, patience_s=5.0, stop=stop.is_set))
    assert r.trace.steps == 0 and r.trace.halt_reason == 'budget'
    assert 0.05 < time.monotonic() - t < 2.0         # stopped waiting when told to
    with pytest.raises(TypeError):
        PatientBudget(lambda: acc).top_up(1.0)


def gappy_cycles(gap, atp=2.0, period_s=0.03):
    """``current()`` of a cycle of ``atp`` per ``period_s``, with no grant in the ``gap`` (s)."""
    t0, accounts = time.monotonic(), {}

    def current():
        t = time.monotonic() - t0
        if gap[0] <= t < gap[1]:
            return None
        return accounts.setdefault(int(t / period_s), Budget(atp))
    return current


def test_a_patient_budget_waits_out_a_late_grant_but_not_a_gone_orchestrator():
    """A gap in the grants shorter than ``absent_s`` (a loaded machine) does not end the run."""
    from sage_irp_ros.core.budget import PatientBudget
    cfg, cost = HaltConfig(eps=0.0, max_steps=9), StepCostMeter(1.0, learn=False)
    r = refine(ScriptedPlugin(geometric(12)), None, config=cfg, cost=cost,
               budget=PatientBudget(gappy_cycles((0.1, 0.3)), patience_s=2.0, absent_s=1.0))
    assert r.trace.steps == 9 and r.trace.halt_reason == 'max_steps'
    # the same gap ends a run that takes any absence for a gone orchestrator
    r = refine(ScriptedPlugin(geometric(12)), None, config=cfg, cost=cost,
               budget=PatientBudget(gappy_cycles((0.1, 0.3)), patience_s=2.0))
    assert 1 <= r.trace.steps < 9 and r.trace.halt_reason == 'budget'
    t = time.monotonic()
    r = refine(ScriptedPlugin(geometric(12)), None, config=cfg, cost=cost,
               budget=PatientBudget(lambda: None, patience_s=5.0, absent_s=0.2))
    assert r.trace.steps == 0 and r.trace.halt_reason == 'budget'
    assert 0.15 < time.monotonic() - t < 1.5  # gone for absent_s: stops, long before patience
    with pytest.raises(ValueError):
        PatientBudget(lambda: None, absent_s=-1.0)
