"""Benchmark of the vision refiner on the held-out scenes: quality and compute, halting on vs off.

    python bench/vision_bench.py [--n N] [--device cpu] [--precision fp32] [--threads 1]
                                 [--weights PATH] [--out out/bench/vision.json]

Every figure comes from the core loop (``sage_irp_ros.core.loop.refine``), batch size 1, on the
first ``N`` scenes of each held-out split (easy, hard). For each image, in one pass:

- ``step0``: ``max_steps=0`` (the decoder applied to the encoder's latent);
- ``full``: halting off (no 'confident' rule, slope rule disabled), all ``steps_max`` steps;
- ``early``: halting on (the tuned 'confident' rule and slope rule, cap ``steps_max``).

The halting-on and halting-off runs of an image are timed back to back (alternating which goes
first), after a warm-up, so both see the same machine state; ``speedup_wall`` is the ratio of
their summed wall times (init, steps, halting checks and result included). ``speedup_steps`` is
``steps_max / steps_mean_early``. mIoU is accumulated over the split (``evaluate.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sage_irp_ros.core.loop import HaltConfig, refine  # noqa: E402
from sage_irp_ros.plugins.vision import scenes  # noqa: E402
from sage_irp_ros.plugins.vision.evaluate import IoUAccumulator, summarize_steps  # noqa: E402
from sage_irp_ros.plugins.vision.plugin import DEFAULT_WEIGHTS, VisionIRP  # noqa: E402


def _row(acc, steps, t, sm):
    """Figures of one split (or all): mIoU at step 0 / full / early, steps, speed-ups."""
    st = summarize_steps(steps)
    n = len(steps)
    return {
        'n': n,
        'miou_step0': acc['step0'].miou(), 'miou_full': acc['full'].miou(),
        'miou_early': acc['early'].miou(),
        'steps_max': sm, 'steps_mean_early': st['mean'], 'steps_p95_early': st['p95'],
        'speedup_steps': sm / max(st['mean'], 1e-9),
        'speedup_wall': t['off'] / max(t['on'], 1e-12),
        'ms_per_frame_full': 1e3 * t['off'] / n,
        'ms_per_frame_early': 1e3 * t['on'] / n,
    }


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def bench(plugin: VisionIRP, n: int, warmup: int = 10):
    """Run the three modes over both held-out splits; return the JSON-ready report."""
    C, sm = len(plugin.classes), plugin.cfg.steps_max
    on_cfg, off_cfg = plugin.halt_config(), plugin.no_halt_config()
    zero_cfg = HaltConfig(eps=0.0, K=1, max_steps=0)
    off_ctx = {'confident': False}
    data = {s: scenes.held_out(s, n) for s in ('easy', 'hard')}
    wimgs, _ = scenes.make_batch(range(scenes.VAL_SEED0, scenes.VAL_SEED0 + warmup))
    for img in wimgs:  # warm-up: allocator, kernels, caches
        refine(plugin, img, None, config=on_cfg)
        refine(plugin, img, off_ctx, config=off_cfg)
    acc_all = {k: IoUAccumulator(C) for k in ('step0', 'full', 'early')}
    rep, all_steps, all_t = {}, [], {'on': 0.0, 'off': 0.0}
    for split, (imgs, gts) in data.items():
        acc = {k: IoUAccumulator(C) for k in ('step0', 'full', 'early')}
        steps, reasons, t = [], {}, {'on': 0.0, 'off': 0.0}
        for i, (img, gt) in enumerate(zip(imgs, gts, strict=True)):
            r0 = refine(plugin, img, None, config=zero_cfg)
            order = ('on', 'off') if i % 2 == 0 else ('off', 'on')
            res = {}
            for mode in order:
                _sync(plugin.device)
                t0 = time.perf_counter()
                if mode == 'on':
                    res[mode] = refine(plugin, img, None, config=on_cfg)
                else:
                    res[mode] = refine(plugin, img, off_ctx, config=off_cfg)
                _sync(plugin.device)
                t[mode] += time.perf_counter() - t0
            assert res['off'].trace.steps == sm, res['off'].trace.halt_reason
            for k, r in (('step0', r0), ('full', res['off']), ('early', res['on'])):
                acc[k].add(r.output, gt)
                acc_all[k].add(r.output, gt)
            steps.append(res['on'].trace.steps)
            hr = res['on'].trace.halt_reason
            reasons[hr] = reasons.get(hr, 0) + 1
        rep[split] = dict(_row(acc, steps, t, sm), **{
            'iou_per_class_full': acc['full'].per_class(),
            'iou_per_class_early': acc['early'].per_class(),
            'halt_reasons_early': reasons,
        })
        all_steps += steps
        all_t['on'] += t['on']
        all_t['off'] += t['off']
    rep['overall'] = _row(acc_all, all_steps, all_t, sm)
    o = rep['overall']
    o['miou_loss_rel_early'] = (o['miou_full'] - o['miou_early']) / max(o['miou_full'], 1e-12)
    return rep


def main(argv=None) -> int:
    """Command-line entry point: write the JSON report and print a summary."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=200, help='held-out scenes per split')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--precision', default='fp32', choices=('fp32', 'fp16'))
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads (fixed, recorded)')
    ap.add_argument('--weights', default=DEFAULT_WEIGHTS)
    ap.add_argument('--out', default=os.path.join('out', 'bench', 'vision.json'))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    plugin = VisionIRP.from_checkpoint(args.weights, device=args.device,
                                       precision=args.precision)
    t0 = time.perf_counter()
    rep = bench(plugin, args.n)
    rep.update({
        'device': str(plugin.device), 'precision': plugin.precision,
        'device_name': (torch.cuda.get_device_name(plugin.device)
                        if plugin.device.type == 'cuda' else platform.processor() or
                        platform.machine()),
        'torch_threads': torch.get_num_threads(), 'torch': torch.__version__,
        'batch_size': 1, 'classes': list(plugin.classes),
        'halting': {'eps': plugin.cfg.eps, 'K': plugin.cfg.K, 'energy_scale': 'ln C',
                    'confident_frac': plugin.cfg.confident_frac,
                    'uncertain_p': plugin.cfg.uncertain_p, 'steps_max': plugin.cfg.steps_max},
        'energy': 'mean per-pixel entropy of the decoded class distribution (nats)',
        'miou_definition': 'mean over classes (background included) of sum(I)/sum(U) '
                           'accumulated over the split',
        'weights': os.path.relpath(args.weights, ROOT) if args.weights.startswith(ROOT)
        else args.weights,
        'command': 'python bench/vision_bench.py ' + ' '.join(sys.argv[1:] if argv is None
                                                              else argv),
        'bench_seconds': round(time.perf_counter() - t0, 1),
    })
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(rep, f, indent=2)
        f.write('\n')
    for k in ('easy', 'hard', 'overall'):
        r = rep[k]
        print(f"{k:8s} step0 {r['miou_step0']:.4f} full {r['miou_full']:.4f} "
              f"early {r['miou_early']:.4f} steps {r['steps_mean_early']:.2f} "
              f"(p95 {r['steps_p95_early']:.0f}) speedup steps {r['speedup_steps']:.2f} "
              f"wall {r['speedup_wall']:.2f}")
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
