"""Train the vision refiner on procedural scenes (CPU, deterministic given the seed).

    python -m sage_irp_ros.plugins.vision.train [--quick] [--out PATH] [--seed N] [--threads T]

Recipe: ``--n-train`` scenes from the training seed range (difficulty drawn per seed), random
flips / 90-degree rotations, Adam with warm-up and cosine decay, a class-weighted cross-entropy
on the decoding of **every** step ``t = 0..T`` with weight proportional to ``1 + t / T``, where the
number of unrolled steps ``T`` is drawn uniformly from ``1..steps_max`` per batch (deep
supervision over steps: each step must improve on the last, so halting early is safe).

``--max-minutes`` caps the wall time on a busy machine: the cosine schedule then runs on
``max(iteration / iters, elapsed / cap)``, so it still anneals to zero, and training stops when
the cap is reached; the record says so (``wall_capped``, ``iters_done``). Runs that finish their
``--iters`` before the cap are deterministic given the seed; capped runs depend on the timing.

Afterwards the halting thresholds (``confident_frac``, ``eps``, ``K``) are chosen on the
*validation* seeds (never the held-out ones): the setting with the fewest mean steps whose
validation mIoU stays within ``--tol`` (relative) of running every step. The held-out splits are
then evaluated once for the record written next to the weights (``<out>.json``).

Then the unknown detector (``unknown.py``) is fitted on ``--n-fit`` in-distribution frames of the
training seed range (``FIT_SEED0``) and its threshold set to the ``--unknown-quantile`` of the
validation frames' scores; ``--refit-unknown CKPT`` does only this for an existing checkpoint.
``--task`` picks the scene generator (``scenes.TASKS``) and ``--refiner`` the step's reach;
``--n-heldout 0`` skips the held-out report (pilot runs choose on validation only).

``--quick`` trains a few iterations on a few scenes (seconds): for tests, not for use.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from sage_irp_ros.plugins.vision import scenes
from sage_irp_ros.plugins.vision import unknown as unk
from sage_irp_ros.plugins.vision.evaluate import (
    halting_features,
    miou,
    per_step_outputs,
    simulate_halting,
)
from sage_irp_ros.plugins.vision.model import (
    VisionConfig,
    VisionIRPNet,
    build_net,
    save_checkpoint,
    write_json,
)

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights', 'vision_irp.pt')
CLASS_WEIGHTS = (1.0, 2.0, 2.0, 2.0)


def _augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
    """Apply the same random flip / 90-degree rotation for a whole batch (images and labels)."""
    k = int(rng.integers(0, 4))
    if k:
        x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (1, 2))
    if rng.random() < 0.5:
        x, y = torch.flip(x, (3,)), torch.flip(y, (2,))
    return x.contiguous(), y.contiguous()


def deep_supervision_loss(outs: List[torch.Tensor], y: torch.Tensor,
                          class_weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over steps of the class-weighted cross-entropy; step t weighs 1 + t/T."""
    T = max(len(outs) - 1, 1)
    w = 1.0 + torch.arange(len(outs), dtype=torch.float32) / T
    w = w / w.sum()
    return sum(wt * F.cross_entropy(o, y, weight=class_weights)
               for wt, o in zip(w, outs, strict=True))


def tune_halting(stats, gts: np.ndarray, cfg: VisionConfig, tol: float):
    """Pick (confident_frac, eps, K) with the fewest mean steps on validation within ``tol``."""
    C, n = cfg.num_classes, cfg.steps_max
    full = miou(stats['pred'][n], gts, C)
    idx = np.arange(gts.shape[0])
    best = (float(n), None, 0.0, 1, full)
    for frac in (None, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08):
        for eps in (0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05):
            for K in (1, 2):
                steps = simulate_halting(stats['energy'], stats['uncertain'], n, frac,
                                         eps * math.log(C), K)
                m = miou(stats['pred'][steps, idx], gts, C)
                if m >= (1 - tol) * full and steps.mean() < best[0] - 1e-9:
                    best = (float(steps.mean()), frac, eps, K, m)
    return {'steps_mean': best[0], 'confident_frac': best[1], 'eps': best[2], 'K': best[3],
            'miou_early': best[4], 'miou_full': full}


FIT_SEED0 = 900_000  # in-distribution frames of the training range for the unknown detector


def _halting_args(cfg: VisionConfig):
    return (cfg.confident_frac if cfg.confident_frac > 0 else None,
            cfg.eps * math.log(cfg.num_classes), cfg.K, cfg.uncertain_p)


