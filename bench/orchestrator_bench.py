"""Orchestrator benchmark: the same input stream under three budget policies.

Every plugin of the registry (:mod:`sage_irp_ros.registry`) with a ``workload`` hook takes part:
``workload(cycles)`` gives its plugin, halting config, one input per cycle and its quality metric.
Built in: the vision and language plugins and the misbehaving test fixture (noisy, non-monotone
energy), on held-out scenes alternating easy and hard, held-out sentences alternating 15 % and
50 % span masking, noisy signals (``plugins/<name>/demo.py:workload``,
``plugins/fixture:workload``). Every cycle shares a fixed total ATP. Policies, on identical
inputs:

- ``trust``: the orchestrator's own bookkeeping (:class:`CycleAllocator`: trust x demand with a
  floor, same-cycle re-grant of early-halt savings, trust learned from every run);
- ``equal``: ``T / n`` per plugin per cycle (n plugins), no re-grant;
- ``unlimited``: no budget at all (every plugin runs until its own halting rule or max_steps).

ATP is charged as a node charges it (``refine`` with a ``StepCostMeter`` and ``skip_unpaid``, as
the node host calls it): a per-input price (encoding, initial energy, halting checks and decoding
of one input: what a run costs beyond its steps) when a run starts, and a price per step before
each step. An input whose grant cannot pay the whole per-input price (a zero grant: the plugin
sits the cycle out) is not run, as in a node: it is counted in ``dropped_no_budget`` and scores
as no answer (below). The prices are measured once at
start-up, the same for the three policies: ``StepCostMeter.calibrate`` on the first input, then
``--warmup-cycles`` concurrent cycles without budget in which the meters learn from the runs as
a node's meter does (the calibration times each call alone; the runs share the cores with each
other). Each policy then starts from a copy of those prices and, by default, goes on learning
from its own runs, so ATP keeps tracking the time runs take under that policy's load;
``--fixed-tariffs`` freezes the start-up prices instead (every policy pays exactly the same for
the same work, but ATP drifts from wall time as the load changes). ``atp_over_wall`` (per
plugin and policy: ATP spent / wall time of its runs, summed over the cycles) says how well ATP
tracks time. The total per cycle is ``--atp-fraction`` of the mean ATP per cycle the unlimited
policy spends.
Within a cycle the three plugins refine concurrently (one thread each, as their nodes would);
when a run ends its record is folded into trust and demand at once, and a re-grant tops up the
runs still going, which see it at their next step.

Quality (each workload's metric, reported per plugin kind): vision mIoU over all frames
(``plugins/vision/evaluate.py``), language token accuracy over the masked positions; combined
score = mean over the plugins that are not test fixtures of quality relative to the unlimited
policy (1.0 = nothing lost). The fixture's quality (fraction of noise removed) is reported, not
combined: it is a test fixture. An input dropped for want of budget has no answer and scores 0:
a plugin's quality is its metric over the inputs it answered times the fraction it answered
(``answered``; ``quality_answered`` is the metric over the answered inputs alone).

Deadline misses: cycles whose wall time (the three concurrent runs, encoding and decoding
included) exceeded ``--period-ms``.

Usage: ``python bench/orchestrator_bench.py [--cycles 60] [--atp-fraction 0.5]
[--warmup-cycles 20] [--fixed-tariffs]``; writes ``out/bench/orchestrator.json``.
"""

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sage_irp_ros import registry  # noqa: E402
from sage_irp_ros.core import Budget, RunInfo, StepCostMeter, make_record, refine  # noqa: E402
from sage_irp_ros.core.allocator import CycleAllocator, TrustBook  # noqa: E402


class Workload:
    """One plugin, its inputs (one per cycle), its halting config and its task metric."""

    def __init__(self, name, kind, plugin, config, items, metric, fixture=False):
        self.name, self.kind, self.plugin, self.config = name, kind, plugin, config
        self.items, self.metric = items, metric  # items: [(x0, truth)]; metric(outs, truths)
        self.fixture = fixture  # a test fixture: reported, not in the combined score


def workloads(cycles):
    """Build a workload per registry entry with a ``workload`` hook (registry order)."""
    out = []
    for spec in registry.specs():
        if spec.workload:
            plugin, config, items, metric = registry.load(spec.workload)(cycles)
            out.append(Workload('/' + spec.node_name, spec.kind, plugin, config, items, metric,
                                fixture=spec.fixture))
    return out


