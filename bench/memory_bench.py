"""Benchmark of memory (issue #14): does experience save compute later? Held-out, one run.

    python bench/memory_bench.py [--places 20] [--day1 20] [--day2 4] [--norecur 80]
                                 [--n-sleep 10000] [--threads 1] [--out out/bench/memory.json]
                                 [--validation] [--recall-energy-tol T] [--recall-shift S]
                                 [--recall-halt-members M] [--eager-encoder]

The robot's days, as the node host and the memory node run them (ROS-free here, same code:
``VisionIRP`` with ``ctx['recall']`` backed by an ``ExperienceStore``, experiences stored from
``plugin.experience()``, sleep by ``consolidate()``):

1. **Day 1**: ``--places`` held-out places (``scenes.revisit``: the same 'tags' scene with new
   sensor noise and a view shifted by up to 3 pixels each visit), each visited ``--day1`` times
   (visit-major order), refined cold and stored: the store before sleep.
2. **Sleep**: one consolidation of the vision rows (``consolidate``): store bytes before and
   after (``compression_ratio``).
3. **Day 2, recurring**: ``--day2`` new visits of every place (new noise, new shifts), each
   refined twice in one run, interleaved: **cold** (no memory: the same frames before any
   experience) and **after sleep** (recall from the consolidated store, warm start when the
   plugin accepts the hint; memory is looked up as the node host does it, through a
   ``RecallGate``: on every input while look-ups give warm starts, on fewer after three
   without). ATP is the wall time of the whole run in ms (recall, encoding,
   steps, decoding: what the host charges); ``atp_saving_recurring`` = 1 - ATP(after) /
   ATP(cold), ``miou_delta_recurring`` = mIoU(after) - mIoU(cold) in points.
4. **Day 2, no recurrence**: ``--norecur`` places never seen, cold and with the same memory:
   ``atp_delta_norecur`` = ATP(with memory) / ATP(cold) - 1 (the lookup is paid, hints about
   other places must be ignored), and their mIoU and steps.
   ``fixed_cold_recurring``: the same frames refined cold for a fixed 1 and 2 steps (no
   halting): the simple baseline at about the warm runs' compute.
   ``lookup_ms_recurring``: the median ms of the look-up's parts in the after-sleep runs (the
   plugin's key, the store's search, the warm start's checks and alignment), timed in place.
5. **Recall**: recall@1 of the day-2 recurring frames (the nearest record is of the same
   place) in the store before sleep (a copy) and after; ``recall_ratio`` = after / before.
6. **Sleep at scale** (``--n-sleep``): that many stored vision experiences (held-out places,
   20 visits each, refined cold), then one sleep: ``sleep_seconds_10k``, its steps and halting
   reason.

Held-out seeds (``scenes.MEMORY_HELD_OUT_SEED0``..) are used by no training, tuning or test;
the warm-start thresholds (``recall_similarity``, ``recall_agreement``) were chosen on
validation seeds (``scenes.MEMORY_VAL_SEED0``, docs/MEMORY.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sage_irp_ros.core.loop import refine  # noqa: E402
from sage_irp_ros.plugins.memory.experience import (  # noqa: E402
    RecallGate,
    check_experience,
    recall_from,
    recall_threshold,
    run_experience,
)
from sage_irp_ros.plugins.memory.sleep import SleepIRP, consolidate  # noqa: E402
from sage_irp_ros.plugins.memory.store import ExperienceStore  # noqa: E402
from sage_irp_ros.plugins.vision import scenes  # noqa: E402
from sage_irp_ros.plugins.vision.evaluate import IoUAccumulator  # noqa: E402
from sage_irp_ros.plugins.vision.plugin import DEFAULT_WEIGHTS, VisionIRP  # noqa: E402

PLUGIN = 'vision'


def place(seed0: int, i: int):
    """``(seed, difficulty)`` of place ``i`` (difficulty spread over [0, 1])."""
    return seed0 + i, (i * 0.618034) % 1.0


class Day:
    """Accumulates one condition's runs: mIoU, steps, ATP (ms), warm starts, halting."""

    def __init__(self, num_classes: int):
        """Start empty."""
        self.acc = IoUAccumulator(num_classes)
        self.steps, self.atp, self.used, self.halts = [], [], [], {}

    def add(self, res, gt, ms: float) -> None:
        """Add one run."""
        self.acc.add(res.output, gt)
        self.steps.append(res.trace.steps)
        self.atp.append(ms)
        ws = res.state.meta.get('warm_start')
        self.used.append(bool(ws and ws.get('used')))
        h = res.trace.halt_reason
        self.halts[h] = self.halts.get(h, 0) + 1

    def report(self) -> dict:
        """JSON-ready figures."""
        return {'n': len(self.steps), 'miou': round(self.acc.miou(), 4),
                'steps_mean': round(float(np.mean(self.steps)), 3),
                'atp_mean_ms': round(float(np.mean(self.atp)), 3),
                'atp_median_ms': round(float(np.median(self.atp)), 3),
                'warm_start_rate': round(float(np.mean(self.used)), 3),
                'halt_reasons': self.halts}


