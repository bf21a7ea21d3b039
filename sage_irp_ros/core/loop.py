"""The refinement loop, written once for every plugin (IRP_SPEC sections 2 and 3).

``refine`` drives a plugin: init, then (halt check, step, project, energy) until a halting rule
fires, then result. It keeps all per-run data in local variables, so any number of runs of one
plugin instance may proceed at once in different threads.

ATP: a run is charged the plugin's fixed per-input price when it starts (as much of it as the
account can pay), then the step price before each step; afterwards the meter learns both from
what the run measured, so the ATP a run spends tracks its wall time. With ``skip_unpaid`` (what
the node host uses) an input whose account cannot pay the whole per-input price, a zero grant
among them, is not run at all: ``refine`` returns None without calling the plugin, so no input is
encoded, answered or refined on compute nobody granted.

Halting is checked before every step (so a run of zero steps is valid), first match wins:
``budget``, ``timeout``, ``manual``, the plugin's own reason, ``slope<eps``, ``max_steps``.
A step that raises, or an energy that is not finite, ends the run with ``error``; the output is
then decoded from the last good state, and every number the run reports stays finite.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence

from sage_irp_ros.core.budget import Budget, StepCostMeter
from sage_irp_ros.core.plugin import (
    HALT_BUDGET,
    HALT_ERROR,
    HALT_MANUAL,
    HALT_MAX_STEPS,
    HALT_SLOPE,
    HALT_TIMEOUT,
    PLUGIN_HALT_REASONS,
    HaltConfig,
    IRPPlugin,
    IRPState,
    Schedule,
)
from sage_irp_ros.core.trust import TrustMetrics, trust_metrics


@dataclass
class Trace:
    """What happened in one run: energies, step times, halting reason, spend.

    ``atp_spent`` is everything the run was charged: ``atp_input`` (the per-input price, or what
    the account could pay of it) plus the step prices.
    """

    energies: List[float] = field(default_factory=list)
    step_ms: List[float] = field(default_factory=list)
    halt_reason: Optional[str] = None
    error: Optional[str] = None
    atp_spent: float = 0.0
    atp_input: float = 0.0
    atp_granted: Optional[float] = None
    time_ms: float = 0.0
    t_start: float = 0.0

    @property
    def steps(self) -> int:
        """Steps actually run (and kept)."""
        return max(len(self.energies) - 1, 0)

    @property
    def energy(self) -> float:
        """Final energy (0.0 when not even the initial energy was finite)."""
        return self.energies[-1] if self.energies else 0.0

    @property
    def d_energy(self) -> float:
        """Last energy change (0.0 for fewer than one step)."""
        return self.energies[-1] - self.energies[-2] if len(self.energies) >= 2 else 0.0

    def trust(self) -> TrustMetrics:
        """Trust metrics of the run."""
        return trust_metrics(self.energies)


@dataclass
class RefineResult:
    """The output of a run, its final state and its trace."""

    output: Any
    state: Optional[IRPState]
    trace: Trace

    def __iter__(self):
        """Unpack as ``(output, trace)``, the spec's ``refine`` signature."""
        return iter((self.output, self.trace))


def _slope_halts(energies: List[float], k: int, eps_abs: float) -> bool:
    if len(energies) - 1 < k:
        return False
    return (energies[-1 - k] - energies[-1]) / k < eps_abs


