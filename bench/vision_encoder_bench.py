"""The vision plugin's compiled encoder against the eager one, in one run (CPU, batch 1).

    python bench/vision_encoder_bench.py [--frames 40] [--rounds 5] [--threads 1]
                                         [--out out/bench/vision_encoder.json]

Two plugin instances on the same weights, ``VisionIRP(compile_encoder=True)`` (the default on
a CPU: the encoder as a frozen TorchScript graph optimised for inference) and
``compile_encoder=False``, refine the same validation frames (``scenes.revisit``, seeds from
``scenes.MEMORY_VAL_SEED0``, difficulty spread over [0, 1]), alternating frame by frame and
swapping which goes first each round, so the machine's drift falls on both alike. Reported:
the median wall ms of the encoder alone and of the whole run (``refine``, tuned halting) of
each, their ratios, and whether the two gave the same masks and steps on every frame.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sage_irp_ros.core.loop import refine  # noqa: E402
from sage_irp_ros.plugins.vision import scenes  # noqa: E402
from sage_irp_ros.plugins.vision.model import write_json  # noqa: E402
from sage_irp_ros.plugins.vision.plugin import DEFAULT_WEIGHTS, VisionIRP  # noqa: E402


def main(argv=None) -> int:
    """Command-line entry point: write the JSON report and print a summary."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--frames', type=int, default=40)
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--weights', default=DEFAULT_WEIGHTS)
    ap.add_argument('--out', default=os.path.join('out', 'bench', 'vision_encoder.json'))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    compiled = VisionIRP.from_checkpoint(args.weights, compile_encoder=True)
    load_s = time.perf_counter() - t0
    eager = VisionIRP.from_checkpoint(args.weights, compile_encoder=False)
    if not compiled.encoder_compiled:
        raise SystemExit('the encoder could not be compiled on this machine (eager fallback)')
    frames = [scenes.revisit(scenes.MEMORY_VAL_SEED0 + 20_000 + i, (i * 0.618034) % 1.0, 0)[0]
              for i in range(args.frames)]
    plugins = {'compiled': compiled, 'eager': eager}
    enc = {k: [] for k in plugins}
    run = {k: [] for k in plugins}
    same = True
    for p in plugins.values():  # warm-up (allocator, the graph's first calls)
        for img in frames[:10]:
            refine(p, img, None, config=p.halt_config())
    for r in range(args.rounds):
        order = list(plugins) if r % 2 == 0 else list(plugins)[::-1]
        for img in frames:
            outs = {}
            for name in order:
                p = plugins[name]
                x, _, _ = p._to_input(img)
                with torch.inference_mode():
                    t = time.perf_counter()
                    p._encode(x)
                    enc[name].append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                res = refine(p, img, None, config=p.halt_config())
                run[name].append((time.perf_counter() - t) * 1e3)
                outs[name] = res
            a, b = outs['compiled'], outs['eager']
            same = same and bool(np.array_equal(a.output, b.output)
                                 and a.trace.steps == b.trace.steps)
    med = {k: {'encoder_ms': round(float(np.median(enc[k])), 4),
               'run_ms': round(float(np.median(run[k])), 4)} for k in plugins}
    out = {
        'encoder_ratio': round(med['compiled']['encoder_ms'] / med['eager']['encoder_ms'], 4),
        'run_ratio': round(med['compiled']['run_ms'] / med['eager']['run_ms'], 4),
        'median': med,
        'same_masks_and_steps': same,
        'compile_seconds_first_in_process': round(load_s, 3),
        'frames': args.frames, 'rounds': args.rounds,
        'device': 'cpu', 'device_name': platform.processor() or platform.machine(),
        'torch_threads': torch.get_num_threads(), 'torch': torch.__version__,
        'command': 'python bench/vision_encoder_bench.py ' + ' '.join(
            sys.argv[1:] if argv is None else argv),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, out)
    print(f"encoder: {med['eager']['encoder_ms']:.3f} -> {med['compiled']['encoder_ms']:.3f} ms "
          f"(ratio {out['encoder_ratio']}); whole run: {med['eager']['run_ms']:.3f} -> "
          f"{med['compiled']['run_ms']:.3f} ms (ratio {out['run_ratio']}); same masks and "
          f'steps: {same}')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
