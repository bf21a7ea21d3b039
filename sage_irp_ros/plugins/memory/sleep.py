"""Sleep: consolidation of one plugin's stored experiences into prototypes, as a refinement.

``SleepIRP`` is an ordinary plugin of the core loop (``sage_irp_ros.core.loop.refine``): its
state is a codebook of prototypes over the unit key embeddings of the experiences, refined by
vector quantisation (k-means++ seeding, then per step one Lloyd iteration with merges and
splits that the size term pays for), halting by the core's slope rule. ``consolidate()`` runs it
on a store and replaces the plugin's rows by the prototypes in one transaction, or leaves the
store exactly as it was (stopped, interrupted, killed). No ROS here.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from sage_irp_ros.core.budget import Budget, StepCostMeter
from sage_irp_ros.core.loop import Trace, refine
from sage_irp_ros.core.plugin import (
    HALT_BUDGET,
    HALT_MAX_STEPS,
    HALT_SLOPE,
    HALT_TIMEOUT,
    PLUGIN_HALT_REASONS,
    HaltConfig,
    IRPPlugin,
    IRPState,
    Schedule,
)
from sage_irp_ros.plugins.memory.store import ExperienceStore, PrototypeSpec

#: Members of a prototype offered as its medoid, closest to the centroid first (the first one
#: still stored when the consolidation commits becomes the medoid).
MEDOID_CANDIDATES = 8


@dataclass
class SleepInput:
    """What sleep clusters: key embeddings with weights and the runs' steps and energies.

    ``keys`` (N, D): any scale (normalised to unit length by ``init_state``); ``weights`` (N,)
    > 0, default 1 (an earlier prototype enters with its member count); ``steps`` and
    ``energies`` (N,), NaN when unknown (they only feed the prototypes' member means).
    """

    keys: np.ndarray
    weights: Optional[np.ndarray] = None
    steps: Optional[np.ndarray] = None
    energies: Optional[np.ndarray] = None


@dataclass
class Codebook:
    """The refinement state's payload: prototypes (rows of ``centroids``) and assignments.

    ``centroids`` (M, D) float64: the weighted mean of the unit keys assigned to each prototype
    (not renormalised, so the distortion is the exact k-means one); ``assign`` (N,) int64: the
    prototype of each input; ``moves``: what the step that made it did (``merges``,
    ``splits``, ``dropped`` empty prototypes, ``moved`` reassigned inputs).
    """

    centroids: np.ndarray
    assign: np.ndarray
    moves: Dict[str, int] = field(default_factory=dict)


@dataclass
class Prototype:
    """One consolidated experience, as ``SleepIRP.result`` returns it.

    ``centroid``: unit search key (float32); ``members``: total weight of its inputs;
    ``member_indices``: its inputs, closest to the centroid first; ``medoid_index``: the
    closest (a real input, whose latent a warm start uses); ``mean_steps``,
    ``mean_energy``: weighted means over members (NaN when unknown); ``scatter``: weighted sum
    of squared distances of the members' unit keys to the centroid.
    """

    centroid: np.ndarray
    members: float
    member_indices: np.ndarray
    medoid_index: int
    mean_steps: float
    mean_energy: float
    scatter: float


def _group(assign: np.ndarray, m: int):
    """Return ``(order, starts, ends)``: inputs sorted by prototype, and each one's slice."""
    order = np.argsort(assign, kind='stable')
    counts = np.bincount(assign, minlength=m)
    ends = np.cumsum(counts)
    return order, ends - counts, ends


def _means(x: np.ndarray, w: np.ndarray, assign: np.ndarray, m: int):
    """Weighted means and weights of the ``m`` groups of ``assign`` (zero rows for empty ones)."""
    wc = np.bincount(assign, weights=w, minlength=m)
    sums = np.zeros((m, x.shape[1]))
    order, starts, ends = _group(assign, m)
    nonempty = ends > starts
    if nonempty.any():
        sums[nonempty] = np.add.reduceat(x[order] * w[order, None], starts[nonempty], axis=0)
    c = np.zeros_like(sums)
    c[nonempty] = sums[nonempty] / wc[nonempty, None]
    return c, wc


#: Entries of one block of a distance matrix (float64: 32 MB), bounding the memory of a step.
BLOCK_ENTRIES = 1 << 22


def _nearest_centroid(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean) of each row of ``x``."""
    cc = (c * c).sum(1)
    block = max(1, BLOCK_ENTRIES // max(len(c), 1))
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), block):
        out[s:s + block] = np.argmin(cc[None, :] - 2.0 * x[s:s + block] @ c.T, axis=1)
    return out


def _sse(x, w, c, assign) -> float:
    d = x - c[assign]
    return float((w * (d * d).sum(1)).sum())


class SleepIRP(IRPPlugin):
    """Consolidate experiences into prototypes: vector quantisation refined until it stops paying.

    Four invariants:

    - **state space**: a :class:`Codebook`: ``M`` prototypes (weighted means of unit keys) and
      the assignment of each of the ``N`` inputs (weights ``w_i``, total ``W``). The initial
      state is k-means++ seeding (``init_prototypes`` seeds, default ``ceil(sqrt(W / 2))``,
      at most ``N``) with its assignment and means. A step is one Lloyd iteration (assign each
      input to its nearest prototype, move each prototype to the mean of its inputs, drop the
      empty ones), then **merges**: disjoint pairs whose merge raises the distortion by less
      than the size term saves (Ward's cost ``w_a w_b / (w_a + w_b) |c_a - c_b|^2`` below
      ``size_weight * S_0 / W``), cheapest first; then **splits**: every other prototype whose
      best split into two (a local 2-means from its farthest member and the member farthest
      from that, ``split_iters`` iterations) lowers the distortion by more than that amount.
      Each move lowers the energy, and a Lloyd iteration never raises it, so the energy never
      rises from step to step.
    - **noise model**: none is sampled; the inputs are revisits of places with noisy keys.
      Seeding draws from the plugin's ``seed`` (or ``ctx['seed']``), so a run is reproducible.
    - **energy** (dimensionless, lower is better): ``E = SSE / S_0 + size_weight * M / W``,
      ``SSE = sum_i w_i |x_i - c_(a_i)|^2`` the distortion of the unit keys ``x_i``, ``S_0 =
      sum_i w_i |x_i - mean|^2`` the distortion of a single prototype (so the first term is
      the fraction of the keys' scatter the prototypes leave unexplained, in [0, 1]), ``M / W``
      prototypes per experience. ``size_weight`` (lambda) prices one prototype at lambda times
      the mean scatter of one experience: a prototype is kept only when it explains more than
      that. ``energy_scale`` is 1 (the energy of one prototype for everything, less its size
      term), so ``eps`` is a fraction of the keys' whole scatter per step.
    - **contribution**: ``result`` returns the :class:`Prototype` list: for each, its centroid
      (the search key), its medoid (the member closest to the centroid: a real experience, its
      latent a sharp warm start, not a blurred mean), member count and member means of steps
      and energy. Halting: the core's slope rule (the energy has stopped falling) or
      ``max_steps``.
    """

    kind = 'memory'
    version = 'sleep-vq-1'

    def __init__(self, size_weight: float = 0.5, init_prototypes: Optional[int] = None,
                 split_iters: int = 3, seed: int = 0, eps: float = 1e-3, K: int = 2,
                 max_steps: int = 50):
        """Set lambda (``size_weight``), seeding size, the split's 2-means iterations, halting.

        ``eps``, ``K``, ``max_steps``: the defaults :meth:`halt_config` returns.
        """
        if not (math.isfinite(size_weight) and size_weight >= 0):
            raise ValueError(f'size_weight must be a finite number >= 0, got {size_weight!r}')
        if init_prototypes is not None and int(init_prototypes) < 1:
            raise ValueError(f'init_prototypes must be >= 1, got {init_prototypes!r}')
        self.size_weight = float(size_weight)
        self.init_prototypes = None if init_prototypes is None else int(init_prototypes)
        self.split_iters = max(int(split_iters), 1)
        self.seed = int(seed)
        self._halt = HaltConfig(eps=eps, K=K, max_steps=max_steps)

    def halt_config(self) -> HaltConfig:
        """Return the halting defaults: slope ``eps`` 1e-3 per step over ``K`` 2, 50 steps."""
        return self._halt

    def energy_scale(self, e0: float) -> float:
        """Return 1: the energy's natural unit (the keys' whole scatter)."""
        return 1.0

    # ------------------------------------------------------------------ contract

    def init_state(self, x0: Any, ctx: Optional[Mapping[str, Any]] = None) -> IRPState:
        """Normalise the keys, seed prototypes by k-means++ and assign the inputs to them.

        ``x0``: a :class:`SleepInput` or an (N, D) array of keys; ``ctx`` may hold ``seed``
        and ``init_prototypes``. Raises ValueError for no input, non-finite or zero keys, or
        weights that are not positive.
        """
        ctx = ctx or {}
        data = x0 if isinstance(x0, SleepInput) else SleepInput(keys=np.asarray(x0))
        x = np.asarray(data.keys, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f'keys must be a non-empty (N, D) array, got shape {x.shape}')
        n = x.shape[0]
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if not np.isfinite(x).all() or not (norms > 0).all():
            raise ValueError('keys must be finite and non-zero')
        x = x / norms
        w = np.ones(n) if data.weights is None else np.asarray(data.weights, dtype=np.float64)
        if w.shape != (n,) or not np.isfinite(w).all() or not (w > 0).all():
            raise ValueError('weights must be N finite numbers > 0')

        def column(v):
            return np.full(n, np.nan) if v is None else np.asarray(v, dtype=np.float64)

        total_w = float(w.sum())
        mean = (w[:, None] * x).sum(0) / total_w
        s0 = float((w * ((x - mean) ** 2).sum(1)).sum())
        s0 = max(s0, 1e-12 * total_w)  # all keys equal: any split gains nothing anyway
        m0 = ctx.get('init_prototypes', self.init_prototypes)
        m0 = int(m0) if m0 is not None else math.ceil(math.sqrt(total_w / 2.0))
        m0 = max(1, min(m0, n))
        rng = np.random.default_rng(int(ctx.get('seed', self.seed)))
        centroids = self._seed(x, w, m0, rng)
        assign = _nearest_centroid(x, centroids)
        c, wc = _means(x, w, assign, len(centroids))
        keep = wc > 0
        remap = np.cumsum(keep) - 1
        meta = {'x': x, 'w': w, 'W': total_w, 's0': s0, 'thr': self.size_weight * s0 / total_w,
                'steps_in': column(data.steps), 'energies_in': column(data.energies)}
        return IRPState(payload=Codebook(c[keep], remap[assign], {'seeded': int(keep.sum())}),
                        meta=meta)

    @staticmethod
    def _seed(x, w, m, rng) -> np.ndarray:
        """k-means++ seeding, weighted: each next seed drawn with probability ~ w d^2."""
        first = rng.choice(len(x), p=w / w.sum())
        seeds = [first]
        d2 = ((x - x[first]) ** 2).sum(1)
        for _ in range(1, m):
            p = w * d2
            if p.sum() <= 0:
                break
            nxt = rng.choice(len(x), p=p / p.sum())
            seeds.append(nxt)
            d2 = np.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
        return x[seeds].copy()

    def energy(self, state: IRPState) -> float:
        """``SSE / S_0 + size_weight * M / W`` (dimensionless, lower is better)."""
        cb = state.payload
        x, w = state.meta['x'], state.meta['w']
        return (_sse(x, w, cb.centroids, cb.assign) / state.meta['s0']
                + self.size_weight * len(cb.centroids) / state.meta['W'])

    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """One Lloyd iteration, then the merges and splits that lower the energy."""
        x, w, thr = state.meta['x'], state.meta['w'], state.meta['thr']
        old = state.payload
        assign = _nearest_centroid(x, old.centroids)
        moved = int((assign != old.assign).sum())
        c, wc = _means(x, w, assign, len(old.centroids))
        keep = wc > 0
        dropped = int((~keep).sum())
        remap = np.cumsum(keep) - 1
        c, wc, assign = c[keep], wc[keep], remap[assign]
        c, wc, assign, merged, n_merges = self._merge(c, wc, assign, thr)
        c, assign, n_splits = self._split(x, w, c, assign, thr, merged)
        return state.evolve(Codebook(c, assign, {'moved': moved, 'dropped': dropped,
                                                 'merges': n_merges, 'splits': n_splits}))

    @staticmethod
    def _merge(c, wc, assign, thr):
        """Merge disjoint pairs whose Ward cost is below ``thr``, cheapest first."""
        m = len(c)
        block = max(1, BLOCK_ENTRIES // max(m, 1))
        merged = np.zeros(m, dtype=bool)
        if m < 2 or thr <= 0:
            return c, wc, assign, merged, 0
        cc = (c * c).sum(1)
        pairs = []
        for s in range(0, m, block):
            d2 = np.maximum(cc[s:s + block, None] + cc[None, :] - 2.0 * c[s:s + block] @ c.T, 0)
            wa = wc[s:s + block, None]
            cost = wa * wc[None, :] / (wa + wc[None, :]) * d2
            ii, jj = np.nonzero(cost < thr)
            ii = ii + s
            upper = jj > ii
            pairs += zip(cost[ii[upper] - s, jj[upper]].tolist(), ii[upper].tolist(),
                         jj[upper].tolist(), strict=True)
        if not pairs:
            return c, wc, assign, merged, 0
        pairs.sort()
        target = np.arange(m)
        n = 0
        for _, i, j in pairs:
            if merged[i] or merged[j]:
                continue
            merged[i] = merged[j] = True
            c[i] = (wc[i] * c[i] + wc[j] * c[j]) / (wc[i] + wc[j])
            wc[i] += wc[j]
            target[j] = i
            n += 1
        alive = target == np.arange(m)
        remap = np.cumsum(alive) - 1
        return (c[alive], wc[alive], remap[target[assign]], merged[alive], n)

    def _split(self, x, w, c, assign, thr, skip):
        """Split each prototype (not just merged) whose local 2-means gains more than ``thr``."""
        m = len(c)
        order, starts, ends = _group(assign, m)
        d = x - c[assign]
        err = w * (d * d).sum(1)
        scatter = np.bincount(assign, weights=err, minlength=m)
        new_c = [c]
        assign = assign.copy()
        n = 0
        for j in np.nonzero((scatter > thr) & (ends - starts >= 2) & ~skip)[0]:
            idx = order[starts[j]:ends[j]]
            out = self._two_means(x[idx], w[idx], c[j])
            if out is None:
                continue
            gain, side, ca, cb = out
            if gain <= thr:
                continue
            c[j] = ca
            assign[idx[side]] = m + n
            new_c.append(cb[None, :])
            n += 1
        return (np.concatenate(new_c) if n else c), assign, n

    def _two_means(self, xs, ws, centre):
        """Best split of one group found by 2-means: ``(gain, side, c_a, c_b)`` or None."""
        d_centre = ((xs - centre) ** 2).sum(1)
        sse0 = float((ws * d_centre).sum())
        a = int(np.argmax(d_centre))
        d_a = ((xs - xs[a]) ** 2).sum(1)
        b = int(np.argmax(d_a))
        if d_a[b] <= 0:
            return None
        ca, cb = xs[a].copy(), xs[b].copy()
        side = None
        for _ in range(self.split_iters):
            new = ((xs - cb) ** 2).sum(1) < ((xs - ca) ** 2).sum(1)
            if new.all() or not new.any():
                return None
            if side is not None and np.array_equal(new, side):
                break
            side = new
            ca = (ws[~side, None] * xs[~side]).sum(0) / ws[~side].sum()
            cb = (ws[side, None] * xs[side]).sum(0) / ws[side].sum()
        sse = float((ws[~side] * ((xs[~side] - ca) ** 2).sum(1)).sum()
                    + (ws[side] * ((xs[side] - cb) ** 2).sum(1)).sum())
        return sse0 - sse, side, ca, cb

    def result(self, state: IRPState) -> List[Prototype]:
        """Return the prototypes, each with its medoid and member statistics."""
        x, w = state.meta['x'], state.meta['w']
        steps_in, energies_in = state.meta['steps_in'], state.meta['energies_in']
        cb = state.payload
        m = len(cb.centroids)
        order, starts, ends = _group(cb.assign, m)
        out = []
        for j in range(m):
            idx = order[starts[j]:ends[j]]
            if len(idx) == 0:
                continue
            c = cb.centroids[j]
            d2 = ((x[idx] - c) ** 2).sum(1)
            ranked = idx[np.argsort(d2, kind='stable')]
            wj = w[idx]
            norm = np.linalg.norm(c)
            unit = c / norm if norm > 0 else x[ranked[0]]
            out.append(Prototype(
                centroid=unit.astype(np.float32), members=float(wj.sum()),
                member_indices=ranked, medoid_index=int(ranked[0]),
                mean_steps=_weighted_nanmean(steps_in[idx], wj),
                mean_energy=_weighted_nanmean(energies_in[idx], wj),
                scatter=float((wj * d2).sum())))
        return out


def _weighted_nanmean(v: np.ndarray, w: np.ndarray) -> float:
    ok = np.isfinite(v)
    return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else math.nan


class _StopSignal:
    """The loop's cancel event made of a ``should_stop()`` callable and/or an Event (latched)."""

    def __init__(self, should_stop: Optional[Callable[[], bool]],
                 cancel: Optional[threading.Event]):
        self._should_stop = should_stop
        self._cancel = cancel
        self._set = False

    def is_set(self) -> bool:
        if not self._set:
            self._set = bool((self._cancel is not None and self._cancel.is_set())
                             or (self._should_stop is not None and self._should_stop()))
        return self._set


@dataclass
class ConsolidationReport:
    """What one ``consolidate`` call did.

    ``committed``: whether the store now holds the prototypes (False: it is exactly as before);
    ``reason``: why not, or ``'committed'``; ``halt_reason``, ``steps``, ``energies`` of the
    refinement (None / 0 / [] when it did not run); ``inputs``: rows of the snapshot
    (experiences + earlier prototypes); ``experiences``: experiences they stand for;
    ``prototypes``: prototypes written; ``replaced``: rows they replaced; ``kept``: rows left
    as they were (alone in their cluster: a prototype would only copy them);
    ``bytes_before`` / ``bytes_after``: the store's ``bytes_used`` (pages in use);
    ``seconds``: the whole call, ``refine_seconds``, ``write_seconds`` (the transaction),
    ``compact_seconds``; ``trace``: the loop's trace.
    """

    plugin: str
    committed: bool
    reason: str
    halt_reason: Optional[str] = None
    steps: int = 0
    energies: List[float] = field(default_factory=list)
    inputs: int = 0
    experiences: int = 0
    prototypes: int = 0
    replaced: int = 0
    kept: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    refine_seconds: float = 0.0
    write_seconds: float = 0.0
    compact_seconds: float = 0.0
    trace: Optional[Trace] = None

    def as_dict(self) -> Dict[str, Any]:
        """Return the report as plain JSON-able values (without the trace)."""
        return {k: v for k, v in self.__dict__.items() if k != 'trace'}


#: Halting reasons after which the prototypes are written: the refinement ended by its rules.
COMMIT_REASONS = (HALT_SLOPE, HALT_MAX_STEPS) + PLUGIN_HALT_REASONS


def consolidate(store: ExperienceStore, plugin_name: str, *,
                sleeper: Optional[SleepIRP] = None, config: Optional[HaltConfig] = None,
                should_stop: Optional[Callable[[], bool]] = None,
                cancel: Optional[threading.Event] = None, budget: Optional[Budget] = None,
                cost: Optional[StepCostMeter] = None, deadline: Optional[float] = None,
                ctx: Optional[Mapping[str, Any]] = None, key_dim: Optional[int] = None,
                min_rows: int = 2, commit_partial: bool = False, compact: bool = True,
                progress: Optional[Callable[[str, Dict[str, Any]], None]] = None,
                ) -> ConsolidationReport:
    """Sleep on ``plugin_name``'s rows of ``store``: refine prototypes, then swap them in.

    Reads the plugin's experiences and earlier prototypes (:meth:`ExperienceStore.snapshot`;
    an earlier prototype enters with its member count as weight), refines a
    :class:`SleepIRP` codebook over them with the core loop (``config``, ``budget``, ``cost``,
    ``deadline`` as for ``refine``; ``should_stop()`` and ``cancel`` are checked before every
    step), and, when the run halted by its own rules (``slope<eps``, ``max_steps``; also
    ``budget`` and ``timeout`` with ``commit_partial``) and nothing asked it to stop, writes the
    prototypes and deletes the rows they replace in ONE transaction. A row alone in its cluster
    stays as it is (raw, or the earlier prototype it was); rows added meanwhile are kept.
    Stopped, refused, failed or killed at any point before that commit, the store is exactly
    as it was; a KeyboardInterrupt propagates after the rollback. With ``compact`` the freed
    pages are then given back to the file system (interruptible; the data is already safe).

    ``progress(phase, info)`` (optional) is told ``'snapshot'``, ``'refined'``, ``'commit'``
    (inside the transaction, just before it commits: it must not use the store) and
    ``'committed'``.
    """
    t0 = time.perf_counter()
    sleeper = sleeper or SleepIRP()
    stop = _StopSignal(should_stop, cancel)
    bytes_before = store.stats()['bytes_used']
    report = ConsolidationReport(plugin=plugin_name, committed=False, reason='',
                                 bytes_before=bytes_before, bytes_after=bytes_before)

    def tell(phase: str, **info) -> None:
        if progress is not None:
            progress(phase, info)

    def done(reason: str) -> ConsolidationReport:
        report.reason = reason
        report.seconds = time.perf_counter() - t0
        return report

    snap = store.snapshot(plugin_name, key_dim=key_dim)
    report.inputs = len(snap)
    report.experiences = int(round(float(snap.weights.sum()))) if len(snap) else 0
    tell('snapshot', inputs=len(snap), experiences=report.experiences)
    if len(snap) < max(int(min_rows), 1):
        return done(f'{len(snap)} rows: fewer than min_rows {min_rows}, nothing to do')
    data = SleepInput(keys=snap.keys, weights=snap.weights, steps=snap.steps,
                      energies=snap.energies)
    t = time.perf_counter()
    res = refine(sleeper, data, ctx, config=config or sleeper.halt_config(), budget=budget,
                 cost=cost, cancel=stop, deadline=deadline)
    report.refine_seconds = time.perf_counter() - t
    trace = res.trace
    report.trace = trace
    report.halt_reason = trace.halt_reason
    report.steps = trace.steps
    report.energies = list(trace.energies)
    tell('refined', halt_reason=trace.halt_reason, steps=trace.steps)
    allowed = COMMIT_REASONS + ((HALT_BUDGET, HALT_TIMEOUT) if commit_partial else ())
    if trace.halt_reason not in allowed:
        detail = f': {trace.error}' if trace.error else ''
        return done(f'halted by {trace.halt_reason}{detail}; store left as it was')
    if stop.is_set():
        return done('asked to stop; store left as it was')
    # A prototype of one row would only copy it: that row stays as it is.
    protos = [p for p in res.output if len(p.member_indices) > 1]
    report.kept = len(res.output) - len(protos)
    if not protos:
        return done('no two rows belong together: store left as it was')
    specs = [PrototypeSpec(centroid=p.centroid,
                           candidates=[snap.refs[i] for i in p.member_indices[:MEDOID_CANDIDATES]],
                           members=int(round(p.members)), mean_steps=p.mean_steps,
                           mean_energy=p.mean_energy, scatter=p.scatter) for p in protos]
    replaced = [snap.refs[i] for p in protos for i in p.member_indices]
    t = time.perf_counter()
    written = store.commit_consolidation(
        plugin_name, replaced, specs,
        on_commit=lambda: tell('commit', prototypes=len(specs), replaced=len(replaced)))
    report.replaced = len(replaced)
    report.write_seconds = time.perf_counter() - t
    report.committed = True
    report.prototypes = written
    tell('committed', prototypes=written)
    if compact:
        t = time.perf_counter()
        store.compact(should_stop=should_stop)
        report.compact_seconds = time.perf_counter() - t
    report.bytes_after = store.stats()['bytes_used']
    return done('committed')


def make_plugin(device: str = 'cpu', precision: str = 'fp32') -> SleepIRP:
    """Build the sleep refiner with its defaults (numpy: cpu and fp32, as its registry entry)."""
    if device != 'cpu' or precision != 'fp32':
        raise ValueError(f'sleep runs on cpu in fp32; got {device!r}, {precision!r}')
    return SleepIRP()