def refine(plugin: IRPPlugin, x0: Any, ctx: Optional[Mapping[str, Any]] = None, *,
           config: Optional[HaltConfig] = None, budget: Optional[Budget] = None,
           cost: Optional[StepCostMeter] = None, cancel: Optional[threading.Event] = None,
           deadline: Optional[float] = None,
           clock: Callable[[], float] = time.perf_counter,
           skip_unpaid: bool = False) -> Optional[RefineResult]:
    """Refine ``x0`` with ``plugin`` until a halting rule fires.

    Parameters
    ----------
    plugin, x0, ctx:
        The refiner, its input and optional context (passed to ``init_state``).
    config:
        Halting parameters; ``HaltConfig()`` when None.
    budget:
        The ATP account to draw from; unlimited when None. Read before every step.
    cost:
        The plugin's cost meter: its per-input price is charged when the run starts (as far as
        the budget goes; never more than granted) and its step price before each step. It learns
        from the measured step times and, after the run, from the run's non-step time
        (``time_ms`` minus the time of its steps). A private meter when None.
    cancel:
        Set it to stop the run at the next check (reason ``manual``).
    deadline:
        Absolute ``clock()`` time by which the run must end; the budget's deadline applies too.
        A step is not started when the price of one step would overrun it.
    clock:
        Time source in seconds (``time.perf_counter``).
    skip_unpaid:
        When true, the run starts only if the budget pays the whole per-input price
        (:meth:`Budget.try_charge_input`; a budget with nothing left pays none): otherwise
        nothing is charged, the plugin is not called and the result is None (the input is
        dropped for want of budget). When false (the default), the run always starts and is
        charged as much of the per-input price as the budget can pay.

    Exceptions from ``init_state`` propagate (the input could not be encoded; the per-input
    charge is refunded); everything after it ends in a result.

    """
    config = config or HaltConfig()
    budget = budget if budget is not None else Budget()
    cost = cost if cost is not None else StepCostMeter()
    trace = Trace(t_start=clock())
    if not _pay_input(trace, budget, cost, skip_unpaid):
        return None
    try:
        state = plugin.project(plugin.init_state(x0, ctx))
    except BaseException:
        budget.refund(trace.atp_input)  # the run never started: nothing to pay for
        raise
    good = state
    step_time = 0.0  # seconds in steps, failed ones included (the rest is per-input time)
    try:
        e0 = float(plugin.energy(state))
    except Exception as exc:  # noqa: BLE001 - a plugin error ends the run, never the caller
        e0 = math.nan
        trace.error = f'energy of the initial state raised {type(exc).__name__}: {exc}'
    if not math.isfinite(e0):
        trace.halt_reason = HALT_ERROR
        trace.error = trace.error or f'initial energy is not finite ({e0})'
    else:
        trace.energies.append(e0)
        eps_abs = config.eps * plugin.energy_scale(e0)
        while trace.halt_reason is None:
            try:
                trace.halt_reason = _check(plugin, state, trace, config, budget, cost, cancel,
                                           deadline, clock, eps_abs)
            except Exception as exc:  # noqa: BLE001 - a bad halt() ends the run, not the caller
                trace.halt_reason = HALT_ERROR
                trace.error = f'halt check raised {type(exc).__name__}: {exc}'
            if trace.halt_reason is not None:
                break
            price = cost.per_step_ms
            if not budget.try_charge(price):  # lost a race with another run on the account
                trace.halt_reason = HALT_BUDGET
                break
            trace.atp_spent += price
            sched = _schedule(trace, budget, price, config)
            t = clock()
            try:
                state = plugin.project(plugin.step(state, sched))
                e = float(plugin.energy(state))
            except Exception as exc:  # noqa: BLE001 - a plugin error ends the run, never the caller
                step_time += clock() - t
                trace.halt_reason = HALT_ERROR
                trace.error = f'step {sched.step_idx} raised {type(exc).__name__}: {exc}'
                break
            dt = clock() - t
            step_time += dt
            dt_ms = dt * 1e3
            cost.update(dt_ms)
            trace.step_ms.append(dt_ms)
            if not math.isfinite(e):
                trace.halt_reason = HALT_ERROR
                trace.error = f'energy became non-finite ({e}) at step {sched.step_idx}'
                break
            trace.energies.append(e)
            good = state
    return _finish(plugin, good, trace, budget, cost, clock, step_time)


def _pay_input(trace: Trace, budget: Budget, cost: StepCostMeter, skip_unpaid: bool) -> bool:
    """Charge a run's per-input price to ``budget`` and ``trace``; False: not paid, not run.

    ``skip_unpaid``: the whole price or nothing (:meth:`Budget.try_charge_input`); else as much
    of it as the budget can pay.
    """
    if skip_unpaid:
        if not budget.try_charge_input(cost.per_input_ms):
            return False
        trace.atp_input = cost.per_input_ms
    else:
        trace.atp_input = budget.charge_up_to(cost.per_input_ms)
    trace.atp_spent += trace.atp_input
    return True