def fit_unknown(net: VisionIRPNet, n_fit: int, n_val: int, quantile: float,
                components=unk.DEFAULT_COMPONENTS):
    """Fit the unknown detector on training-range frames, threshold on validation frames.

    Both sets are in-distribution (``scenes.make_scene``), each frame taken at the step where
    the tuned halting stops it. Returns the detector and the validation scores.
    """
    cfg = net.cfg
    imgs, gts = scenes.make_batch(range(FIT_SEED0, FIT_SEED0 + n_fit), task=cfg.task)
    hf = halting_features(net, imgs, *_halting_args(cfg))
    det = unk.fit(torch.from_numpy(hf['feats']), unk.cell_labels(gts, cfg.latent_stride),
                  cfg.num_classes, components, energy=torch.from_numpy(hf['energy']),
                  class_conf=torch.from_numpy(hf['class_conf']))
    vimgs, _ = scenes.make_batch(range(scenes.VAL_SEED0, scenes.VAL_SEED0 + n_val),
                                 task=cfg.task)
    vf = halting_features(net, vimgs, *_halting_args(cfg))
    vs = det.score_parts(det.frame_parts(torch.from_numpy(vf['feats']),
                                         energy=torch.from_numpy(vf['energy']),
                                         class_conf=torch.from_numpy(vf['class_conf']))).numpy()
    unk.calibrate(det, vs, quantile)
    return det, vs


def _unknown_record(det, val_scores, args) -> dict:
    return {'threshold': det.threshold, 'quantile': det.quantile,
            'components': list(det.components), 'norm': {k: list(v) for k, v in det.norm.items()},
            'fit': f'training-range seeds {FIT_SEED0}..{FIT_SEED0 + args.n_fit - 1} at their '
                   'halting step',
            'calibration': f'validation seeds {scenes.VAL_SEED0}..'
                           f'{scenes.VAL_SEED0 + args.n_val - 1}',
            'val_flag_rate': float(np.mean(np.asarray(val_scores) > det.threshold))}


def _components(args):
    parts = tuple(p.strip() for p in args.unknown_components.split(',') if p.strip())
    bad = set(parts) - set(unk.ALL_PARTS)
    if bad or not parts:
        raise SystemExit(f'--unknown-components: unknown parts {sorted(bad)}')
    return parts


def refit_unknown(args, argv) -> int:
    """``--refit-unknown CKPT``: fit the detector again and rewrite the checkpoint in place."""
    import json

    from sage_irp_ros.plugins.vision.model import load_checkpoint
    torch.set_num_threads(args.threads)
    net, extra = load_checkpoint(args.refit_unknown)
    det, vs = fit_unknown(net, args.n_fit, args.n_val, args.unknown_quantile,
                          _components(args))
    rec = _unknown_record(det, vs, args)
    rec['command'] = 'python -m sage_irp_ros.plugins.vision.train ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    extra = dict(extra, unknown=det.to_dict())
    save_checkpoint(args.refit_unknown, net, extra=extra)
    jpath = os.path.splitext(args.refit_unknown)[0] + '.json'
    record = json.load(open(jpath)) if os.path.exists(jpath) else {}
    record['unknown'] = rec
    write_json(jpath, record)
    print(f'[train] unknown detector refitted: {rec}', flush=True)
    return 0


