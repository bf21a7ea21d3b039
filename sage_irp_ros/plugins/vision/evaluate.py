"""Evaluation of the vision refiner: mIoU, per-step statistics, halting simulation, core-loop runs.

mIoU definition
---------------
For each class ``c`` (background included) the intersections ``|pred == c and gt == c|`` and
unions ``|pred == c or gt == c|`` are **summed over every pixel of every image of a split**, and
``IoU_c = sum_I / sum_U``; mIoU is the mean of ``IoU_c`` over the classes whose union is
non-empty. (Accumulating over the split, not averaging per-image IoUs, keeps tiny objects from
dominating and never divides by zero on an image without a class.)
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from sage_irp_ros.core.loop import HaltConfig, refine


class IoUAccumulator:
    """Sums per-class intersections and unions over many masks."""

    def __init__(self, num_classes: int):
        """Start empty for ``num_classes`` classes."""
        self.num_classes = int(num_classes)
        self.inter = np.zeros(self.num_classes, np.int64)
        self.union = np.zeros(self.num_classes, np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one mask (or a stack of masks) of class ids, same shape as ``gt``."""
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        gt = np.asarray(gt).reshape(-1).astype(np.int64)
        if pred.shape != gt.shape:
            raise ValueError(f'prediction and ground truth differ: {pred.shape} {gt.shape}')
        n = self.num_classes
        cm = np.bincount(gt * n + pred, minlength=n * n).reshape(n, n)
        tp = np.diag(cm)
        self.inter += tp
        self.union += cm.sum(0) + cm.sum(1) - tp

    def merge(self, other: 'IoUAccumulator') -> 'IoUAccumulator':
        """Add another accumulator's sums to this one (returns self)."""
        self.inter += other.inter
        self.union += other.union
        return self

    def per_class(self) -> List[Optional[float]]:
        """IoU of each class (None for a class absent from both prediction and truth)."""
        return [float(i / u) if u > 0 else None
                for i, u in zip(self.inter, self.union, strict=True)]

    def miou(self) -> float:
        """Mean IoU over the classes present (0.0 when nothing was added)."""
        vals = [v for v in self.per_class() if v is not None]
        return float(np.mean(vals)) if vals else 0.0


def miou(preds: np.ndarray, gts: np.ndarray, num_classes: int) -> float:
    """MIoU of a stack of predicted masks against ground truth (definition above)."""
    acc = IoUAccumulator(num_classes)
    acc.add(preds, gts)
    return acc.miou()


@torch.inference_mode()
def per_step_outputs(net, images: np.ndarray, steps: int, uncertain_p: float,
                     batch: int = 64) -> Dict[str, np.ndarray]:
    """Batched forward of ``net`` for steps 0..``steps`` (no halting), on the CPU in fp32.

    Returns ``pred`` (steps+1, N, S, S) uint8 class ids, ``energy`` (steps+1, N) mean entropy
    in nats and ``uncertain`` (steps+1, N) fraction of pixels with max probability below
    ``uncertain_p``: the same statistics the plugin computes (from the coarse decoding for a
    net that has one), for halting simulation.
    """
    preds, ents, uncs = [], [], []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255.0
        size = net.cfg.input_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode='bilinear',
                                                align_corners=False, antialias=True)
        z, inject, skip = net.encode(x)
        coarse = hasattr(net, 'decode_coarse')  # the plugin's energy reads the coarse decoding
        p, e, u = [], [], []
        for t in range(steps + 1):
            if t:
                z = net.step(z, inject)
            full = net.decode(z, skip)
            logits = net.decode_coarse(z, skip) if coarse else full
            logp = torch.log_softmax(logits.float(), 1)
            prob = logp.exp()
            e.append((-(prob * logp).sum(1)).mean((1, 2)))
            maxp = prob.max(1).values
            u.append((maxp < uncertain_p).float().mean((1, 2)))
            p.append(full.argmax(1).to(torch.uint8))
        preds.append(torch.stack(p).numpy())
        ents.append(torch.stack(e).numpy())
        uncs.append(torch.stack(u).numpy())
    return {'pred': np.concatenate(preds, 1), 'energy': np.concatenate(ents, 1),
            'uncertain': np.concatenate(uncs, 1)}


def simulate_halting(energy: np.ndarray, uncertain: np.ndarray, steps_max: int,
                     confident_frac: Optional[float], eps_abs: float, K: int) -> np.ndarray:
    """Return the steps each run would take under the core loop's rules (checked before each step).

    Order as in ``sage_irp_ros.core.loop``: the plugin's 'confident' rule, then the slope rule
    ``(E[t-K] - E[t]) / K < eps_abs``, then ``max_steps``. ``energy`` and ``uncertain`` are
    (steps+1, N) arrays from :func:`per_step_outputs`.
    """
    n = energy.shape[1]
    out = np.full(n, steps_max, np.int64)
    for j in range(n):
        for t in range(steps_max + 1):
            if confident_frac is not None and uncertain[t, j] < confident_frac:
                out[j] = t
                break
            if t >= K and (energy[t - K, j] - energy[t, j]) / K < eps_abs:
                out[j] = t
                break
    return out