def timed(plugin, img, ctx, config):
    """One run through the core loop; (result, wall ms of the whole run)."""
    t = time.perf_counter()
    res = refine(plugin, img, ctx, config=config)
    return res, (time.perf_counter() - t) * 1e3


def timed_with(plugin, img, gate, recall, config):
    """:func:`timed` cold (``gate`` None) or with memory as the host offers it (the gate)."""
    asked = gate is not None and gate.ask()
    res, ms = timed(plugin, img, {'recall': recall} if asked else None, config)
    if asked:
        gate.observe(res.state.meta.get('warm_start'))
    return res, ms


class LookupTimer:
    """Times the parts of a warm start's look-up on one plugin instance (ms per call).

    Wraps the instance's ``memory_key`` and ``warm_start`` (the hint's checks and its
    alignment) and a ``recall`` callable (the store's search): the same calls, timed where
    they run, inside the runs. ``report()``: the median of each part over the runs it saw.
    """

    def __init__(self, plugin):
        """Wrap ``plugin``'s key and warm start (instance attributes: the class is untouched)."""
        self.ms = {'key': [], 'search': [], 'warm_start': []}
        self.plugin = plugin
        for name, part in (('memory_key', 'key'), ('warm_start', 'warm_start')):
            setattr(plugin, name, self._timed(getattr(plugin, name), part))

    def _timed(self, fn, part):
        def wrapped(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.ms[part].append((time.perf_counter() - t) * 1e3)
        return wrapped

    def recall(self, recall):
        """Return ``recall`` timed as the search."""
        return self._timed(recall, 'search')

    def close(self) -> None:
        """Unwrap the plugin: its key and warm start are the class's again."""
        for name in ('memory_key', 'warm_start'):
            self.plugin.__dict__.pop(name, None)

    def report(self) -> dict:
        """Median ms of each part and of their sum per look-up, with the count."""
        out = {k: round(float(np.median(v)), 4) for k, v in self.ms.items() if v}
        out['n'] = len(self.ms['search'])
        if out['n']:
            out['sum_of_medians'] = round(sum(out[k] for k in self.ms if k in out), 4)
        return out


def experience_of(plugin, res, place_id=None):
    """The run's experience as the memory node stores it (``store.add`` arguments), or None.

    ``place_id`` goes into the summary, for recall@1.
    """
    item = run_experience(plugin, res, PLUGIN)
    if item is None:
        return None
    if place_id is not None:
        item['summary'] = dict(item['summary'], place=int(place_id))
    return check_experience(item)


def recall_at_1(store, plugin, frames) -> float:
    """Fraction of ``frames`` [(image, place)] whose nearest record is of the same place."""
    hits = 0
    for img, pid in frames:
        st = plugin.init_state(img)
        key = plugin.memory_key(st.meta['inject'], st.meta['box'])
        rec = store.nearest(PLUGIN, key, k=1, touch=False)
        hits += int(bool(rec) and rec[0].summary.get('place') == pid)
    return hits / max(len(frames), 1)


def control_warm_starts(split: str, maps_per_kind: int, variants: int, jitter_m: float) -> dict:
    """Control from remembered paths (held-out maps): cold vs with memory, interleaved.

    Day 1: each map's problem (``maps.make_problem``: start and goal A* connects) is solved
    cold and its path stored. Day 2: ``variants`` new requests per map with the start and the
    goal moved by N(0, ``jitter_m``) each (a robot sent to nearly the same place again),
    solved cold and with memory, in alternating order; then the first problem of as many maps
    never seen, cold and with memory (hints must be ignored). ms: wall time of the whole run
    (recall, key, seed search or not, steps, result), batch 1.
    """
    from sage_irp_ros.plugins.control import maps
    from sage_irp_ros.plugins.control.plugin import ControlProblem
    from sage_irp_ros.plugins.control.plugin import load_default as load_control
    plugin = load_control()
    cfg = plugin.halt_config()
    tmp = tempfile.mkdtemp(prefix='memory_bench_control_')
    rng = np.random.default_rng(4242)
    try:
        store = ExperienceStore(os.path.join(tmp, 'control.db'))
        recall = recall_from(store, 'control', recall_threshold(plugin))
        probs = [pr for kind in maps.KINDS for i in range(maps_per_kind)
                 if (pr := maps.make_problem(split, kind, 200, i)) is not None]
        others = [pr for kind in maps.KINDS for i in range(maps_per_kind, 2 * maps_per_kind)
                  if (pr := maps.make_problem(split, kind, 200, i)) is not None]
        for pr in probs:  # day 1
            res = refine(plugin, ControlProblem(pr.grid, tuple(pr.start), tuple(pr.goal)),
                         None, config=cfg)
            item = run_experience(plugin, res, 'control')
            if item is not None:
                store.add(**check_experience(item))
        out = {}
        for name, group, jit in (('recurring', probs, jitter_m), ('norecur', others, 0.0)):
            rows = {'cold': [], 'memory': []}
            used = 0
            gate = RecallGate()
            n_var = variants if name == 'recurring' else 1
            for pr in group:
                for v in range(n_var):
                    s = tuple(np.asarray(pr.start) + rng.normal(0, jit, 2))
                    g = tuple(np.asarray(pr.goal) + rng.normal(0, jit, 2))
                    try:
                        plugin.check(ControlProblem(pr.grid, s, g))
                    except ValueError:
                        continue  # moved into an obstacle's margin: not a request
                    order = (('cold', None), ('memory', gate))
                    for label, gt in (order if v % 2 == 0 else order[::-1]):
                        res, ms = timed_with(plugin, ControlProblem(pr.grid, s, g), gt,
                                             recall, cfg)
                        rows[label].append((res.trace.steps, ms, res.output.feasible,
                                            res.output.metrics.get('length', 0.0)))
                        if label == 'memory':
                            used += bool(res.state.meta.get('warm_start', {}).get('used'))
            rep = {}
            for label, r in rows.items():
                a = np.asarray(r, dtype=np.float64)
                rep[label] = {'n': len(r), 'steps_mean': round(float(a[:, 0].mean()), 3),
                              'ms_mean': round(float(a[:, 1].mean()), 3),
                              'ms_median': round(float(np.median(a[:, 1])), 3),
                              'feasible': round(float(a[:, 2].mean()), 4),
                              'length_mean_m': round(float(a[:, 3].mean()), 4)}
            rep['warm_start_rate'] = round(used / max(len(rows['memory']), 1), 3)
            rep['time_saving'] = round(1 - rep['memory']['ms_mean'] / rep['cold']['ms_mean'], 4)
            rep['steps_saving'] = round(
                1 - rep['memory']['steps_mean'] / max(rep['cold']['steps_mean'], 1e-9), 4)
            out[name] = rep
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.update(maps=len(probs), split=split, variants=variants, jitter_m=jitter_m,
               size='200x200 cells at 5 cm', recall_similarity=plugin.recall_similarity)
    return out


def main(argv=None) -> int:
    """Command-line entry point: write the JSON report and print a summary."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--places', type=int, default=20)
    ap.add_argument('--day1', type=int, default=20, help='visits of each place on day 1')
    ap.add_argument('--day2', type=int, default=4, help='new visits of each place on day 2')
    ap.add_argument('--norecur', type=int, default=80, help='never-seen places on day 2')
    ap.add_argument('--n-sleep', type=int, default=10000,
                    help='stored experiences for the sleep-time figure (0: skip)')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--weights', default=DEFAULT_WEIGHTS)
    ap.add_argument('--out', default=os.path.join('out', 'bench', 'memory.json'))
    ap.add_argument('--validation', action='store_true',
                    help='validation seeds instead of held-out ones (for choosing thresholds)')
    ap.add_argument('--recall-similarity', type=float, default=None)
    ap.add_argument('--recall-agreement', type=float, default=None)
    ap.add_argument('--recall-energy-tol', type=float, default=None,
                    help="VisionIRP's recall_energy_tol (when a warm start has reached the "
                         "remembered run's energy; chosen on validation)")
    ap.add_argument('--recall-shift', type=int, default=None,
                    help="VisionIRP's recall_shift (the hint's alignment search, in cells)")
    ap.add_argument('--recall-halt-members', type=int, default=None,
                    help="VisionIRP's recall_halt_members (the fewest visits a hint stands for "
                         'to halt a warm start at step 0; a large number: never)')
    ap.add_argument('--eager-encoder', action='store_true',
                    help="VisionIRP(compile_encoder=False): the encoder as plain PyTorch "
                         '(the default runs it compiled on a CPU)')
    ap.add_argument('--control-maps', type=int, default=5,
                    help='held-out maps per kind for the control warm starts (0: skip)')
    ap.add_argument('--size-weight', type=float, default=1.0,
                    help="sleep's size term (SleepIRP size_weight; 1.0 as config/sage_irp.yaml, "
                         'chosen on validation streams)')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    kw = {k: v for k, v in (('recall_similarity', args.recall_similarity),
                            ('recall_agreement', args.recall_agreement),
                            ('recall_energy_tol', args.recall_energy_tol),
                            ('recall_shift', args.recall_shift),
                            ('recall_halt_members', args.recall_halt_members))
          if v is not None}
    plugin = VisionIRP.from_checkpoint(args.weights, compile_encoder=not args.eager_encoder, **kw)
    if plugin.cfg.task != 'tags':
        raise SystemExit('the memory benchmark needs the tags/propagate vision model')
    C = len(plugin.classes)
    config = plugin.halt_config()
    seed0 = scenes.MEMORY_VAL_SEED0 + 10_000 if args.validation else scenes.MEMORY_HELD_OUT_SEED0
    tmp = tempfile.mkdtemp(prefix='memory_bench_')
    try:
        store = ExperienceStore(os.path.join(tmp, 'memory.db'))

        recall = recall_from(store, PLUGIN, recall_threshold(plugin))

        # warm-up (allocator, kernels) on validation frames
        for i in range(10):
            refine(plugin, scenes.revisit(*place(scenes.MEMORY_VAL_SEED0, i), 0)[0], None,
                   config=config)

        # --- day 1: cold, stored
        day1 = Day(C)
        for v in range(args.day1):
            for i in range(args.places):
                s, d = place(seed0, i)
                img, gt = scenes.revisit(s, d, v)
                res, ms = timed(plugin, img, None, config)
                day1.add(res, gt, ms)
                store.add(**experience_of(plugin, res, s))
        before = store.stats()
        shutil.copy(store.path, os.path.join(tmp, 'raw.db'))  # (checkpointed by stats)
        for suffix in ('-wal', '-shm'):
            if os.path.exists(store.path + suffix):
                shutil.copy(store.path + suffix, os.path.join(tmp, 'raw.db' + suffix))

        # --- sleep
        def sleeper():
            return SleepIRP(size_weight=args.size_weight)
        rep = consolidate(store, PLUGIN, sleeper=sleeper())
        after = store.stats()

        # --- day 2: recurring, cold and after sleep, interleaved; memory looked up as the node
        # host does (RecallGate: on every input while it gives warm starts, fewer when not).
        # The look-up's parts are timed inside these runs (LookupTimer; ATP includes them).
        cold, warm = Day(C), Day(C)
        gate = RecallGate()
        frames = []
        parts = LookupTimer(plugin)
        timed_recall = parts.recall(recall)
        # the simple baseline at the warm runs' compute: cold runs of a fixed 1 or 2 steps
        fixed = {k: Day(C) for k in (1, 2)}
        for v in range(args.day1, args.day1 + args.day2):
            for i in range(args.places):
                s, d = place(seed0, i)
                img, gt = scenes.revisit(s, d, v)
                frames.append((img, s))
                order = ((cold, None), (warm, gate))
                for day, g in (order if (v + i) % 2 == 0 else order[::-1]):
                    res, ms = timed_with(plugin, img, g, timed_recall, config)
                    day.add(res, gt, ms)
                for k, day in fixed.items():
                    res, ms = timed(plugin, img, {'confident': False}, plugin.no_halt_config(k))
                    day.add(res, gt, ms)
        lookup_ms = parts.report()
        parts.close()

        # --- day 2: places never seen
        ncold, nwarm = Day(C), Day(C)
        ngate = RecallGate()
        for i in range(args.norecur):
            s, d = place(seed0 + 50_000, i)
            img, gt = scenes.revisit(s, d, 0)
            order = ((ncold, None), (nwarm, ngate))
            for day, g in (order if i % 2 == 0 else order[::-1]):
                res, ms = timed_with(plugin, img, g, recall, config)
                day.add(res, gt, ms)

        # --- recall@1 before (raw copy) and after sleep
        raw = ExperienceStore(os.path.join(tmp, 'raw.db'))
        r_before = recall_at_1(raw, plugin, frames)
        raw.close()
        r_after = recall_at_1(store, plugin, frames)
        store.close()

        # --- sleep at scale
        scale = {}
        if args.n_sleep > 0:
            big = ExperienceStore(os.path.join(tmp, 'big.db'))
            visits = 20
            t = time.perf_counter()
            batch = []
            for n in range(args.n_sleep):
                s, d = place(seed0 + 100_000, n // visits)
                res = refine(plugin, scenes.revisit(s, d, n % visits)[0], None, config=config)
                batch.append(experience_of(plugin, res))
                if len(batch) == 500:
                    big.add_many(batch)
                    batch = []
            if batch:
                big.add_many(batch)
            fill_s = time.perf_counter() - t
            b0 = big.stats()
            big_rep = consolidate(big, PLUGIN, sleeper=sleeper())
            b1 = big.stats()
            big.close()
            scale = {'experiences': args.n_sleep, 'places': -(-args.n_sleep // visits),
                     'fill_seconds': round(fill_s, 1),
                     'sleep_seconds': round(big_rep.seconds, 3),
                     'refine_seconds': round(big_rep.refine_seconds, 3),
                     'write_seconds': round(big_rep.write_seconds, 3),
                     'steps': big_rep.steps, 'halt_reason': big_rep.halt_reason,
                     'prototypes': big_rep.prototypes,
                     'bytes_before': b0['bytes_used'], 'bytes_after': b1['bytes_used']}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    control = {}
    if args.control_maps > 0:
        control = control_warm_starts('dev' if args.validation else 'held_out',
                                      args.control_maps, 3, 0.05)
    c, w, nc, nw = cold.report(), warm.report(), ncold.report(), nwarm.report()
    out = {
        'atp_saving_recurring': round(1.0 - w['atp_mean_ms'] / c['atp_mean_ms'], 4),
        'miou_delta_recurring': round(100.0 * (w['miou'] - c['miou']), 3),
        'steps_saving_recurring': round(1.0 - w['steps_mean'] / max(c['steps_mean'], 1e-9), 4),
        'atp_delta_norecur': round(nw['atp_mean_ms'] / nc['atp_mean_ms'] - 1.0, 4),
        'fixed_cold_recurring': {f'k={k}': d.report() for k, d in fixed.items()},
        'miou_delta_norecur': round(100.0 * (nw['miou'] - nc['miou']), 3),
        'steps_delta_norecur': round(nw['steps_mean'] - nc['steps_mean'], 3),
        'compression_ratio': round(before['bytes_used'] / max(after['bytes_used'], 1), 3),
        'recall_at_1_before_sleep': round(r_before, 4),
        'recall_at_1_after_sleep': round(r_after, 4),
        'recall_ratio': round(r_after / r_before, 4) if r_before > 0 else None,
        'sleep_seconds_10k': scale.get('sleep_seconds'),
        'sleep_at_scale': scale,
        'control': control,
        'day1_cold': day1.report(),
        'day2_recurring': {'cold': c, 'after_sleep': w},
        'day2_norecur': {'cold': nc, 'with_memory': nw},
        'sleep': {'steps': rep.steps, 'halt_reason': rep.halt_reason,
                  'prototypes': rep.prototypes, 'replaced': rep.replaced,
                  'seconds': round(rep.seconds, 3), 'energies': [round(e, 4) for e in
                                                                 rep.energies],
                  'rows_before': before['rows'], 'rows_after': after['rows'],
                  'bytes_before': before['bytes_used'], 'bytes_after': after['bytes_used']},
        'stream': {'places': args.places, 'day1_visits': args.day1, 'day2_visits': args.day2,
                   'norecur_places': args.norecur, 'max_shift_px': 3,
                   'seeds': f'{"validation" if args.validation else "held-out"} {seed0} ..'},
        'lookup_ms_recurring': lookup_ms,
        'sleep_size_weight': sleeper().size_weight,
        'warm_start': {'recall_similarity': plugin.recall_similarity,
                       'recall_agreement': plugin.recall_agreement,
                       'recall_energy_tol': plugin.recall_energy_tol,
                       'recall_shift': plugin.recall_shift,
                       'recall_halt_members': plugin.recall_halt_members,
                       'recall_gate': {'patience': gate.patience,
                                       'max_interval': gate.max_interval,
                                       'recurring_asked': gate.asked,
                                       'recurring_skipped': gate.skipped,
                                       'norecur_asked': ngate.asked,
                                       'norecur_skipped': ngate.skipped}},
        'atp': 'wall ms of the whole run (recall, encoding, steps, decoding), batch 1',
        'encoder_compiled': plugin.encoder_compiled,
        'device': 'cpu', 'device_name': platform.processor() or platform.machine(),
        'torch_threads': torch.get_num_threads(), 'torch': torch.__version__,
        'command': 'python bench/memory_bench.py ' + ' '.join(sys.argv[1:] if argv is None
                                                              else argv),
        'bench_seconds': round(time.perf_counter() - t_all, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(out, f, indent=2)
        f.write('\n')
    print(f"recurring: ATP {c['atp_mean_ms']:.2f} -> {w['atp_mean_ms']:.2f} ms "
          f"(saving {out['atp_saving_recurring']:.3f}), steps {c['steps_mean']:.2f} -> "
          f"{w['steps_mean']:.2f}, mIoU {c['miou']:.4f} -> {w['miou']:.4f} "
          f"(warm starts {w['warm_start_rate']:.2f})")
    print(f"no recurrence: ATP {nc['atp_mean_ms']:.2f} -> {nw['atp_mean_ms']:.2f} ms "
          f"(delta {out['atp_delta_norecur']:+.3f}), mIoU {nc['miou']:.4f} -> {nw['miou']:.4f}"
          f" (warm starts {nw['warm_start_rate']:.2f})")
    print(f"compression {out['compression_ratio']}x, recall@1 {r_before:.3f} -> {r_after:.3f}, "
          f"sleep on {args.n_sleep}: {out['sleep_seconds_10k']} s")
    if control:
        cr, cn = control['recurring'], control['norecur']
        print(f"control, recurring: {cr['cold']['ms_mean']:.1f} -> {cr['memory']['ms_mean']:.1f}"
              f" ms (saving {cr['time_saving']:.3f}), steps {cr['cold']['steps_mean']:.2f} -> "
              f"{cr['memory']['steps_mean']:.2f}, feasible {cr['cold']['feasible']:.3f} -> "
              f"{cr['memory']['feasible']:.3f}; never seen: {cn['cold']['ms_mean']:.1f} -> "
              f"{cn['memory']['ms_mean']:.1f} ms (warm starts {cn['warm_start_rate']:.2f})")
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
