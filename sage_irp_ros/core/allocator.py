"""Sharing a compute budget among plugins by trust (IRP_SPEC section 7), ROS-free.

Three pieces, each a pure function or a small object with no I/O of its own:

- :func:`allocate` splits a cycle's total ATP among the plugins with pending work;
- :func:`regrant` splits ATP freed by an early halt among plugins that can still use it;
- :class:`TrustBook` keeps each plugin's trust (an EMA of a per-run score, clipped to
  [0.1, 10]) and saves/loads it as JSON so a restart keeps what was learned;
- :class:`CycleAllocator` is the orchestrator's bookkeeping built on them (cycles, demand,
  liveness, re-grants), shared by ``orchestrator_node`` and the benchmark.

Allocation rule (a water-filling form of the spec's ``max(floor*T, T*w_i/sum(w))``, with
``w_i = trust_i * demand_i``):

1. every plugin first gets ``min(demand_i, floor * T)`` (the floor; if the floors of all
   plugins would exceed ``T``, each gets ``T / n``, capped by its demand);
2. the rest is shared in proportion to ``w_i`` among plugins whose demand is not yet met, each
   capped at its demand; what a capped plugin cannot use is shared again among the others;
3. if every demand is met, the surplus is shared in proportion to ``w_i`` too (more steps for
   those who use them; what a plugin does not use comes back through re-grants).

So the sum is ``T`` (never more), demands are met before any surplus is handed out, the floor
holds whenever it is feasible, and the result depends only on the inputs (plugins are visited
in name order).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from sage_irp_ros.core.plugin import (
    HALT_BUDGET,
    HALT_ERROR,
    HALT_MAX_STEPS,
    HALT_SLOPE,
    PLUGIN_HALT_REASONS,
)

TRUST_MIN = 0.1
TRUST_MAX = 10.0
_EPS = 1e-12


def _water_fill(amount: float, weights: Mapping[str, float], caps: Mapping[str, float],
                given: Dict[str, float]) -> float:
    """Share ``amount`` by ``weights`` with per-name ``caps`` into ``given``; return leftover."""
    open_ = sorted(n for n in weights if caps[n] - given[n] > _EPS)
    while amount > _EPS and open_:
        total_w = sum(weights[n] for n in open_)
        if total_w <= 0:  # all weights zero: share equally
            wts = {n: 1.0 for n in open_}
            total_w = float(len(open_))
        else:
            wts = {n: weights[n] for n in open_}
        saturated = []
        spent = 0.0
        for n in open_:
            want = amount * (wts[n] / total_w)  # ratio first: no denormal underflow
            room = caps[n] - given[n]
            take = min(want, room)
            given[n] += take
            spent += take
            if room - take <= _EPS:
                saturated.append(n)
        amount = max(amount - spent, 0.0)
        if not saturated:
            break
        open_ = [n for n in open_ if n not in saturated]
    return amount


def allocate(total: float, plugins: Mapping[str, Tuple[float, float]],
             floor: float = 0.05, least: Optional[Mapping[str, float]] = None,
             waited: Optional[Mapping[str, int]] = None) -> Dict[str, float]:
    """Split ``total`` ATP among ``plugins``: ``{name: (trust, demand)}`` -> ``{name: share}``.

    Plugins with zero demand get nothing (and are left out of the result). ``floor`` is the
    fraction of ``total`` each plugin with demand is guaranteed (capped by its demand).
    ``least`` gives a plugin's least useful grant (the ATP of one input and one step): its
    floor is raised to it, and a grant below it (which would pay for encoding an input and no
    step) goes to the others instead. When the raised floors do not all fit, the most trusted
    plugins get theirs first.
    """
    if not (math.isfinite(total) and total >= 0):
        raise ValueError(f'total ATP must be finite and >= 0, got {total!r}')
    if not 0 <= floor <= 1:
        raise ValueError(f'floor must be in [0, 1], got {floor!r}')
    active = {n: (max(float(t), 0.0), float(d)) for n, (t, d) in plugins.items()
              if math.isfinite(d) and d > 0 and math.isfinite(t)}
    if not active or total <= 0:
        return {n: 0.0 for n in active}
    names = sorted(active)
    least = {n: max(float((least or {}).get(n, 0.0)), 0.0) for n in names}
    per_floor = min(floor * total, total / len(names))
    given = {n: min(active[n][1], max(per_floor, least[n])) for n in names}
    raised = any(least[n] > per_floor for n in names)
    if raised and sum(given.values()) > total:  # raised floors do not all fit: take turns
        room = total
        waited = waited or {}
        for n in sorted(names, key=lambda n: (-waited.get(n, 0), -active[n][0], n)):
            given[n] = given[n] if given[n] <= room else 0.0
            room -= given[n]
    rest = total - sum(given.values())
    weights = {n: active[n][0] * active[n][1] for n in names}
    caps = {n: active[n][1] for n in names}
    rest = _water_fill(rest, weights, caps, given)
    if rest > _EPS:  # every demand is met: the surplus buys extra steps, by trust x demand
        _water_fill(rest, weights, {n: math.inf for n in names}, given)
    useless = [n for n in names if _EPS < given[n] < least[n] - _EPS]
    if useless:  # cannot pay one input and one step: worth more to the others
        freed = sum(given[n] for n in useless)
        for n in useless:
            given[n] = 0.0
        useful = {n: weights[n] for n in names if given[n] > 0}
        if useful:
            freed = _water_fill(freed, useful, {n: caps[n] for n in useful}, given)
            _water_fill(freed, useful, {n: math.inf for n in useful}, given)
    # Guard against rounding: never hand out more than total.
    s = sum(given.values())
    if s > total:
        scale = total / s
        given = {n: v * scale for n, v in given.items()}
    return given


def regrant(freed: float, running: Mapping[str, Tuple[float, float]]) -> Dict[str, float]:
    """Share ``freed`` ATP among ``running``: ``{name: (trust, more_wanted)}`` -> top-ups.

    In proportion to trust, each capped at what it still wants; the sum never exceeds
    ``freed`` (what nobody can use is not handed out).
    """
    if not (math.isfinite(freed) and freed >= 0):
        raise ValueError(f'freed ATP must be finite and >= 0, got {freed!r}')
    want = {n: (max(float(t), 0.0), float(w)) for n, (t, w) in running.items()
            if math.isfinite(w) and w > 0 and math.isfinite(t)}
    given = {n: 0.0 for n in want}
    if freed <= 0 or not want:
        return given
    _water_fill(freed, {n: t for n, (t, _) in want.items()},
                {n: w for n, (_, w) in want.items()}, given)
    s = sum(given.values())
    if s > freed:
        given = {n: v * freed / s for n, v in given.items()}
    return given


# Halting reasons that mean "stopped because more steps stopped paying".
_EARLY = PLUGIN_HALT_REASONS + (HALT_SLOPE,)


def run_score(record: Mapping, quality: Optional[float] = None) -> Optional[float]:
    """Score one run in [0, 1] from its telemetry record (higher is more trustworthy).

    The mean of:

    - monotonicity: ``trust.monotonicity_ratio``;
    - stability: ``1 / (1 + sd(dE) / scale)`` with ``scale = max(|E_0| / steps, |mean dE|)``,
      so steady descent scores near 1 and erratic energy near 0;
    - improvement: the fraction of the initial energy removed, ``clip(-contribution_to_H, 0, 1)``;
    - efficiency, when the plugin itself ended the run: 1 when it halted by its own rule, 0.5 on
      ``max_steps`` (it did not converge), 0 on ``error``. Runs stopped from outside
      (``budget``, ``timeout``, ``manual``) are judged by the steps they ran, not by the stop;
    - task quality in [0, 1] when known (``quality``, or ``metadata.quality``).

    Returns None when the run says nothing about the plugin: no step ran and the plugin did not
    decide that (a run its budget or deadline did not allow to start). A run of zero steps that
    halted by its own rule (nothing to do) scores by efficiency and quality.
    """
    t = record['trust']
    reason = record['halt_reason']
    parts = []
    if reason in _EARLY:
        parts.append(1.0)
    elif reason == 'max_steps':
        parts.append(0.5)
    elif reason == HALT_ERROR:
        parts.append(0.0)
    steps = int(record['steps'])
    if steps > 0:
        trace = record.get('E_trace') or []
        e0 = abs(trace[0]) if trace else abs(record['E'])
        mean_de = abs(t['convergence_rate'])
        scale = max(e0 / steps, mean_de, _EPS)
        stability = 1.0 / (1.0 + math.sqrt(max(t['dE_variance'], 0.0)) / scale)
        improvement = min(max(-t['contribution_to_H'], 0.0), 1.0)
        parts += [float(t['monotonicity_ratio']), stability, improvement]
    if quality is None:
        meta = record.get('metadata') or {}
        q = meta.get('quality')
        quality = float(q) if isinstance(q, (int, float)) and math.isfinite(q) else None
    if quality is not None:
        parts.append(min(max(quality, 0.0), 1.0))
    return sum(parts) / len(parts) if parts else None


def score_to_trust(score: float) -> float:
    """Map a score in [0, 1] to a trust weight in [0.1, 10]: 0.5 -> 1, 1 -> 10, 0 -> 0.1."""
    return min(max(10.0 ** (2.0 * score - 1.0), TRUST_MIN), TRUST_MAX)


@dataclass
class TrustEntry:
    """One plugin's learned trust: the EMA of its run scores and how many runs it has seen."""

    score: float = 0.5
    runs: int = 0

    @property
    def trust(self) -> float:
        """The trust weight in [0.1, 10]."""
        return score_to_trust(self.score)