def run_split(plugin, images: np.ndarray, gts: np.ndarray, config: HaltConfig,
              ctx: Optional[dict] = None, timed: bool = False) -> Dict[str, object]:
    """Refine every image through the core loop, one at a time; mIoU, steps and wall times."""
    acc = IoUAccumulator(len(plugin.classes))
    steps, times, reasons = [], [], {}
    for img, gt in zip(images, gts, strict=True):
        t = time.perf_counter()
        res = refine(plugin, img, ctx, config=config)
        times.append(time.perf_counter() - t)
        acc.add(res.output, gt)
        steps.append(res.trace.steps)
        reasons[res.trace.halt_reason] = reasons.get(res.trace.halt_reason, 0) + 1
    return {'miou': acc.miou(), 'acc': acc, 'per_class_iou': acc.per_class(),
            'steps': np.array(steps),
            'times': np.array(times), 'halt_reasons': reasons}


def summarize_steps(steps: Sequence[int]) -> Dict[str, float]:
    """Mean and 95th percentile (nearest rank) of step counts."""
    s = np.sort(np.asarray(steps))
    if s.size == 0:
        return {'mean': 0.0, 'p95': 0.0}
    rank = max(int(math.ceil(0.95 * s.size)) - 1, 0)
    return {'mean': float(s.mean()), 'p95': float(s[rank])}


def auroc(in_dist: Sequence[float], out_dist: Sequence[float]) -> float:
    """Return the area under the ROC curve of telling ``out_dist`` from ``in_dist``.

    ``out_dist`` are the positives (higher scores): the probability that a random OOD frame
    scores above a random in-distribution one (ties count half).
    """
    a = np.asarray(in_dist, np.float64)
    b = np.asarray(out_dist, np.float64)
    if a.size == 0 or b.size == 0:
        return float('nan')
    allv = np.concatenate([a, b])
    order = allv.argsort(kind='mergesort')
    ranks = np.empty(allv.size, np.float64)
    sv = allv[order]
    i = 0
    while i < sv.size:  # average ranks over ties
        j = i
        while j + 1 < sv.size and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    rb = ranks[a.size:].sum()
    return float((rb - b.size * (b.size + 1) / 2) / (a.size * b.size))


@torch.inference_mode()
def halting_features(net, images: np.ndarray, confident_frac: Optional[float], eps_abs: float,
                     K: int, uncertain_p: float, steps_max: Optional[int] = None,
                     batch: int = 64) -> Dict[str, np.ndarray]:
    """Batched runs halted as the core loop would; the state at each frame's halting step.

    ``images`` are square frames of the model's input size. Returns ``steps`` (N,), ``pred``
    (N, S, S) uint8, ``energy`` (N,), ``feats`` (N, 2c, h, w) float32 cell features
    (``unknown.frame_features``) and ``confidence`` (N,) mean max class probability.
    """
    from sage_irp_ros.plugins.vision.unknown import class_doubt, frame_features
    sm = net.cfg.steps_max if steps_max is None else steps_max
    out = {k: [] for k in ('steps', 'pred', 'energy', 'feats', 'confidence', 'class_conf')}
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255.0
        z, inject, skip = net.encode(x)
        zs, ents, uncs, preds, confs, doubts = [], [], [], [], [], []
        for t in range(sm + 1):
            if t:
                z = net.step(z, inject)
            logits = net.decode(z, skip)
            prob = torch.softmax(logits.float(), 1)
            zs.append(z)
            # halting statistics as the plugin computes them (coarse decoding when there)
            coarse = net.decode_coarse(z, skip) if hasattr(net, 'decode_coarse') else logits
            doubts.append(class_doubt(coarse))
            logp = torch.log_softmax(coarse.float(), 1)
            p = logp.exp()
            ents.append((-(p * logp).sum(1)).mean((1, 2)))
            uncs.append((p.max(1).values < uncertain_p).float().mean((1, 2)))
            confs.append(prob.max(1).values.mean((1, 2)))
            preds.append(logits.argmax(1).to(torch.uint8))
        E, U = torch.stack(ents).numpy(), torch.stack(uncs).numpy()
        steps = simulate_halting(E, U, sm, confident_frac, eps_abs, K)
        idx = torch.from_numpy(steps)
        ar = torch.arange(len(steps))
        out['steps'].append(steps)
        out['energy'].append(E[steps, np.arange(len(steps))])
        out['pred'].append(torch.stack(preds)[idx, ar].numpy())
        out['confidence'].append(torch.stack(confs)[idx, ar].numpy())
        out['class_conf'].append(torch.stack(doubts)[idx, ar].numpy())
        out['feats'].append(frame_features(torch.stack(zs)[idx, ar], inject).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}