def _schedule(trace: Trace, budget: Budget, price: float, config: HaltConfig) -> Schedule:
    """Return what the next step may know: its index, the cap, the steps the budget allows."""
    steps_left = min(budget.steps_affordable(price) + 1, config.max_steps - trace.steps)
    return Schedule(step_idx=trace.steps, max_steps=config.max_steps,
                    steps_left=max(steps_left, 1),
                    noise_level=1.0 - trace.steps / max(config.max_steps, 1))


def _finish(plugin, good, trace, budget, cost, clock, step_time) -> RefineResult:
    """Decode the last good state, close the trace and teach the meter the per-input time."""
    trace.atp_granted = None if budget.unlimited else budget.granted
    try:
        output = plugin.result(good)
    except Exception as exc:  # noqa: BLE001 - a plugin error ends the run, never the caller
        output = None
        trace.halt_reason = HALT_ERROR
        trace.error = f'result raised {type(exc).__name__}: {exc}'
    trace.time_ms = (clock() - trace.t_start) * 1e3
    cost.update_input(max(trace.time_ms - step_time * 1e3, 0.0))
    return RefineResult(output=output, state=good, trace=trace)


class _Run:
    """One input's bookkeeping inside :func:`refine_batch`."""

    def __init__(self, index, state, trace, budget, deadline):
        self.index, self.state, self.good, self.trace = index, state, state, trace
        self.budget, self.deadline, self.eps_abs, self.step_time = budget, deadline, 0.0, 0.0


