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
from typing import Any, Callable, List, Mapping, Optional

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
    if skip_unpaid:
        per_input = cost.per_input_ms
        if not budget.try_charge_input(per_input):
            return None
        trace.atp_input = per_input
    else:
        trace.atp_input = budget.charge_up_to(cost.per_input_ms)
    trace.atp_spent += trace.atp_input
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
            steps_left = min(budget.steps_affordable(price) + 1, config.max_steps - trace.steps)
            sched = Schedule(step_idx=trace.steps, max_steps=config.max_steps,
                             steps_left=max(steps_left, 1),
                             noise_level=1.0 - trace.steps / max(config.max_steps, 1))
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