class TrustBook:
    """Trust of every plugin, updated after each run, persisted as JSON.

    ``alpha`` is the EMA weight of a new run's score. A plugin never seen starts at score 0.5
    (trust 1).
    """

    def __init__(self, alpha: float = 0.2, path: Optional[str] = None):
        """Create a book; with ``path``, load what a previous run saved there (if anything)."""
        if not 0 < alpha <= 1:
            raise ValueError(f'alpha must be in (0, 1], got {alpha!r}')
        self.alpha = float(alpha)
        self.path = path
        self.entries: Dict[str, TrustEntry] = {}
        if path and os.path.exists(path):
            self.load(path)

    def trust(self, name: str) -> float:
        """Trust weight of ``name`` (1.0 when unknown)."""
        e = self.entries.get(name)
        return e.trust if e is not None else 1.0

    def update(self, name: str, score: float) -> float:
        """Fold a run's score into ``name``'s EMA; return the new trust."""
        if not math.isfinite(score):
            raise ValueError(f'score must be finite, got {score!r}')
        score = min(max(score, 0.0), 1.0)
        e = self.entries.setdefault(name, TrustEntry())
        e.score += self.alpha * (score - e.score)
        e.runs += 1
        return e.trust

    def to_json(self) -> dict:
        """Return the book as a JSON-able dict."""
        return {'version': 1, 'alpha': self.alpha,
                'plugins': {n: {'score': e.score, 'runs': e.runs, 'trust': e.trust}
                            for n, e in sorted(self.entries.items())}}

    def save(self, path: Optional[str] = None) -> None:
        """Write the book atomically (temp file + rename) to ``path`` or the book's path."""
        path = path or self.path
        if not path:
            return
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        text = json.dumps(self.to_json(), indent=1, allow_nan=False)  # raises before any file
        fd, tmp = tempfile.mkstemp(prefix='.trust-', dir=folder)
        try:
            with os.fdopen(fd, 'w', encoding='utf-8') as f:
                f.write(text)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load(self, path: str) -> None:
        """Load a saved book; a corrupt file raises ValueError naming it and what is wrong.

        Every score must be a finite number in [0, 1] and every run count an integer >= 0: a
        NaN, an infinity or a value out of range is an error, not a value to clip.
        """
        try:
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
            entries = {}
            for n, v in data['plugins'].items():
                score, runs = v['score'], v['runs']
                if not (isinstance(score, (int, float)) and math.isfinite(score)
                        and 0.0 <= score <= 1.0):
                    raise ValueError(f'plugin {n!r}: score {v["score"]!r} is not in [0, 1]')
                if not (isinstance(runs, int) and runs >= 0):
                    raise ValueError(f'plugin {n!r}: runs {runs!r} is not an integer >= 0')
                entries[n] = TrustEntry(score=float(score), runs=runs)
            self.entries = entries
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f'cannot read trust file {path}: {exc}') from exc


