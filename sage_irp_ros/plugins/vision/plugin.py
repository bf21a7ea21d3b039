"""``VisionIRP``: semantic segmentation by refining a latent (the vision plugin, issue #3)."""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from sage_irp_ros.core.loop import HaltConfig
from sage_irp_ros.core.plugin import HALT_CONFIDENT, IRPPlugin, IRPState, Schedule
from sage_irp_ros.plugins.vision.model import VisionConfig, VisionIRPNet, load_checkpoint

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, 'vision_irp.pt')
PRECISIONS = ('fp32', 'fp16')


class VisionIRP(IRPPlugin):
    """Segment an RGB image into ``classes`` by iteratively refining a latent.

    Four invariants:

    - **state space**: the payload is a latent ``z`` of shape (1, latent_channels=32, 16, 16) (the
      model input, 64x64, at stride 4) on the plugin's device; ``state.meta`` holds the
      encoder's injection features and the decoder's per-frame skip terms (computed once by
      ``init_state``), the decoded logits of the current ``z`` (1, C, 64, 64), its energy and
      uncertain fraction, and the input size. Step ``t`` maps ``z_t`` to
      ``z_{t+1} = z_t + f(z_t, e)`` with one weight-tied residual block ``f`` (steps are
      iterations of the same map).
    - **noise / uncertainty model**: the image is a scene seen through sensor noise, optical
      blur, low contrast and occluders (``scenes.py``); the per-pixel class posterior is the
      softmax of the decoded logits, and its spread is the plugin's uncertainty. The encoder
      sees only a local window (23 px), so ``z_0`` is uncertain wherever a class needs the
      shape's outline; refinement spreads that context.
    - **energy**: the mean over the 64x64 model-resolution pixels of the entropy of the decoded
      class distribution, in **nats** per pixel, in ``[0, ln C]``; lower is better (a confident
      segmentation). It is computed inside ``step`` from the logits the step decodes anyway
      (one host sync per step, together with the uncertain fraction), so ``energy()`` and
      ``halt()`` cost nothing. ``energy_scale`` is ``ln C`` (the maximum entropy), so the
      slope threshold ``eps`` is a fraction of the maximum entropy per step.
      Halting: ``confident`` when the fraction of pixels whose max class probability is below
      ``uncertain_p`` is under ``confident_frac``; then the core's slope rule and ``max_steps``.
    - **contribution (coherence)**: a class-id mask of the camera frame at the input's size,
      with per-pixel class probabilities and confidence for overlays and for other plugins
      (e.g. the language plugin naming what is seen). Easy frames stop after a step or two and
      return their compute to the budget; hard frames spend more.

    One instance holds only the network and configuration, so any number of inputs may be
    refined at once (threads) with the same instance: all per-run data is in the state.
    """

    kind = 'vision'
    version = 'vision-irp-2'

    def __init__(self, net: VisionIRPNet, device: str = 'cpu', precision: str = 'fp32',
                 confident: bool = True):
        """Wrap a trained ``net`` on ``device`` ('cpu', 'cuda', 'cuda:1', ...) at ``precision``.

        ``precision`` is 'fp32' or 'fp16'; fp16 is accepted on CUDA only (CPU half-precision
        convolutions are slow and unsupported for some ops), so 'fp16' on a CPU device raises
        ``ValueError``. ``confident=False`` disables the 'confident' rule for every run (the
        ``ctx`` key ``'confident'`` does the same per run).
        """
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        dev = torch.device(device)
        if dev.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError(f'device {device!r} requested but CUDA is not available')
        if precision == 'fp16' and dev.type != 'cuda':
            raise ValueError(f"precision 'fp16' needs a CUDA device; got device {device!r} "
                             "(use precision='fp32' on the CPU)")
        self.device = dev
        self.precision = precision
        self.dtype = torch.float16 if precision == 'fp16' else torch.float32
        self.net = net.to(device=dev, dtype=self.dtype).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.cfg: VisionConfig = net.cfg
        self.confident = bool(confident)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, device: str = 'cpu', precision: str = 'fp32',
                        **kwargs: Any) -> 'VisionIRP':
        """Load a checkpoint written by ``train.py``."""
        net, _ = load_checkpoint(path)
        return cls(net, device=device, precision=precision, **kwargs)

    @property
    def classes(self) -> Tuple[str, ...]:
        """Class names; index = class id in the mask (0 = background)."""
        return tuple(self.cfg.classes)

    def halt_config(self, max_steps: Optional[int] = None) -> HaltConfig:
        """Return the tuned halting parameters; ``max_steps`` defaults to ``steps_max``."""
        return HaltConfig(eps=float(self.cfg.eps), K=int(self.cfg.K),
                          max_steps=self.cfg.steps_max if max_steps is None else int(max_steps))

    def no_halt_config(self, max_steps: Optional[int] = None) -> HaltConfig:
        """Halting off: run exactly ``max_steps`` steps (use with ``ctx={'confident': False}``)."""
        n = self.cfg.steps_max if max_steps is None else int(max_steps)
        return HaltConfig(eps=0.0, K=n + 1, max_steps=n)

    # --- the contract -------------------------------------------------------------------
    def _to_input(self, x0: Any) -> Tuple[torch.Tensor, Tuple[int, int]]:
        if isinstance(x0, torch.Tensor):
            x0 = x0.detach().cpu().numpy()
        a = np.asarray(x0)
        if a.dtype != np.uint8:
            raise ValueError(f'expected a uint8 RGB image, got dtype {a.dtype}')
        if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f'expected an (H, W, 3) RGB image, got shape {a.shape}')
        h, w = int(a.shape[0]), int(a.shape[1])
        x = torch.from_numpy(np.ascontiguousarray(a[..., :3])).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).to(self.dtype) / 255.0
        s = self.cfg.input_size
        if (h, w) != (s, s):
            x = F.interpolate(x.float(), size=(s, s), mode='bilinear', align_corners=False,
                              antialias=(h > s or w > s)).to(self.dtype)
        return x, (h, w)

    def _stats(self, logits: torch.Tensor) -> Tuple[float, float]:
        """(mean entropy in nats, fraction of uncertain pixels): one host sync."""
        logp = torch.log_softmax(logits.float(), 1)
        p = logp.exp()
        ent = -(p * logp).sum(1).mean()
        unc = (p.max(1).values < self.cfg.uncertain_p).float().mean()
        e, u = torch.stack([ent, unc]).tolist()
        return float(e), float(u)

    def init_state(self, x0: Any, ctx: Optional[Mapping[str, Any]] = None) -> IRPState:
        """Resize the (H, W, 3) uint8 image to the model input, encode and decode step 0."""
        x, hw = self._to_input(x0)
        with torch.inference_mode():
            z, inject, skip = self.net.encode(x)
            logits = self.net.decode(z, skip)
            e, u = self._stats(logits)
        confident = self.confident and bool((ctx or {}).get('confident', True))
        return IRPState(payload=z, meta={'inject': inject, 'skip': skip, 'logits': logits,
                                         'E': e, 'uncertain': u, 'hw': hw,
                                         'confident_rule': confident})

    def energy(self, state: IRPState) -> float:
        """Mean per-pixel entropy of the decoded class distribution (nats), cached by the step."""
        return state.meta['E']

    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """One refiner iteration, then decode and cache logits, energy and uncertain fraction."""
        m = state.meta
        with torch.inference_mode():
            z = self.net.step(state.payload, m['inject'])
            logits = self.net.decode(z, m['skip'])
            e, u = self._stats(logits)
        return state.evolve(z, logits=logits, E=e, uncertain=u)

    def halt(self, state: IRPState, energies: list) -> Optional[str]:
        """'confident' when the fraction of uncertain pixels is below ``confident_frac``."""
        if state.meta['confident_rule'] and state.meta['uncertain'] < self.cfg.confident_frac:
            return HALT_CONFIDENT
        return None

    def energy_scale(self, e0: float) -> float:
        """``ln C``: the maximum entropy, so ``eps`` is a fraction of it per step."""
        return math.log(self.cfg.num_classes)

    def _upsampled_logits(self, state: IRPState) -> torch.Tensor:
        logits = state.meta['logits'].float()
        h, w = state.meta['hw']
        if tuple(logits.shape[-2:]) != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode='bilinear', align_corners=False)
        return logits[0]

    def result(self, state: IRPState) -> np.ndarray:
        """(H, W) uint8 class ids at the input's size: argmax of the upsampled logits."""
        with torch.inference_mode():
            return self._upsampled_logits(state).argmax(0).to(torch.uint8).cpu().numpy()

    def probabilities(self, state: IRPState) -> np.ndarray:
        """(H, W, C) float32 per-class probabilities at the input's size (for overlays)."""
        with torch.inference_mode():
            p = torch.softmax(self._upsampled_logits(state), 0)
            return p.permute(1, 2, 0).contiguous().cpu().numpy()

    def confidence(self, state: IRPState) -> np.ndarray:
        """(H, W) float32 max class probability at the input's size."""
        return self.probabilities(state).max(-1)


def load_default(device: str = 'cpu', precision: str = 'fp32', **kwargs: Any) -> VisionIRP:
    """Load the plugin with the committed weights (``weights/vision_irp.pt`` beside it)."""
    if not os.path.exists(DEFAULT_WEIGHTS):
        raise FileNotFoundError(f'committed vision weights missing: {DEFAULT_WEIGHTS}')
    return VisionIRP.from_checkpoint(DEFAULT_WEIGHTS, device=device, precision=precision, **kwargs)
