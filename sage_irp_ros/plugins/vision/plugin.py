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
from sage_irp_ros.plugins.vision.unknown import UnknownDetector, content_cells, frame_features

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, 'vision_irp.pt')
PRECISIONS = ('fp32', 'fp16')
Box = Tuple[int, int, int, int]  # (top, left, height, width) of a frame's letterboxed content


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
                 confident: bool = True, confident_frac: Optional[float] = None,
                 unknown: Optional[UnknownDetector] = None, pad: str = 'stride'):
        """Wrap a trained ``net`` on ``device`` ('cpu', 'cuda', 'cuda:1', ...) at ``precision``.

        ``precision`` is 'fp32' or 'fp16'; fp16 is accepted on CUDA only (CPU half-precision
        convolutions are slow and unsupported for some ops), so 'fp16' on a CPU device raises
        ``ValueError``. ``confident=False`` disables the 'confident' rule for every run (the
        ``ctx`` key ``'confident'`` does the same per run). ``confident_frac`` overrides the
        checkpoint's threshold of the 'confident' rule (the benchmark sweeps it). ``unknown``:
        the fitted unknown detector (``unknown.py``; stored in the checkpoint); without one
        :meth:`assess` flags nothing. ``pad``: how a letterboxed frame is padded, 'stride' (to a
        multiple of 4 only: a 640x480 frame becomes a 64x48 input; the default, better on
        validation) or 'square' (to input_size x input_size).
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
        self.confident_frac = float(self.cfg.confident_frac if confident_frac is None
                                    else confident_frac)
        self.unknown = None if unknown is None else unknown.to(dev)
        if pad not in ('stride', 'square'):
            raise ValueError(f"pad must be 'stride' or 'square', got {pad!r}")
        self.pad = pad

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, device: str = 'cpu', precision: str = 'fp32',
                        **kwargs: Any) -> 'VisionIRP':
        """Load a checkpoint written by ``train.py``."""
        net, extra = load_checkpoint(path)
        if 'unknown' not in kwargs and extra.get('unknown'):
            kwargs['unknown'] = UnknownDetector.from_dict(extra['unknown'])
        return cls(net, device=device, precision=precision, **kwargs)

    @property
    def unknown_threshold(self) -> Optional[float]:
        """Threshold of the unknown score (None without a detector)."""
        return None if self.unknown is None else self.unknown.threshold

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
    def _to_input(self, x0: Any) -> Tuple[torch.Tensor, Tuple[int, int], Box]:
        """Letterbox an (H, W, 3) uint8 frame into the model's input, keeping its aspect ratio.

        The frame is scaled (bilinear, antialiased when shrinking) so that its longer side is
        ``input_size`` and centred on a canvas filled with its mean colour (:meth:`canvas_size`:
        the content rounded up to a multiple of 4, or the square). Returns the input tensor,
        the frame's (H, W) and the content box ``(top, left, height, width)`` in model pixels.
        """
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
        box = letterbox_box(h, w, s)
        top, left, bh, bw = box
        if (bh, bw) != (h, w):
            x = F.interpolate(x.float(), size=(bh, bw), mode='bilinear', align_corners=False,
                              antialias=(h > bh or w > bw)).to(self.dtype)
        ch, cw = self.canvas_size(bh, bw)
        if (bh, bw) != (ch, cw):
            t, lft = (ch - bh) // 2, (cw - bw) // 2
            canvas = x.mean((2, 3), keepdim=True).expand(1, 3, ch, cw).clone()
            canvas[:, :, t:t + bh, lft:lft + bw] = x
            x = canvas
            box = (t, lft, bh, bw)
        else:
            box = (0, 0, bh, bw)
        return x, (h, w), box

    def canvas_size(self, bh: int, bw: int) -> Tuple[int, int]:
        """Return the model input size for letterboxed content of (bh, bw).

        pad='stride': the content rounded up to a multiple of 4 (at least 8; the network is
        fully convolutional); pad='square': input_size x input_size.
        """
        if self.pad == 'square':
            s = self.cfg.input_size
            return s, s
        m = 4
        return -(-max(bh, 8) // m) * m, -(-max(bw, 8) // m) * m

    def _stats(self, logits: torch.Tensor) -> Tuple[float, float]:
        """(mean entropy in nats, fraction of uncertain pixels): one host sync."""
        logp = torch.log_softmax(logits.float(), 1)
        p = logp.exp()
        ent = -(p * logp).sum(1).mean()
        unc = (p.max(1).values < self.cfg.uncertain_p).float().mean()
        e, u = torch.stack([ent, unc]).tolist()
        return float(e), float(u)

    def init_state(self, x0: Any, ctx: Optional[Mapping[str, Any]] = None) -> IRPState:
        """Letterbox the (H, W, 3) uint8 image into the model input and encode it.

        Decoding (logits, energy) is lazy: :meth:`energy` and :meth:`result` decode the
        current latent when they are first asked, so a run of fixed length that never reads
        the energy decodes once, at the end.
        """
        x, hw, box = self._to_input(x0)
        with torch.inference_mode():
            z, inject, skip = self.net.encode(x)
        confident = self.confident and bool((ctx or {}).get('confident', True))
        return IRPState(payload=z, meta={'inject': inject, 'skip': skip, 'logits': None,
                                         'E': None, 'uncertain': None, 'hw': hw, 'box': box,
                                         'confident_rule': confident})

    def _logits(self, state: IRPState) -> torch.Tensor:
        m = state.meta
        if m['logits'] is None:
            with torch.inference_mode():
                m['logits'] = self.net.decode(state.payload, m['skip'])
        return m['logits']

    def _ensure_stats(self, state: IRPState) -> None:
        m = state.meta
        if m['E'] is None:
            with torch.inference_mode():
                m['E'], m['uncertain'] = self._stats(self._logits(state))

    def energy(self, state: IRPState) -> float:
        """Mean per-pixel entropy of the decoded class distribution (nats), cached per state."""
        self._ensure_stats(state)
        return state.meta['E']

    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """One refiner iteration of the latent (decoding waits until something asks)."""
        with torch.inference_mode():
            z = self.net.step(state.payload, state.meta['inject'])
        return state.evolve(z, logits=None, E=None, uncertain=None, assess=None)

    def halt(self, state: IRPState, energies: list) -> Optional[str]:
        """'confident' when the fraction of uncertain pixels is below ``confident_frac``."""
        if state.meta['confident_rule']:
            self._ensure_stats(state)
            if state.meta['uncertain'] < self.confident_frac:
                return HALT_CONFIDENT
        return None

    def energy_scale(self, e0: float) -> float:
        """``ln C``: the maximum entropy, so ``eps`` is a fraction of it per step."""
        return math.log(self.cfg.num_classes)

    def _upsampled_logits(self, state: IRPState) -> torch.Tensor:
        logits = self._logits(state).float()
        h, w = state.meta['hw']
        top, left, bh, bw = state.meta['box']
        if (bh, bw) != tuple(logits.shape[-2:]):
            logits = logits[:, :, top:top + bh, left:left + bw]
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

    def assess(self, state: IRPState) -> dict:
        """Per-frame confidence and "I don't know" of a state (cached in the state).

        Returns ``confidence`` (mean max class probability over the frame's content, in
        [1/C, 1]), ``unknown_score`` (``unknown.py``: how unlike the in-distribution latents
        the frame is; higher is stranger), ``unknown_threshold`` and ``unknown`` (score above
        the threshold calibrated on validation frames). Without a detector the score is the
        energy in units of its maximum (ln C) and nothing is flagged.
        """
        m = state.meta
        if m.get('assess') is not None:
            return m['assess']
        top, left, bh, bw = m['box']
        with torch.inference_mode():
            logits = self._logits(state)[:, :, top:top + bh, left:left + bw].float()
            conf = float(torch.softmax(logits, 1).max(1).values.mean())
            if self.unknown is None:
                score, thr = self.energy(state) / math.log(self.cfg.num_classes), None
                unknown = False
            else:
                feats = frame_features(state.payload, m['inject'])
                cells = content_cells(m['box'], tuple(m['logits'].shape[-2:]),
                                      tuple(feats.shape[-2:]), feats.device)
                energy = torch.tensor([self.energy(state)])
                score = float(self.unknown.score_parts(
                    self.unknown.frame_parts(feats, cells[None], energy))[0])
                thr = self.unknown.threshold
                unknown = bool(score > thr)
        m['assess'] = {'confidence': conf, 'unknown_score': score, 'unknown_threshold': thr,
                       'unknown': unknown}
        return m['assess']


def letterbox_box(h: int, w: int, size: int) -> Tuple[int, int, int, int]:
    """Content box ``(top, left, height, width)`` of an (h, w) frame letterboxed into size^2."""
    scale = size / max(h, w)
    bh = min(max(int(round(h * scale)), 1), size)
    bw = min(max(int(round(w * scale)), 1), size)
    return (size - bh) // 2, (size - bw) // 2, bh, bw


def load_default(device: str = 'cpu', precision: str = 'fp32', **kwargs: Any) -> VisionIRP:
    """Load the plugin with the committed weights (``weights/vision_irp.pt`` beside it)."""
    if not os.path.exists(DEFAULT_WEIGHTS):
        raise FileNotFoundError(f'committed vision weights missing: {DEFAULT_WEIGHTS}')
    return VisionIRP.from_checkpoint(DEFAULT_WEIGHTS, device=device, precision=precision, **kwargs)