def run_policy(policy, wls, meters, total, cycles, period_ms):
    """Run ``cycles`` cycles under ``policy`` (``meters``: each plugin's cost meter, charged and
    learning as in a node); return per-plugin results and accounting."""
    results = {w.name: [] for w in wls}
    spent = {w.name: 0.0 for w in wls}
    run_ms = {w.name: 0.0 for w in wls}  # wall time of the plugin's runs
    halts = {w.name: {} for w in wls}
    misses = 0
    walls = []
    over = 0
    overhead = []
    trust_hist = {w.name: [] for w in wls}
    share_hist = {w.name: [] for w in wls}
    alloc = CycleAllocator(total=total, floor=0.05, liveness_timeout=1e9,
                           trust=TrustBook(alpha=0.2)) if policy == 'trust' else None
    pool = ThreadPoolExecutor(len(wls))
    dropped = {w.name: 0 for w in wls}
    for c in range(cycles):
        t_cpu = time.thread_time()
        if policy == 'trust':
            for w in wls:  # every node's /diagnostics is its heartbeat, with its prices
                m = meters[w.name]
                alloc.heartbeat(w.name, w.kind, float(c), m.per_input_ms + m.per_step_ms)
            grants = alloc.start_cycle(now=float(c)) if c else {w.name: total / len(wls)
                                                               for w in wls}
        elif policy == 'equal':
            grants = {w.name: total / len(wls) for w in wls}
        else:
            grants = {w.name: float('inf') for w in wls}
        cpu = time.thread_time() - t_cpu
        if sum(g for g in grants.values() if np.isfinite(g)) > total * (1 + 1e-9) + 1e-9:
            over += 1
        budgets = {n: Budget(g) for n, g in grants.items()}
        by_name = {w.name: w for w in wls}
        t_cycle = time.perf_counter()
        # The three plugins refine concurrently (threads; torch releases the GIL); as each run
        # ends, its record is folded in and any re-grant tops up the runs still going.
        futures = {pool.submit(refine, w.plugin, w.items[c][0], None, config=w.config,
                               budget=budgets[w.name], cost=meters[w.name],
                               skip_unpaid=True): w.name
                   for w in wls}
        for fut in as_completed(futures):
            name = futures[fut]
            w = by_name[name]
            r = fut.result()
            results[name].append((r, w.items[c][1]))
            if r is None:  # its grant could not pay the input: not run, no answer, no record
                dropped[name] += 1
                continue
            spent[name] += r.trace.atp_spent
            run_ms[name] += r.trace.time_ms
            halts[name][r.trace.halt_reason] = halts[name].get(r.trace.halt_reason, 0) + 1
            if policy == 'trust':
                t_cpu = time.thread_time()
                meter = meters[name]
                rec = make_record(w.kind, r.trace, entity_id=name, run=RunInfo(
                    cycle=None, trust_weight=None, atp_per_step=meter.per_step_ms,
                    atp_per_input=meter.per_input_ms))
                if c == 0:  # the first cycle runs on an equal split while trust is learned
                    alloc.observe(name, w.kind, rec, now=float(c), cycle=None)
                else:
                    for n, g in alloc.observe(name, w.kind, rec, now=float(c),
                                              cycle=alloc.cycle).items():
                        budgets[n].grant(g)
                cpu += time.thread_time() - t_cpu
        wall = time.perf_counter() - t_cycle
        walls.append(wall * 1e3)
        if wall * 1e3 > period_ms:  # the cycle's compute overran the cycle period
            misses += 1
        overhead.append(cpu * 1e3)
        for w in wls:
            trust_hist[w.name].append(alloc.trust.trust(w.name) if alloc else 1.0)
            g = budgets[w.name].granted
            share_hist[w.name].append(g / total if np.isfinite(g) else None)
    pool.shutdown()
    for w in wls:  # every plugin answered every cycle (in cycle order)
        assert len(results[w.name]) == cycles
    atp_over_wall = {n: spent[n] / run_ms[n] if run_ms[n] > 0 else None for n in spent}
    return (results, spent, halts, misses, over, overhead, trust_hist, share_hist, walls,
            atp_over_wall, dropped)


