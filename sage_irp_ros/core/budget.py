"""ATP accounting (IRP_SPEC section 6).

1 ATP is 1 ms of a plugin's measured compute on its own device. A :class:`StepCostMeter` keeps
two prices, both running means of measured times: the price of one *step*, and the fixed price
of one *input* (everything of a run that is not a step: encoding the input, the initial energy,
the halting checks, decoding the result). A :class:`Budget` is an account the loop draws from:
it charges the per-input price when a run starts (as much of it as the account can pay; or,
for the nodes' runs, the whole price or the run does not start:
:meth:`Budget.try_charge_input`) and the step price before each step, so a run never spends
more than its grant and the ATP it spends tracks the time it takes; it reads the account every
step, so a grant raised mid-run (a top-up) takes effect at the next step.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional


class StepCostMeter:
    """Running estimate of one plugin's costs in ms (thread-safe): per step and per input.

    Each estimate is an exponential moving average (weight ``alpha``) of measured times: step
    times for :attr:`per_step_ms`, and the non-step time of whole runs (run time minus its
    steps) for :attr:`per_input_ms`. Before any measurement they are ``initial_ms`` and
    ``per_input_ms``; :meth:`calibrate` fills both from real calls at start-up.
    """

    def __init__(self, initial_ms: float = 1.0, alpha: float = 0.1, learn: bool = True,
                 per_input_ms: float = 0.0):
        """Create a meter: first prices ``initial_ms`` per step, ``per_input_ms`` per input.

        ``alpha`` is the EMA weight. With ``learn=False`` both prices stay as given (a fixed
        tariff: deterministic accounting for tests and for comparing allocation policies on the
        same inputs).
        """
        if not (initial_ms > 0 and math.isfinite(initial_ms)):
            raise ValueError(f'initial_ms must be a positive finite number, got {initial_ms!r}')
        if not (per_input_ms >= 0 and math.isfinite(per_input_ms)):
            raise ValueError(f'per_input_ms must be a finite number >= 0, got {per_input_ms!r}')
        if not 0 < alpha <= 1:
            raise ValueError(f'alpha must be in (0, 1], got {alpha!r}')
        self._ms = float(initial_ms)
        self._input_ms = float(per_input_ms)
        self._alpha = float(alpha)
        self._count = 0
        self._input_count = 0
        self._learn = bool(learn)
        self._lock = threading.Lock()

    @property
    def per_step_ms(self) -> float:
        """The current price of one step, in ms (= ATP)."""
        with self._lock:
            return self._ms

    @property
    def per_input_ms(self) -> float:
        """The fixed price of one input (a run's cost beyond its steps), in ms (= ATP)."""
        with self._lock:
            return self._input_ms

    @property
    def samples(self) -> int:
        """How many step times have been measured."""
        with self._lock:
            return self._count

    @property
    def input_samples(self) -> int:
        """How many per-input (non-step) times have been measured."""
        with self._lock:
            return self._input_count

    def copy(self, learn: Optional[bool] = None) -> 'StepCostMeter':
        """Return a new meter with this one's prices and sample counts (``learn`` as given).

        A copy that learns goes on from these prices as an EMA (its first measurement does not
        replace them): several runs or policies can start from one measured meter.
        """
        with self._lock:
            m = StepCostMeter(self._ms, self._alpha, self._learn if learn is None else learn,
                              self._input_ms)
            m._count, m._input_count = self._count, self._input_count
        return m

    def update(self, step_ms: float) -> None:
        """Fold one measured step time (ms) into the estimate; ignores non-finite values."""
        if not (self._learn and math.isfinite(step_ms) and step_ms >= 0):
            return
        with self._lock:
            self._ms = self._fold(self._ms, self._count, max(step_ms, 1e-6))
            self._count += 1

    def update_input(self, input_ms: float) -> None:
        """Fold one run's measured non-step time (ms) into the per-input price.

        Ignores non-finite and negative values; the first measurement replaces the initial
        value, as for steps.
        """
        if not (self._learn and math.isfinite(input_ms) and input_ms >= 0):
            return
        with self._lock:
            self._input_ms = self._fold(self._input_ms, self._input_count, input_ms)
            self._input_count += 1

    def _fold(self, price: float, count: int, measured: float) -> float:
        """EMA step: the first measurement replaces the initial price, later ones blend in."""
        return measured if count == 0 else price + self._alpha * (measured - price)

    def calibrate(self, plugin, x0, ctx=None, steps: int = 8, warmup: int = 2) -> float:
        """Time ``plugin`` on ``x0`` repeatedly; set both prices from it; return the step price.

        The per-input price is the time of ``init_state`` + ``project`` + ``energy`` +
        ``result`` (a run of zero steps). The step price is the time of the first step; every
        repetition steps from the same initial state, so the price is the cost of a real step
        even for plugins whose later steps can be cheap (a text already filled) or empty.
        ``warmup`` repetitions run untimed first (caches, lazy initialisation). Each price is the
        lower quartile of the ``steps`` timed ones: the call's own cost, without the pauses
        another process on the same cores adds to some of them (start-up, when several nodes
        load at once, is when that happens most). Sets the prices even with ``learn=False``
        (calibrating is how a fixed tariff is measured). Returns the new step price in ms.
        """
        from sage_irp_ros.core.plugin import Schedule
        state0 = plugin.project(plugin.init_state(x0, ctx))
        sched = Schedule(step_idx=0, max_steps=1, steps_left=1, noise_level=1.0)
        times, input_times = [], []
        for i in range(steps + warmup):
            t = time.perf_counter()
            s = plugin.project(plugin.init_state(x0, ctx))
            plugin.energy(s)
            plugin.result(s)
            t1 = time.perf_counter()
            plugin.energy(plugin.project(plugin.step(state0, sched)))
            t2 = time.perf_counter()
            if i >= warmup:
                input_times.append((t1 - t) * 1e3)
                times.append((t2 - t1) * 1e3)
        times.sort()
        input_times.sort()
        price = max(times[len(times) // 4], 1e-6) if times else self.per_step_ms
        input_price = input_times[len(input_times) // 4] if input_times else self.per_input_ms
        with self._lock:
            self._ms = price
            self._input_ms = input_price
            self._count = max(self._count, len(times))
            self._input_count = max(self._input_count, len(input_times))
        return price


class Budget:
    """A thread-safe ATP account a run draws from.

    ``granted`` may be raised at any time (a top-up); the loop reads it before each step.
    ``step_cap`` (0 = none) caps the steps charged to the account; ``deadline`` is an absolute
    ``time.perf_counter()`` value (None = none). One account may fund several runs (one
    allocation cycle of a node); each run also keeps its own spend.
    """

    def __init__(self, granted: float = math.inf, step_cap: int = 0,
                 deadline: Optional[float] = None):
        """Open an account of ``granted`` ATP (``math.inf`` for unlimited)."""
        if math.isnan(granted) or granted < 0:
            raise ValueError(f'granted ATP must be >= 0, got {granted!r}')
        if step_cap < 0:
            raise ValueError(f'step_cap must be >= 0, got {step_cap!r}')
        self._granted = float(granted)
        self._step_cap = int(step_cap)
        self._deadline = deadline
        self._spent = 0.0
        self._steps = 0
        self._lock = threading.Lock()

    @property
    def granted(self) -> float:
        """ATP granted to this account so far (``inf`` when unlimited)."""
        with self._lock:
            return self._granted

    @property
    def spent(self) -> float:
        """ATP charged to this account so far."""
        with self._lock:
            return self._spent

    @property
    def remaining(self) -> float:
        """ATP still available."""
        with self._lock:
            return max(self._granted - self._spent, 0.0)

    @property
    def deadline(self) -> Optional[float]:
        """Absolute ``time.perf_counter()`` deadline, or None."""
        with self._lock:
            return self._deadline

    @property
    def unlimited(self) -> bool:
        """True when the account has no ATP limit."""
        with self._lock:
            return math.isinf(self._granted)

    def steps_affordable(self, price: float) -> int:
        """How many more steps at ``price`` ATP the account (and its step cap) allows."""
        with self._lock:
            if math.isinf(self._granted):
                n = 2 ** 31
            else:
                n = int(math.floor(max(self._granted - self._spent, 0.0) / price + 1e-9))
            if self._step_cap:
                n = min(n, max(self._step_cap - self._steps, 0))
            return n

    def grant(self, granted: float, step_cap: Optional[int] = None,
              deadline: Optional[float] = None) -> None:
        """Set the account's total grant (a larger value is a top-up), cap and deadline."""
        if math.isnan(granted) or granted < 0:
            raise ValueError(f'granted ATP must be >= 0, got {granted!r}')
        with self._lock:
            self._granted = float(granted)
            if step_cap is not None:
                self._step_cap = int(step_cap)
            if deadline is not None:
                self._deadline = deadline

    def top_up(self, atp: float) -> None:
        """Add ``atp`` to the grant."""
        if not (atp >= 0):
            raise ValueError(f'a top-up must be >= 0, got {atp!r}')
        with self._lock:
            self._granted += float(atp)

    def charge_up_to(self, atp: float) -> float:
        """Charge up to ``atp`` ATP (what the account can still pay); return what was charged.

        Not a step: the step cap is not touched. Used for the fixed per-input price of a run,
        which is paid (as far as the grant goes) whether or not any step follows.
        """
        if not (atp >= 0 and math.isfinite(atp)):
            raise ValueError(f'a charge must be a finite number >= 0, got {atp!r}')
        with self._lock:
            amount = min(float(atp), max(self._granted - self._spent, 0.0))
            self._spent += amount
            return amount

    def try_charge_input(self, atp: float) -> bool:
        """Charge a run's whole per-input price ``atp`` if the account can pay it; else nothing.

        Returns whether it charged. An account with nothing left (a zero grant, or one spent)
        pays no input, not even one priced 0: a run on it would encode, decode and answer on
        compute nobody granted. Not a step: the step cap is not touched.
        """
        if not (atp >= 0 and math.isfinite(atp)):
            raise ValueError(f'a charge must be a finite number >= 0, got {atp!r}')
        with self._lock:
            left = self._granted - self._spent
            if not math.isinf(self._granted) and (left <= 1e-9 or float(atp) > left + 1e-9):
                return False
            self._spent += float(atp)
            return True

    def refund(self, atp: float) -> None:
        """Give back ``atp`` ATP charged earlier (a run whose input was refused at once)."""
        if not (atp >= 0 and math.isfinite(atp)):
            raise ValueError(f'a refund must be a finite number >= 0, got {atp!r}')
        with self._lock:
            self._spent = max(self._spent - float(atp), 0.0)

    def try_charge(self, price: float) -> bool:
        """Charge one step of ``price`` ATP if the account allows it; return whether it did."""
        with self._lock:
            if self._step_cap and self._steps >= self._step_cap:
                return False
            if self._spent + price > self._granted + 1e-9:
                return False
            self._spent += price
            self._steps += 1
            return True


class PatientBudget(Budget):
    """An account for background work that outlasts one allocation cycle (the memory's sleep).

    A node's grant is one cycle's account, and a low-priority plugin's share of one cycle may
    pay for less than one step. A run on a ``PatientBudget`` **saves up**: it moves what the
    account ``current()`` returns (the grant the node holds now) still holds into a reserve of
    its own, pays its steps from the reserve, and when the reserve cannot pay the next step it
    waits for the next cycle's grant and collects that too. So it takes, cycle after cycle, what
    the orchestrator grants it, and never spends more than was granted in all. It stops waiting,
    and the run halts on ``budget``, after ``patience_s`` without being able to pay, when
    ``current()`` has returned None (no current grant) for ``absent_s`` (the orchestrator is
    gone; one grant late on a loaded machine is not), or when ``stop()`` returns True (cancel,
    shutdown). What is left in the reserve when the run ends is not spent.

    ``granted`` is what it has collected, ``spent`` what it has paid, ``remaining`` the reserve;
    ``cycles`` counts the accounts it collected from and ``waited_s`` the time spent waiting. The
    step cap and deadline of the cycle accounts are not carried over (background work has
    neither).
    """

    def __init__(self, current: Callable[[], Optional[Budget]], patience_s: float = 30.0,
                 stop: Optional[Callable[[], bool]] = None, poll_s: float = 0.01,
                 clock: Callable[[], float] = time.monotonic, absent_s: float = 0.0):
        """Collect from ``current()`` (a :class:`Budget` or None); wait ``patience_s`` at most.

        ``absent_s``: how long ``current()`` may return None, in a row, before the run stops
        waiting (0: at once).
        """
        super().__init__(0.0)
        if not patience_s >= 0:
            raise ValueError(f'patience_s must be >= 0, got {patience_s!r}')
        if not absent_s >= 0:
            raise ValueError(f'absent_s must be >= 0, got {absent_s!r}')
        self._absent_s = float(absent_s)
        self._absent_since: Optional[float] = None
        self._current = current
        self._patience = float(patience_s)
        self._stop = stop or (lambda: False)
        self._poll = float(poll_s)
        self._clock = clock
        self._waited = 0.0
        self._sources = set()

    @property
    def waited_s(self) -> float:
        """Seconds spent waiting for the next cycle's grant."""
        with self._lock:
            return self._waited

    @property
    def cycles(self) -> int:
        """How many cycle accounts the run has collected from."""
        with self._lock:
            return len(self._sources)

    def _collect(self) -> bool:
        """Move what the current account holds into the reserve; False once the grants are gone.

        Gone: ``current()`` has returned None for ``absent_s`` in a row.
        """
        acc = self._current()
        if acc is None:
            now = self._clock()
            with self._lock:
                if self._absent_since is None:
                    self._absent_since = now
                return now - self._absent_since < self._absent_s
        with self._lock:
            self._absent_since = None
        if acc.unlimited:
            with self._lock:
                self._granted = math.inf
                self._sources.add(id(acc))
            return True
        got = acc.charge_up_to(acc.remaining)
        if got > 0:
            with self._lock:
                self._granted += got
                self._sources.add(id(acc))
        return True

    def _wait_for(self, need: float) -> bool:
        """Collect until the reserve holds ``need`` ATP (and something); False on giving up."""
        t0 = self._clock()
        try:
            while True:
                alive = self._collect()
                with self._lock:
                    left = self._granted - self._spent
                if left + 1e-9 >= need and left > 1e-9:
                    return True
                if not alive or self._stop() or self._clock() - t0 >= self._patience:
                    return False
                time.sleep(self._poll)
        finally:
            with self._lock:
                self._waited += self._clock() - t0

    def steps_affordable(self, price: float) -> int:
        """Return the steps the reserve pays for; at least 1 while waiting may still pay one.

        Never waits: the wait is in :meth:`try_charge`, so the loop's halting check does not
        block, and a run whose wait ends without enough ATP halts on ``budget`` there.
        """
        alive = self._collect()
        with self._lock:
            if math.isinf(self._granted):
                return 2 ** 31
            n = int(math.floor(max(self._granted - self._spent, 0.0) / price + 1e-9))
        if n >= 1 or not alive or self._patience <= 0 or self._stop():
            return n
        return 1

    def try_charge(self, price: float) -> bool:
        """Pay one step from the reserve, waiting for grants until it can (or giving up)."""
        if not self._wait_for(price):
            return False
        return super().try_charge(price)

    def try_charge_input(self, atp: float) -> bool:
        """Pay a run's whole per-input price from the reserve (waiting for grants)."""
        if not self._wait_for(atp):
            return False
        return super().try_charge_input(atp)

    def charge_up_to(self, atp: float) -> float:
        """Pay what the reserve (with the current account) holds of ``atp``; no waiting."""
        self._collect()
        return super().charge_up_to(atp)

    def grant(self, granted: float, step_cap: Optional[int] = None,
              deadline: Optional[float] = None) -> None:
        """Refuse: a patient account is funded by the cycles' grants only."""
        raise TypeError('a PatientBudget collects the cycle grants; it cannot be granted')

    def top_up(self, atp: float) -> None:
        """Refuse: a patient account is funded by the cycles' grants only."""
        raise TypeError('a PatientBudget collects the cycle grants; it cannot be topped up')