# Halting reasons after which a run finished its work with ATP to spare (not cut short).
_FINISHED = _EARLY + (HALT_MAX_STEPS,)


@dataclass
class PluginBook:
    """What the allocator knows of one plugin."""

    kind: str
    last_seen: float  # time of its latest run record
    need: float  # EMA of the ATP one run uses when it is not cut short by its budget
    least: float = 0.0  # ATP of one input and one step (run.atp_per_input + run.atp_per_step)
    last_heard: float = -math.inf  # time of its latest heartbeat (its node's /diagnostics)
    waited: int = 0  # cycles in a row it was granted nothing
    runs_per_cycle: float = 1.0  # EMA of runs per cycle
    runs: int = 0
    errors: int = 0
    budget_halts: int = 0
    rate_hz: float = 0.0
    dropped: int = 0  # stale inputs the plugin dropped (its record's run.dropped_inputs)
    granted: float = 0.0  # this cycle's grant
    spent: float = 0.0  # ATP reported spent this cycle
    runs_cycle: int = 0  # runs reported this cycle
    short_cycle: bool = False  # a run this cycle stopped on its budget after spending some
    done: bool = False  # its spare ATP of this cycle was re-granted
    last_halt: str = ''
    granted_total: float = 0.0
    spent_total: float = 0.0

    def demand(self, cap: float) -> float:
        """ATP this plugin is expected to use per cycle (at least one run), at most ``cap``."""
        return min(self.need * max(self.runs_per_cycle, 1.0), cap)

    def wants(self, cap: float, headroom: float) -> float:
        """ATP beyond this cycle's grant it could use now (more after running short)."""
        return max(self.demand(cap) * (headroom if self.short_cycle else 1.0) - self.granted, 0.0)

    def spare(self) -> float:
        """ATP of this cycle's grant it will not need: what is left beyond its expected runs."""
        expected_left = max(round(self.runs_per_cycle) - self.runs_cycle, 0)
        return max(self.granted - self.spent - expected_left * self.need, 0.0)