def quality_of(w, rs):
    """``w``'s metric over the inputs it answered x the fraction answered (a dropped input: 0);
    return ``(quality, metric over the answered inputs or None, fraction answered)``."""
    done = [(r, t) for r, t in rs if r is not None]
    if not done:
        return 0.0, None, 0.0
    q = float(w.metric([r for r, _ in done], [t for _, t in done]))
    frac = len(done) / len(rs)
    return q * frac, q, frac


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cycles', type=int, default=60)
    ap.add_argument('--atp-fraction', type=float, default=0.5)
    ap.add_argument('--period-ms', type=float, default=40.0,
                    help='cycle period (25 Hz camera): a cycle whose compute takes longer is a '
                         'deadline miss')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--warmup-cycles', type=int, default=20,
                    help='concurrent cycles without budget at start-up in which the cost meters '
                         'learn from real runs (after calibration), before the policies run')
    ap.add_argument('--fixed-tariffs', action='store_true',
                    help='freeze the start-up prices (no learning while the policies run)')
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'bench', 'orchestrator.json'))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wls = workloads(args.cycles)
    real = [w for w in wls if not w.fixture]  # the robot's plugins: the combined score
    fx = next((w.name for w in wls if w.fixture), None)  # the misbehaving fixture
    start = {}  # the start-up prices: calibrated, then learned over the warm-up cycles
    for w in wls:
        start[w.name] = StepCostMeter()
        start[w.name].calibrate(w.plugin, w.items[0][0], steps=5)

    def prices(meters):
        return {n: {'step': m.per_step_ms, 'input': m.per_input_ms} for n, m in meters.items()}

    calibrated = prices(start)
    warmup = max(min(args.warmup_cycles, args.cycles), 0)
    if warmup:
        run_policy('unlimited', wls, start, 1.0, warmup, args.period_ms)

    def meters():  # every policy starts from the same prices
        return {n: m.copy(learn=not args.fixed_tariffs) for n, m in start.items()}

    out = {'cycles': args.cycles, 'atp_fraction': args.atp_fraction,
           'period_ms': args.period_ms, 'warmup_cycles': warmup,
           'fixed_tariffs': args.fixed_tariffs,
           'prices_calibrated_ms': calibrated,
           'tariff_ms_per_step': {n: m.per_step_ms for n, m in start.items()},
           'tariff_ms_per_input': {n: m.per_input_ms for n, m in start.items()},
           'torch_threads': args.threads, 'cpu': platform.processor() or platform.machine(),
           'policies': {}}
    runs = {}
    end_prices = {}
    m = meters()
    res = run_policy('unlimited', wls, m, 1.0, args.cycles, args.period_ms)
    end_prices['unlimited'] = prices(m)
    runs['unlimited'] = res
    total = args.atp_fraction * sum(res[1].values()) / args.cycles
    out['total_atp_per_cycle'] = total
    for policy in ('trust', 'equal'):
        m = meters()
        runs[policy] = run_policy(policy, wls, m, total, args.cycles, args.period_ms)
        end_prices[policy] = prices(m)
    q_unl = {}
    for policy in ('unlimited', 'trust', 'equal'):
        (results, spent, halts, misses, over, overhead, trust_hist, share_hist, walls,
         atp_over_wall, dropped) = runs[policy]
        quality, quality_answered, answered = {}, {}, {}
        for w in wls:
            quality[w.kind], quality_answered[w.kind], answered[w.kind] = quality_of(
                w, results[w.name])
        if policy == 'unlimited':
            q_unl = dict(quality)
        combined = float(np.mean([quality[w.kind] / q_unl[w.kind] for w in real]))
        p = {'quality': quality, 'combined': combined, 'quality_answered': quality_answered,
             'answered': answered, 'dropped_no_budget': dropped,
             'atp_spent': sum(spent.values()), 'atp_spent_per_plugin': spent,
             'atp_over_wall': atp_over_wall, 'prices_end_ms': end_prices[policy],
             'halt_reasons': halts, 'deadline_misses': misses, 'overallocations': over,
             'cycle_wall_ms_mean': float(np.mean(walls)),
             'overhead_ms_per_cycle_mean': float(np.mean(overhead)),
             'overhead_ms_per_cycle_max': float(np.max(overhead))}
        if policy == 'trust':
            lowest_from = None
            for c in range(args.cycles):
                lowest = fx is not None and all(trust_hist[fx][c] < trust_hist[w.name][c]
                                                for w in real)
                if lowest and lowest_from is None:
                    lowest_from = c + 1
                elif not lowest:
                    lowest_from = None
            p['final_trust'] = {w.name: trust_hist[w.name][-1] for w in wls}
            p['final_share'] = {w.name: share_hist[w.name][-1] for w in wls}
            p['fixture_lowest_trust_from_cycle'] = lowest_from
        out['policies'][policy] = p
    pol = out['policies']
    out['summary'] = {
        'quality_trust': dict(pol['trust']['quality'], combined=pol['trust']['combined']),
        'quality_equal': dict(pol['equal']['quality'], combined=pol['equal']['combined']),
        'quality_unlimited': dict(pol['unlimited']['quality'],
                                  combined=pol['unlimited']['combined']),
        'atp_spent': {k: pol[k]['atp_spent'] for k in pol},
        'atp_over_wall': {k: pol[k]['atp_over_wall'] for k in pol},
        'dropped_no_budget': {k: pol[k]['dropped_no_budget'] for k in pol},
        'deadline_misses': {k: pol[k]['deadline_misses'] for k in pol},
        'overallocations': pol['trust']['overallocations'] + pol['equal']['overallocations'],
        'overhead_ms_per_cycle': pol['trust']['overhead_ms_per_cycle_mean'],
        'fixture_final_trust': pol['trust']['final_trust'].get(fx),
        'fixture_final_share': pol['trust']['final_share'].get(fx),
        'fixture_lowest_trust_from_cycle': pol['trust']['fixture_lowest_trust_from_cycle'],
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out['summary'], indent=1))
    for k in ('unlimited', 'trust', 'equal'):
        print(k, {n: round(v, 4) for n, v in pol[k]['quality'].items()},
              'combined', round(pol[k]['combined'], 4), 'atp_over_wall',
              {n: None if v is None else round(v, 3) for n, v in pol[k]['atp_over_wall'].items()})


if __name__ == '__main__':
    main()