def held_out_report(net: VisionIRPNet, n: int):
    """Batched held-out figures (step 0, all steps, halting as configured) per split."""
    cfg = net.cfg
    C, sm = cfg.num_classes, cfg.steps_max
    rep = {}
    allp = {'step0': [], 'full': [], 'early': []}
    allg, alls = [], []
    for split in ('easy', 'hard'):
        imgs, gts = scenes.held_out(split, n, cfg.task)
        st = per_step_outputs(net, imgs, sm, cfg.uncertain_p)
        steps = simulate_halting(st['energy'], st['uncertain'], sm, cfg.confident_frac,
                                 cfg.eps * math.log(C), cfg.K)
        early = st['pred'][steps, np.arange(len(gts))]
        rep[split] = {'miou_step0': miou(st['pred'][0], gts, C),
                      'miou_full': miou(st['pred'][sm], gts, C),
                      'miou_early': miou(early, gts, C),
                      'miou_per_step': [round(miou(p, gts, C), 4) for p in st['pred']],
                      'steps_mean_early': float(steps.mean())}
        allp['step0'].append(st['pred'][0])
        allp['full'].append(st['pred'][sm])
        allp['early'].append(early)
        allg.append(gts)
        alls.append(steps)
    g = np.concatenate(allg)
    rep['overall'] = {f'miou_{k}': miou(np.concatenate(v), g, C) for k, v in allp.items()}
    rep['overall']['steps_mean_early'] = float(np.concatenate(alls).mean())
    rep['n_per_split'] = n
    return rep


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='a few iterations (seconds), for tests')
    ap.add_argument('--out', default=DEFAULT_OUT, help='checkpoint path (a .json goes alongside)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    ap.add_argument('--iters', type=int, default=2600)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--n-train', type=int, default=8000)
    ap.add_argument('--n-val', type=int, default=300)
    ap.add_argument('--n-heldout', type=int, default=200,
                    help='held-out scenes per split for the record (0: none, for pilots)')
    ap.add_argument('--lr', type=float, default=4e-3)
    ap.add_argument('--difficulty-power', type=float, default=1.0,
                    help='training difficulty d = u ** p with u ~ U(0, 1) (p < 1 draws more hard '
                         'scenes); 1 keeps the generator default (d drawn from the seed)')
    ap.add_argument('--steps-max', type=int, default=16)
    ap.add_argument('--channels', type=int, default=16, help='latent channels')
    ap.add_argument('--skip-channels', type=int, default=16)
    ap.add_argument('--enc-dilated', action='store_true', help='extra dilated encoder conv')
    ap.add_argument('--norm-all', action='store_true', help='GroupNorm after every encoder stage')
    ap.add_argument('--latent-stride', type=int, default=2, choices=(2, 4),
                    help='4: 16x16 latent, 2: 32x32 latent')
    ap.add_argument('--task', default='tags', choices=scenes.TASKS,
                    help="scene generator: 'tags' (committed model: an object's class is on a "
                         "tag somewhere on it), 'shapes' or 'sizes' (earlier tries)")
    ap.add_argument('--refiner', default='propagate',
                    choices=('dilated', 'conv2', 'local', 'propagate'),
                    help="the step's second conv: 'local' 1x1 (reach +4 px a step), "
                         "'conv2' 3x3 (+8 px), 'dilated' 3x3 dilation 2 (+12 px)")
    ap.add_argument('--ref-hidden', type=int, default=32, help='hidden channels of the step')
    ap.add_argument('--reach', type=int, default=2, choices=(1, 2),
                    help="'propagate': cells evidence may move per step")
    ap.add_argument('--t-min', type=int, default=2,
                    help='unrolled steps per batch T ~ U{t_min..t_max}')
    ap.add_argument('--t-max', type=int, default=20,
                    help='most unrolled steps per batch (0: steps_max; more than steps_max '
                         'trains the steps after the cap not to drift)')
    ap.add_argument('--max-minutes', type=float, default=24.0,
                    help='wall-clock cap: training stops early (recorded) so that the whole '
                         'run, evaluation included, ends within about this time')
    ap.add_argument('--tol', type=float, default=0.004,
                    help='relative validation mIoU loss allowed when tuning halting')
    ap.add_argument('--n-fit', type=int, default=800,
                    help='training-range frames the unknown detector is fitted on')
    ap.add_argument('--unknown-quantile', type=float, default=0.98,
                    help='unknown threshold: this quantile of validation (in-distribution) '
                         'scores')
    ap.add_argument('--unknown-components', default=','.join(unk.DEFAULT_COMPONENTS),
                    help=f'parts of the unknown score, comma-separated, of {unk.ALL_PARTS}')
    ap.add_argument('--refit-unknown', metavar='CKPT', default=None,
                    help='only (re)fit the unknown detector of an existing checkpoint and '
                         'rewrite it and its JSON record in place (no training)')
    args = ap.parse_args(argv)
    if args.refit_unknown:
        return refit_unknown(args, argv)
    if args.quick:
        args.iters, args.batch, args.n_train, args.n_val, args.n_heldout = 6, 8, 64, 16, 8
        args.n_fit = 32
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    cfg = VisionConfig(steps_max=args.steps_max, latent_channels=args.channels,
                       skip_channels=args.skip_channels, latent_stride=args.latent_stride,
                       enc_dilated=args.enc_dilated, norm_all=args.norm_all,
                       refiner=args.refiner, ref_hidden=args.ref_hidden, task=args.task,
                       reach=args.reach)
    cfg.classes = scenes.classes_for(args.task)
    net = build_net(cfg)
    print(f'[train] {sum(p.numel() for p in net.parameters())} parameters, '
          f'{args.threads} threads, seed {args.seed}', flush=True)
    tseeds = scenes.train_seeds(0, args.n_train)
    if args.difficulty_power == 1.0:
        diffs = None
        data_desc = 'scenes.make_scene(seed) for seeds 0..{} (difficulty ~ U(0,1) per seed)'
    else:
        u = np.random.default_rng([args.seed, 1]).uniform(0.0, 1.0, args.n_train)
        diffs = list(u ** args.difficulty_power)
        data_desc = ('scenes.make_scene(seed, d) for seeds 0..{} '
                     f'(difficulty d = u ** {args.difficulty_power}, u ~ U(0,1))')
    imgs, gts = scenes.make_batch(tseeds, diffs, task=cfg.task)
    X = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    Y = torch.from_numpy(gts.astype(np.int64))
    print(f'[train] {args.n_train} training scenes in {time.perf_counter() - t0:.1f} s',
          flush=True)

    cw = torch.tensor(CLASS_WEIGHTS)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    warm = max(args.iters // 20, 1)
    cap_s = args.max_minutes * 60.0 - 75.0  # leave time for validation, held-out, saving
    t_loop = time.perf_counter()

    def progress(i: int) -> float:
        # Fraction of training done: by iterations, or by wall time when the cap binds first.
        by_time = (time.perf_counter() - t_loop) / max(cap_s - (t_loop - t0), 1.0)
        return min(max(i / args.iters, by_time), 1.0)

    net.train()
    run = 0.0
    iters_done = 0
    capped = False
    for it in range(args.iters):
        frac = progress(it)
        if frac >= 1.0:
            capped = True
            print(f'[train] wall-clock cap reached: stopping after {it} iterations', flush=True)
            break
        for g in opt.param_groups:
            g['lr'] = args.lr * min((it + 1) / warm, 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.from_numpy(rng.integers(0, args.n_train, args.batch))
        x, y = _augment(X[idx].float() / 255.0, Y[idx], rng)
        t_max = args.t_max or cfg.steps_max
        T = int(rng.integers(min(args.t_min, t_max), t_max + 1))
        loss = deep_supervision_loss(net(x, T), y, cw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        iters_done = it + 1
        run = loss.item() if it == 0 else 0.95 * run + 0.05 * loss.item()
        if (it + 1) % 50 == 0 or it + 1 == args.iters:
            print(f'[train] iter {it + 1}/{args.iters} loss {run:.4f} '
                  f'lr {opt.param_groups[0]["lr"]:.2e} {time.perf_counter() - t0:.0f} s',
                  flush=True)
    net.eval()
    t_train = time.perf_counter() - t0

    vpairs = [(scenes.VAL_SEED0 + i, None) for i in range(args.n_val)]
    vimgs, vgts = scenes.make_batch([p[0] for p in vpairs], task=cfg.task)
    vst = per_step_outputs(net, vimgs, cfg.steps_max, cfg.uncertain_p)
    tuned = tune_halting(vst, vgts, cfg, args.tol)
    cfg.confident_frac = tuned['confident_frac'] if tuned['confident_frac'] is not None else 0.0
    cfg.eps, cfg.K = tuned['eps'], tuned['K']
    print(f'[train] halting tuned on validation: {tuned}', flush=True)
    val_per_step = [round(miou(p, vgts, cfg.num_classes), 4) for p in vst['pred']]
    print(f'[train] validation mIoU per step: {val_per_step}', flush=True)

    det, vs = fit_unknown(net, args.n_fit, args.n_val, args.unknown_quantile,
                          _components(args))
    unknown_rec = _unknown_record(det, vs, args)
    print(f'[train] unknown detector: {unknown_rec}', flush=True)

    # --n-heldout 0: pilot runs that must not see held-out data (selection is on validation)
    rep = held_out_report(net, args.n_heldout) if args.n_heldout > 0 else {}
    print(f'[train] held-out (batched, n={args.n_heldout}/split): '
          f'{ {k: v for k, v in rep.items() if k != "n_per_split"} }', flush=True)
    cmd = 'python -m sage_irp_ros.plugins.vision.train ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    record = {
        'config': cfg.to_dict(), 'seed': args.seed, 'command': cmd.strip(),
        'torch': torch.__version__, 'threads': args.threads,
        'train_seconds': round(t_train, 1), 'total_seconds': round(time.perf_counter() - t0, 1),
        'recipe': {
            'data': data_desc.format(args.n_train - 1) + f', task {cfg.task!r}, 64x64, random '
                                                          'flips/rot90 per batch',
            'iters': args.iters, 'iters_done': iters_done, 'wall_capped': capped,
            'batch': args.batch, 'lr': args.lr,
            'optimizer': 'Adam, linear warm-up 5 %, cosine decay, grad-norm clip 1.0',
            'loss': 'sum_t w_t * CE(decode(z_t), y; class weights '
                    f'{list(CLASS_WEIGHTS)}), w_t ~ 1 + t/T normalised, '
                    f'T ~ U{{{args.t_min}..{args.t_max or "steps_max"}}} per batch',
            'halting_tuning': f'validation seeds {scenes.VAL_SEED0}..'
                              f'{scenes.VAL_SEED0 + args.n_val - 1}, tol {args.tol}',
        },
        'validation': {'tuned': tuned, 'miou_per_step': val_per_step},
        'held_out_batched': rep,
        'quick': bool(args.quick),
        'unknown': unknown_rec,
    }
    save_checkpoint(args.out, net, extra={'seed': args.seed, 'quick': bool(args.quick),
                                          'unknown': det.to_dict()})
    write_json(os.path.splitext(args.out)[0] + '.json', record)
    print(f'[train] wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) in '
          f'{time.perf_counter() - t0:.0f} s', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