class CycleAllocator:
    """The orchestrator's bookkeeping, without ROS: cycles, demand, trust, re-grants.

    ``start_cycle(now)`` drops plugins silent for ``liveness_timeout`` s, learns from the cycle
    that ends, and returns the new cycle's grants. ``observe(name, kind, record, now)`` takes a
    run's telemetry record, updates trust and demand, and returns the grant changes of a
    re-grant (``{name: new total grant for this cycle}``; the giver first), or ``{}``.
    Demand and re-grant rules: ``docs/IRP_CONTRACT.md``.
    """

    def __init__(self, total: float, floor: float = 0.05, headroom: float = 1.5,
                 liveness_timeout: float = 2.0, trust: Optional[TrustBook] = None,
                 first_cycle: int = 1, priorities: Optional[Mapping[str, float]] = None):
        """Configure the total ATP per cycle, floor, demand headroom and liveness timeout.

        Cycles are numbered from ``first_cycle`` on. The node starts them at the wall-clock
        time in ms, so cycle numbers keep increasing across a restart of the orchestrator and
        plugins, which ignore grants of older cycles, accept the new ones at once.
        ``priorities`` maps a plugin kind to a factor of its trust in the allocation's and the
        re-grants' weights (default 1; the registry's ``PluginSpec.priority``): below 1 it
        yields to the others (memory's sleep), its floor still guaranteed.
        """
        self.total = float(total)
        self.floor = float(floor)
        self.headroom = float(headroom)
        self.liveness_timeout = float(liveness_timeout)
        self.trust = trust if trust is not None else TrustBook()
        self.priorities = {str(k): float(v) for k, v in (priorities or {}).items()}
        bad = {k: v for k, v in self.priorities.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f'priorities must be finite and > 0, got {bad}')
        self.plugins: Dict[str, PluginBook] = {}
        self.cycle = int(first_cycle) - 1  # the cycle under way; start_cycle opens the next
        self._first_cycle = int(first_cycle)
        self.overallocations = 0
        self.regranted_total = 0.0
        self.left: list = []  # names dropped by the last start_cycle

    def start_cycle(self, now: float) -> Dict[str, float]:
        """Open the next cycle; return ``{name: grant}`` for every live plugin."""
        self.left = [n for n, b in self.plugins.items()
                     if now - max(b.last_seen, b.last_heard) > self.liveness_timeout]
        for name in self.left:
            del self.plugins[name]
        for b in self.plugins.values():  # learn from the cycle that ends
            if self.cycle >= self._first_cycle:
                b.runs_per_cycle += 0.3 * (b.runs_cycle - b.runs_per_cycle)
            if b.short_cycle:
                b.need = min(b.need * self.headroom, self.total)
        self.cycle += 1
        shares = allocate(self.total, {n: (self.weight(n), b.demand(self.total))
                                       for n, b in self.plugins.items()}, self.floor,
                          {n: b.least for n, b in self.plugins.items()},
                          {n: b.waited for n, b in self.plugins.items()})
        if sum(shares.values()) > self.total * (1 + 1e-9) + 1e-9:
            self.overallocations += 1
        grants = {}
        for name, b in self.plugins.items():
            b.spent, b.runs_cycle, b.short_cycle, b.done = 0.0, 0, False, False
            b.granted = shares.get(name, 0.0)
            b.waited = b.waited + 1 if b.granted <= 0 else 0
            b.granted_total += b.granted
            grants[name] = b.granted
        return grants

    def weight(self, name: str) -> float:
        """Return the trust of plugin ``name`` times the priority of its kind."""
        b = self.plugins.get(name)
        return self.trust.trust(name) * self.priorities.get(b.kind if b else '', 1.0)

    def heartbeat(self, name: str, kind: str, now: float, least: float = 0.0) -> None:
        """Note that plugin ``name`` is alive (its node reports), runs or not.

        A plugin that has not run yet joins the allocation with its least useful grant
        (``least``: the ATP of one input and one step, as its node reports its prices) as its
        need, so its first input already runs on a grant; an idle plugin stays in it.
        """
        least = float(least) if math.isfinite(least) and least > 0 else 0.0
        b = self.plugins.get(name)
        if b is None:
            b = self.plugins[name] = PluginBook(kind=kind, last_seen=-math.inf,
                                                need=max(least, 1e-3))
        b.last_heard = now
        if least > 0:
            b.least = max(b.least, least) if b.runs == 0 else b.least
            b.need = max(b.need, b.least)

    def observe(self, name: str, kind: str, record: Mapping, now: float,
                cycle: Optional[int] = None) -> Dict[str, float]:
        """Fold one run's record into trust and demand; return re-grant changes (or ``{}``).

        ``cycle`` is the grant cycle the run drew on (the record's ``run.cycle`` by default);
        only runs of the current cycle count towards its spending and can free ATP. The least a
        run needs is its fixed per-input price plus one step (``run.atp_per_input +
        run.atp_per_step``). A record without ``run`` (a host that does not report it) counts
        as a run on a default budget, priced by its spending alone.
        """
        spent = float(record['budget']['ATP_spent'])
        reason = record['halt_reason']
        b = self.plugins.get(name)
        if b is None:
            b = self.plugins[name] = PluginBook(kind=kind, last_seen=now, need=max(spent, 1e-3))
        dt = now - b.last_seen
        if dt > 0:
            b.rate_hz += 0.2 * (1.0 / dt - b.rate_hz)
        b.last_seen = now
        b.runs += 1
        b.last_halt = reason
        b.errors += reason == HALT_ERROR
        b.spent_total += spent
        score = run_score(record)
        if score is not None:  # a run that could not start says nothing about the plugin
            self.trust.update(name, score)
        if reason == HALT_BUDGET:
            b.budget_halts += 1
        elif reason in _FINISHED:
            b.need += 0.3 * (max(spent, 1e-3) - b.need)
        run = record.get('run') or {}
        if isinstance(run.get('dropped_inputs'), int):
            b.dropped = run['dropped_inputs']
        price = run.get('atp_per_step')
        if isinstance(price, (int, float)) and math.isfinite(price) and price > 0:
            per_input = run.get('atp_per_input')
            if not (isinstance(per_input, (int, float)) and math.isfinite(per_input)
                    and per_input > 0):
                per_input = 0.0
            b.least = float(per_input) + float(price)  # the input and one step
            b.need = max(b.need, b.least)
        if cycle is None:
            cycle = run.get('cycle')
        if cycle != self.cycle:
            return {}  # a run on a default budget or an older grant
        b.spent += spent
        b.runs_cycle += 1
        if reason == HALT_BUDGET:
            b.short_cycle = True  # it wanted more (even a run that could not pay one step)
            return {}
        if reason not in _FINISHED or b.done:
            return {}
        running = {n: (self.weight(n), o.wants(self.total, self.headroom))
                   for n, o in self.plugins.items() if n != name and not o.done}
        ups = {n: v for n, v in regrant(b.spare(), running).items() if v > 0}
        if not ups:
            return {}
        b.done = True
        given = sum(ups.values())
        b.granted -= given
        changes = {name: b.granted}  # the giver's lower grant goes out first
        for n, v in sorted(ups.items()):
            self.plugins[n].granted += v
            self.plugins[n].granted_total += v
            changes[n] = self.plugins[n].granted
        b.granted_total -= given
        self.regranted_total += given
        return changes
