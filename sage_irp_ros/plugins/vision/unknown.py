"""The vision plugin's "I don't know": a per-frame unknown score from the refined latent.

Entropy alone does not flag frames unlike the training data: a blurred, low-contrast or
unseen shape gets a confident wrong answer. The score here asks instead how typical the
refined latent is of the training data, using only in-distribution data:

- **cells**: each latent cell (16x16 at the 64x64 input) has a feature ``f = [z, e]`` (the
  refined latent and the encoder's injected features, 2 x latent_channels). On in-distribution
  frames (training seed range, at the step where halting stops each frame) a Gaussian per
  class with a shared covariance is fitted to the cells whose 4x4 patch is one class; a cell's
  score is its smallest squared Mahalanobis distance to a class mean (Lee et al. 2018).
- **frame**: the mean of the frame's cell scores and the mean of its top 10 % (a few odd cells:
  an unseen shape) over the content of the frame (letterbox padding excluded), and the
  Mahalanobis distance of the frame's per-channel mean and standard deviation of ``f`` to their
  in-distribution Gaussian (a global change: blur, contrast, a photo).
- **score**: each part standardised by its mean and standard deviation on the fitting frames;
  the unknown score is the largest of the parts that ``components`` names (the committed
  detector: ``global`` and ``class_conf``, :data:`DEFAULT_COMPONENTS`; the final energy is a
  fourth part).
- **class_conf** (:func:`class_doubt`): how unsure the frame is of the classes of the objects
  it sees (a low quantile, over the cells decoded as object, of the class confidence among
  objects): a tag never trained on leaves its object seen but unclassified.
  The flag is ``score > threshold``, the threshold a quantile of the scores of in-distribution
  **validation** frames (never the out-of-distribution sets).

``UnknownDetector`` is a plain container of tensors (saved in the checkpoint); ``fit`` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

COMPONENTS = ('cell_mean', 'cell_top', 'global')
ALL_PARTS = COMPONENTS + ('energy', 'class_conf')
#: The parts the committed detector uses: chosen on the validation OOD sets (docs/VISION.md),
#: where the cell parts and the energy did not help and ``class_conf`` caught unseen tags.
DEFAULT_COMPONENTS = ('global', 'class_conf')
TOP_FRAC = 0.1


@dataclass
class UnknownDetector:
    """Fitted statistics of in-distribution latents (see the module docstring)."""

    means: torch.Tensor            # (C, D) class means of cell features
    prec: torch.Tensor             # (D, D) shared precision
    g_mean: torch.Tensor           # (2D,) mean of frame statistics
    g_prec: torch.Tensor           # (2D, 2D) their precision
    norm: Dict[str, Sequence[float]] = field(default_factory=dict)  # component -> (mu, sd)
    components: Sequence[str] = COMPONENTS
    threshold: float = float('inf')
    quantile: float = 0.97

    def to_dict(self) -> dict:
        """Tensors and numbers for the checkpoint."""
        return {'means': self.means.float(), 'prec': self.prec.float(),
                'g_mean': self.g_mean.float(), 'g_prec': self.g_prec.float(),
                'norm': {k: [float(v[0]), float(v[1])] for k, v in self.norm.items()},
                'components': list(self.components), 'threshold': float(self.threshold),
                'quantile': float(self.quantile)}

    @classmethod
    def from_dict(cls, d: dict) -> 'UnknownDetector':
        """Inverse of :meth:`to_dict`."""
        return cls(means=d['means'], prec=d['prec'], g_mean=d['g_mean'], g_prec=d['g_prec'],
                   norm={k: tuple(v) for k, v in d['norm'].items()},
                   components=tuple(d['components']), threshold=float(d['threshold']),
                   quantile=float(d.get('quantile', 0.97)))

    def to(self, device, dtype=torch.float32) -> 'UnknownDetector':
        """Return a copy on ``device`` (fp32: the distances need the range)."""
        return UnknownDetector(self.means.to(device, dtype), self.prec.to(device, dtype),
                               self.g_mean.to(device, dtype), self.g_prec.to(device, dtype),
                               dict(self.norm), tuple(self.components), self.threshold,
                               self.quantile)

    # --- scoring ------------------------------------------------------------------------
    def cell_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats`` (B, D, H, W) -> (B, H, W) smallest squared Mahalanobis distance."""
        B, D, H, W = feats.shape
        f = feats.float().permute(0, 2, 3, 1).reshape(-1, D)
        diff = f[:, None, :] - self.means[None]                       # (N, C, D)
        d2 = torch.einsum('ncd,de,nce->nc', diff, self.prec, diff)
        return d2.min(1).values.reshape(B, H, W)

    def frame_parts(self, feats: torch.Tensor, cells: Optional[torch.Tensor] = None,
                    energy: Optional[torch.Tensor] = None,
                    class_conf: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Raw parts per frame: ``cell_mean``, ``cell_top``, ``global``, and passed through.

        ``energy`` and ``class_conf`` are added when given.

        ``cells``: (B, H, W) bool of the cells inside the frame's content (all when None);
        ``energy``: (B,) the frames' energies (mean entropy), passed through; ``class_conf``:
        (B,) :func:`class_doubt` of the frames, passed through.
        """
        B, D, H, W = feats.shape
        if cells is None:
            cells = torch.ones(B, H, W, dtype=torch.bool, device=feats.device)
        s = self.cell_scores(feats)
        out = {'cell_mean': [], 'cell_top': [], 'global': []}
        for b in range(B):
            v = s[b][cells[b]]
            k = max(int(round(TOP_FRAC * v.numel())), 1)
            out['cell_mean'].append(v.mean())
            out['cell_top'].append(v.topk(k).values.mean())
            f = feats[b].float()[:, cells[b]]                          # (D, n)
            g = torch.cat([f.mean(1), f.std(1, unbiased=False)]) - self.g_mean
            out['global'].append(g @ self.g_prec @ g)
        out = {k: torch.stack(v) for k, v in out.items()}
        if energy is not None:
            out['energy'] = torch.as_tensor(energy, dtype=torch.float32)
        if class_conf is not None:
            out['class_conf'] = torch.as_tensor(class_conf, dtype=torch.float32)
        return out

    def score_parts(self, parts: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Standardise each used part and take the largest: the unknown score (B,)."""
        zs = [(parts[c] - self.norm[c][0]) / self.norm[c][1] for c in self.components]
        return torch.stack(zs).max(0).values


#: Quantile of the object cells' class confidence that the ``class_conf`` part reads.
CLASS_DOUBT_Q = 0.05


def class_doubt(logits: torch.Tensor, cells: Optional[torch.Tensor] = None,
                q: Optional[float] = None, min_cells: int = 4) -> torch.Tensor:
    """Part ``class_conf``: how unsure the frame is of its objects' classes (B,).

    ``logits`` (B, C, h, w), class 0 the background; ``cells`` (B, h, w) bool content cells
    (all when None). Over the content cells decoded as object (``p(background) < 0.5``), the
    class confidence among objects is ``max_c p(c) / (1 - p(background))``; the part is minus
    its ``q`` quantile (default :data:`CLASS_DOUBT_Q`), so higher is stranger: an object that
    is seen but whose class is not (a tag never trained on, a blurred tag) scores high, while
    the background, which the energy also averages, does not dilute it. A frame with fewer
    than ``min_cells`` object cells scores -1 (nothing to be unsure about).
    """
    q = CLASS_DOUBT_Q if q is None else q
    p = torch.softmax(logits.float(), 1)
    bg = p[:, 0]
    conf = p[:, 1:].max(1).values / (1.0 - bg).clamp_min(1e-6)
    obj = bg < 0.5
    if cells is not None:
        obj = obj & cells
    out = []
    for b in range(p.shape[0]):
        v = conf[b][obj[b]]
        out.append(-torch.quantile(v, q) if v.numel() >= min_cells
                   else torch.tensor(-1.0, device=p.device))
    return torch.stack(out)


def frame_features(z: torch.Tensor, inject: torch.Tensor) -> torch.Tensor:
    """Cell features ``[z, e]`` (B, 2c, H, W)."""
    return torch.cat([z.float(), inject.float()], 1)


def content_cells(box, size: Tuple[int, int], grid: Tuple[int, int],
                  device=None) -> torch.Tensor:
    """(gh, gw) bool: latent cells whose centre lies in the letterbox content box.

    ``size``: the model input's (H, W); ``grid``: the latent's (gh, gw).
    """
    top, left, bh, bw = box
    cy = (torch.arange(grid[0], dtype=torch.float32, device=device) + 0.5) * size[0] / grid[0]
    cx = (torch.arange(grid[1], dtype=torch.float32, device=device) + 0.5) * size[1] / grid[1]
    ys = (cy >= top) & (cy < top + bh)
    xs = (cx >= left) & (cx < left + bw)
    m = ys[:, None] & xs[None, :]
    if not bool(m.any()):
        m[grid[0] // 2, grid[1] // 2] = True
    return m


def _gaussian_precision(x: torch.Tensor, ridge: float) -> torch.Tensor:
    cov = torch.cov(x.T.double())
    cov = cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean()
    return torch.linalg.inv(cov).float()


@torch.inference_mode()
def fit(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
        components: Sequence[str] = COMPONENTS, ridge: float = 1e-3,
        energy: Optional[torch.Tensor] = None,
        class_conf: Optional[torch.Tensor] = None) -> UnknownDetector:
    """Fit the detector on in-distribution frames.

    ``feats``: (N, D, H, W) cell features at each frame's halting step; ``labels``: (N, H, W)
    class of each cell (-1: a mixed cell, not used for the class Gaussians).
    """
    N, D, H, W = feats.shape
    f = feats.float().permute(0, 2, 3, 1).reshape(-1, D)
    y = labels.reshape(-1)
    means, centred = [], []
    for c in range(num_classes):
        fc = f[y == c]
        if fc.shape[0] < 2:
            fc = f
        mu = fc.mean(0)
        means.append(mu)
        centred.append(fc - mu)
    means = torch.stack(means)
    cen = torch.cat(centred)
    cov = (cen.T.double() @ cen.double()) / max(cen.shape[0] - 1, 1)
    cov = cov + ridge * torch.eye(D, dtype=cov.dtype) * cov.diagonal().mean()
    prec = torch.linalg.inv(cov).float()
    g = torch.cat([feats.float().mean((2, 3)), feats.float().std((2, 3), unbiased=False)], 1)
    det = UnknownDetector(means=means, prec=prec, g_mean=g.mean(0),
                          g_prec=_gaussian_precision(g, 1e-2), components=tuple(components))
    parts = det.frame_parts(feats, energy=energy, class_conf=class_conf)
    det.norm = {k: (float(v.mean()), float(v.std().clamp_min(1e-6))) for k, v in parts.items()}
    return det


def calibrate(det: UnknownDetector, scores: np.ndarray, quantile: float = 0.97) -> float:
    """Set the threshold to the ``quantile`` of in-distribution validation scores."""
    det.quantile = float(quantile)
    det.threshold = float(np.quantile(np.asarray(scores, np.float64), quantile))
    return det.threshold


def cell_labels(gts: np.ndarray, stride: int) -> torch.Tensor:
    """(N, S, S) class maps -> (N, S/stride, S/stride) class of pure cells, -1 for mixed."""
    g = torch.from_numpy(gts.astype(np.int64))
    N, S, _ = g.shape
    h = S // stride
    p = g.reshape(N, h, stride, h, stride).permute(0, 1, 3, 2, 4).reshape(N, h, h, -1)
    first = p[..., 0]
    pure = (p == first[..., None]).all(-1)
    return torch.where(pure, first, torch.full_like(first, -1))


__all__ = ['UnknownDetector', 'fit', 'calibrate', 'frame_features', 'content_cells',
           'class_doubt',
           'cell_labels', 'COMPONENTS']