def refine_batch(plugin: IRPPlugin, xs: Sequence[Any],
                 ctxs: Optional[Sequence[Optional[Mapping[str, Any]]]] = None, *,
                 config: Optional[HaltConfig] = None,
                 budgets: Optional[Sequence[Budget]] = None,
                 cost: Optional[StepCostMeter] = None, cancel: Optional[threading.Event] = None,
                 deadline: Optional[float] = None,
                 deadlines: Optional[Sequence[Optional[float]]] = None,
                 clock: Callable[[], float] = time.perf_counter,
                 on_result: Optional[Callable[[int, RefineResult], None]] = None,
                 skip_unpaid: bool = False) -> List[Optional[RefineResult]]:
    """Refine several inputs together: one batched step per round, each input halting alone.

    The same rules as :func:`refine`, per input: each run has its own trace, its own budget
    (``budgets[i]``; unlimited when None) and its own halting checks before every step. The
    runs still going take their next step together through ``plugin.step_batch`` and are
    scored together through ``plugin.energies`` (a plugin that batches does one launch and one
    host sync for all of them; the defaults step and score one by one). A run that halts leaves
    the batch at once: it is decoded, and ``on_result(i, result)`` is called before the others
    step again, so a finished input is answered without waiting for the slowest.

    Every run is charged the meter's step price per round, and the meter learns the round's
    time divided by the runs in it (the price of a step in a batch of that size). An input
    whose ``init_state`` raises, or a batched step that raises, ends those runs with ``error``
    (the batch's error ends every run in it; each is decoded from its last good state).
    ``deadlines`` gives each input its own deadline (else ``deadline`` applies to all);
    ``skip_unpaid`` as in :func:`refine`: an input whose budget cannot pay the whole per-input
    price is not run, and its result is None (``on_result`` is not called for it). Returns the
    results in input order.
    """
    config = config or HaltConfig()
    cost = cost if cost is not None else StepCostMeter()
    n = len(xs)
    ctxs = list(ctxs) if ctxs is not None else [None] * n
    budgets = list(budgets) if budgets is not None else [Budget() for _ in range(n)]
    deadlines = list(deadlines) if deadlines is not None else [deadline] * n
    if len(ctxs) != n or len(budgets) != n or len(deadlines) != n:
        raise ValueError(f'{n} inputs need {n} contexts, budgets and deadlines, got '
                         f'{len(ctxs)}, {len(budgets)} and {len(deadlines)}')
    results: List[Optional[RefineResult]] = [None] * n
    active: List[_Run] = []

    def done(run: _Run) -> None:
        results[run.index] = res = _finish(plugin, run.good, run.trace, run.budget, cost, clock,
                                           run.step_time)
        if on_result is not None:
            on_result(run.index, res)

    for i, (x0, ctx, budget) in enumerate(zip(xs, ctxs, budgets, strict=True)):
        trace = Trace(t_start=clock())
        if not _pay_input(trace, budget, cost, skip_unpaid):
            continue  # not run: its result stays None
        try:
            state = plugin.project(plugin.init_state(x0, ctx))
        except Exception as exc:  # noqa: BLE001 - one bad input must not end the others
            budget.refund(trace.atp_input)
            trace.atp_spent = trace.atp_input = 0.0
            trace.halt_reason = HALT_ERROR
            trace.error = f'init_state raised {type(exc).__name__}: {exc}'
            results[i] = res = RefineResult(output=None, state=None, trace=trace)
            if on_result is not None:
                on_result(i, res)
            continue
        active.append(_Run(i, state, trace, budget, deadlines[i]))
    if active:
        try:
            e0s = [float(e) for e in plugin.energies([r.state for r in active])]
        except Exception as exc:  # noqa: BLE001
            e0s = [math.nan] * len(active)
            for r in active:
                r.trace.error = f'energy of the initial state raised {type(exc).__name__}: {exc}'
        for r, e0 in zip(active, e0s, strict=True):
            if not math.isfinite(e0):
                r.trace.halt_reason = HALT_ERROR
                r.trace.error = r.trace.error or f'initial energy is not finite ({e0})'
            else:
                r.trace.energies.append(e0)
                r.eps_abs = config.eps * plugin.energy_scale(e0)
    while active:
        going, scheds = [], []
        for r in active:
            if r.trace.halt_reason is None:
                try:
                    r.trace.halt_reason = _check(plugin, r.state, r.trace, config, r.budget,
                                                 cost, cancel, r.deadline, clock, r.eps_abs)
                except Exception as exc:  # noqa: BLE001
                    r.trace.halt_reason = HALT_ERROR
                    r.trace.error = f'halt check raised {type(exc).__name__}: {exc}'
            if r.trace.halt_reason is None:
                price = cost.per_step_ms
                if not r.budget.try_charge(price):
                    r.trace.halt_reason = HALT_BUDGET
            if r.trace.halt_reason is not None:
                done(r)
                continue
            r.trace.atp_spent += price
            scheds.append(_schedule(r.trace, r.budget, price, config))
            going.append(r)
        active = going
        if not active:
            break
        t = clock()
        try:
            states = plugin.step_batch([r.state for r in active], scheds)
            states = [plugin.project(s) for s in states]
            es = [float(e) for e in plugin.energies(states)]
        except Exception as exc:  # noqa: BLE001 - a plugin error ends the runs, never the caller
            dt = clock() - t
            for r in active:
                r.step_time += dt / len(active)
                r.trace.halt_reason = HALT_ERROR
                r.trace.error = (f'batched step {r.trace.steps} raised '
                                 f'{type(exc).__name__}: {exc}')
                done(r)
            break
        dt_ms = (clock() - t) * 1e3 / len(active)
        cost.update(dt_ms)
        for r, state, e in zip(active, states, es, strict=True):
            r.step_time += dt_ms * 1e-3
            r.trace.step_ms.append(dt_ms)
            r.state = state
            if not math.isfinite(e):
                r.trace.halt_reason = HALT_ERROR
                r.trace.error = f'energy became non-finite ({e}) at step {r.trace.steps}'
                continue
            r.trace.energies.append(e)
            r.good = state
        still = []
        for r in active:
            if r.trace.halt_reason is not None:
                done(r)
            else:
                still.append(r)
        active = still
    return results


def _check(plugin, state, trace, config, budget, cost, cancel, deadline, clock, eps_abs):
    """Return the first halting reason that applies before the next step, or None."""
    price = cost.per_step_ms
    if budget.steps_affordable(price) < 1:
        return HALT_BUDGET
    limits = [d for d in (deadline, budget.deadline) if d is not None]
    if limits and clock() + price * 1e-3 > min(limits):
        return HALT_TIMEOUT
    if cancel is not None and cancel.is_set():
        return HALT_MANUAL
    own = plugin.halt(state, trace.energies)
    if own is not None:
        if own not in PLUGIN_HALT_REASONS:
            raise ValueError(f'{type(plugin).__name__}.halt returned {own!r}; '
                             f'allowed: {PLUGIN_HALT_REASONS}')
        return own
    if _slope_halts(trace.energies, config.K, eps_abs):
        return HALT_SLOPE
    if trace.steps >= config.max_steps:
        return HALT_MAX_STEPS
    return None
