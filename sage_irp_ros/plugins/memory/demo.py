"""Memory in ``make demo``: places recur, the robot sleeps, and later visits cost less.

    python -m sage_irp_ros.plugins.memory.demo [--out out/demo/memory] [--places 8]
                                               [--day1 8] [--day2 3]

A stream of camera frames in which places recur (``scenes.revisit``: held-out 'tags' scenes
of the vision model, every visit with new sensor noise and a view shifted by up to 3 pixels)
is refined by the vision plugin with memory, as the node host and ``memory_irp_node`` do it
(same classes, in one process, no DDS): on day 1 the places are new, every run starts cold
and its experience is stored; after day 1 the robot **sleeps**
(``consolidate``: a refinement of prototypes, its energy per step printed), then day 2 revisits
the places, recalling from the store (``ctx['recall']``). Every day-2 frame is also refined
cold (no memory) for comparison. Writes
``memory.json`` (per-frame steps, ATP in ms, warm start, mIoU per day) and ``memory.png``
(steps and ATP per frame, day 1 and day 2, cold vs with memory) into ``--out``.

``out/bench/memory.json`` (``bench/memory_bench.py``) has the benchmark figures; this is the
demonstration, on other seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

DEMO_SEED0 = 8_900_000  # held-out range of the memory streams, apart from the benchmark's


def _run(plugin, img, ctx, config):
    from sage_irp_ros.core.loop import refine
    t = time.perf_counter()
    res = refine(plugin, img, ctx, config=config)
    return res, (time.perf_counter() - t) * 1e3


def main(argv=None) -> int:
    """Run the days, print what happens, write the JSON and the plot."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join('out', 'demo', 'memory'))
    ap.add_argument('--places', type=int, default=8)
    ap.add_argument('--day1', type=int, default=8, help='visits of each place before sleep')
    ap.add_argument('--day2', type=int, default=3, help='visits of each place after sleep')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--weights', default=None, help='vision checkpoint (default: committed)')
    args = ap.parse_args(argv)
    import torch

    from sage_irp_ros.plugins.memory.experience import (
        check_experience,
        recall_from,
        recall_threshold,
        run_experience,
    )
    from sage_irp_ros.plugins.memory.sleep import SleepIRP, consolidate
    from sage_irp_ros.plugins.memory.store import ExperienceStore
    from sage_irp_ros.plugins.vision import scenes
    from sage_irp_ros.plugins.vision.evaluate import IoUAccumulator
    from sage_irp_ros.plugins.vision.plugin import VisionIRP, load_default
    torch.set_num_threads(args.threads)
    plugin = load_default() if args.weights is None else VisionIRP.from_checkpoint(args.weights)
    if plugin.cfg.refiner != 'propagate':
        print('memory demo: the committed vision model is not remembered; skipped')
        return 0
    config = plugin.halt_config()
    os.makedirs(args.out, exist_ok=True)
    places = [(DEMO_SEED0 + i, (i * 0.618034) % 1.0) for i in range(args.places)]
    frames = {'day1': [], 'day2': []}
    with tempfile.TemporaryDirectory() as tmp:
        store = ExperienceStore(os.path.join(tmp, 'memory.db'))

        recall = recall_from(store, 'vision', recall_threshold(plugin))

        def remember(res):
            item = run_experience(plugin, res, 'vision')
            if item is not None:  # None: started from memory, not stored again
                store.add(**check_experience(item))

        for _ in range(3):  # warm-up (allocator, kernels)
            _run(plugin, scenes.revisit(*places[0], 99)[0], None, config)
        acc = {k: IoUAccumulator(len(plugin.classes)) for k in ('day1', 'day2_cold', 'day2')}
        print(f'memory demo: {args.places} places, {args.day1} visits before sleep, '
              f'{args.day2} after (out: {args.out})', flush=True)
        for v in range(args.day1):
            for s, d in places:
                img, gt = scenes.revisit(s, d, v)
                res, ms = _run(plugin, img, None, config)  # day 1: places not seen before
                remember(res)
                acc['day1'].add(res.output, gt)
                ws = res.state.meta.get('warm_start', {})
                frames['day1'].append({'place': s, 'visit': v, 'steps': res.trace.steps,
                                       'atp_ms': round(ms, 3),
                                       'warm_start': bool(ws.get('used'))})
        before = store.stats()
        rep = consolidate(store, 'vision', sleeper=SleepIRP(size_weight=1.0))  # as the config
        after = store.stats()
        print(f'sleep: {rep.inputs} experiences -> {rep.prototypes} prototypes in {rep.steps} '
              f'steps ({rep.halt_reason}), energy '
              + ' '.join(f'{e:.3f}' for e in rep.energies)
              + f'; store {before["bytes_used"] / 1e6:.2f} -> {after["bytes_used"] / 1e6:.2f} MB,'
              f' {rep.seconds:.2f} s', flush=True)
        for v in range(args.day1, args.day1 + args.day2):
            for s, d in places:
                img, gt = scenes.revisit(s, d, v)
                cold, cms = _run(plugin, img, None, config)
                res, ms = _run(plugin, img, {'recall': recall}, config)
                acc['day2_cold'].add(cold.output, gt)
                acc['day2'].add(res.output, gt)
                ws = res.state.meta.get('warm_start', {})
                frames['day2'].append({'place': s, 'visit': v, 'steps': res.trace.steps,
                                       'atp_ms': round(ms, 3), 'cold_steps': cold.trace.steps,
                                       'cold_atp_ms': round(cms, 3),
                                       'warm_start': bool(ws.get('used')),
                                       'similarity': ws.get('similarity')})
        store.close()

    def mean(day, key):
        return float(np.mean([f[key] for f in frames[day]]))
    summary = {
        'day1': {'miou': round(acc['day1'].miou(), 4), 'steps_mean': mean('day1', 'steps'),
                 'atp_mean_ms': mean('day1', 'atp_ms'),
                 'warm_start_rate': mean('day1', 'warm_start')},
        'day2_cold': {'miou': round(acc['day2_cold'].miou(), 4),
                      'steps_mean': mean('day2', 'cold_steps'),
                      'atp_mean_ms': mean('day2', 'cold_atp_ms')},
        'day2_after_sleep': {'miou': round(acc['day2'].miou(), 4),
                             'steps_mean': mean('day2', 'steps'),
                             'atp_mean_ms': mean('day2', 'atp_ms'),
                             'warm_start_rate': mean('day2', 'warm_start')},
        'sleep': {'experiences': rep.inputs, 'prototypes': rep.prototypes, 'steps': rep.steps,
                  'halt_reason': rep.halt_reason, 'energies': rep.energies,
                  'bytes_before': before['bytes_used'], 'bytes_after': after['bytes_used'],
                  'seconds': rep.seconds},
        'frames': frames,
        'command': 'python -m sage_irp_ros.plugins.memory.demo ' + ' '.join(
            sys.argv[1:] if argv is None else argv),
    }
    with open(os.path.join(args.out, 'memory.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=1)
        f.write('\n')
    for k in ('day1', 'day2_cold', 'day2_after_sleep'):
        s = summary[k]
        print(f"{k:17s} mIoU {s['miou']:.4f}  steps {s['steps_mean']:.2f}  "
              f"ATP {s['atp_mean_ms']:.2f} ms" + (f"  warm starts {s['warm_start_rate']:.2f}"
                                                 if 'warm_start_rate' in s else ''))
    _plot(os.path.join(args.out, 'memory.png'), frames, summary)
    print(f'wrote {args.out}: memory.json, memory.png', flush=True)
    return 0


def _plot(path, frames, summary) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n1, n2 = len(frames['day1']), len(frames['day2'])
    x1, x2 = np.arange(n1), np.arange(n1, n1 + n2)
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, key, ckey, label in ((axes[0], 'steps', 'cold_steps', 'steps'),
                                 (axes[1], 'atp_ms', 'cold_atp_ms', 'ATP (ms)')):
        ax.plot(x1, [f[key] for f in frames['day1']], '.', color='tab:gray',
                label='day 1 (before sleep)')
        ax.plot(x2, [f[ckey] for f in frames['day2']], 'x', color='tab:red', alpha=0.6,
                label='day 2, cold (no memory)')
        ax.plot(x2, [f[key] for f in frames['day2']], 'o', color='tab:blue', ms=4,
                label='day 2, after sleep')
        ax.axvline(n1 - 0.5, color='k', ls='--', lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].text(n1 - 0.3, axes[0].get_ylim()[1] * 0.9, 'sleep', fontsize=9)
    axes[0].legend(fontsize=8, loc='upper left')
    axes[1].set_xlabel('frame')
    s = summary
    fig.suptitle(f"memory: steps {s['day2_cold']['steps_mean']:.2f} -> "
                 f"{s['day2_after_sleep']['steps_mean']:.2f}, ATP "
                 f"{s['day2_cold']['atp_mean_ms']:.1f} -> "
                 f"{s['day2_after_sleep']['atp_mean_ms']:.1f} ms per frame after sleep "
                 f"(mIoU {s['day2_cold']['miou']:.3f} -> {s['day2_after_sleep']['miou']:.3f})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == '__main__':
    sys.exit(main())
