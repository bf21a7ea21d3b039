"""The vision refiner's network: a local encoder, a weight-tied latent refiner, a light decoder.

Why this design makes refinement matter
---------------------------------------
Shape colour and texture carry no class information in our scenes (see ``scenes.py``); only the
outline does. The **encoder** (run once per frame) is deliberately *local*: two 3x3 convs at
full resolution (the boundary features the decoder reuses), a stride-2 conv and a 3x3 conv at
32x32 (edge / corner features, also reused by the decoder), a stride-2 conv and a 3x3 conv with
GroupNorm to a 16x16 latent: a receptive field of 23 pixels. Decoding its latent directly
(step 0) finds *where* shapes are but often cannot tell a disk's interior from a rectangle's.
The **refiner** is one residual block applied again and again with the same weights (so steps
are iterations of one map, not layers): each step reads the current latent and the encoder's
features (input injection, as in deep-equilibrium and recurrent-convolution models) and adds a
correction. Two 3x3 convs at stride 4 (the second dilated by 2) widen the receptive field by 24
pixels per step, so class evidence from the outline spreads over the shape and noise is
averaged over a growing neighbourhood. Clean, isolated shapes are settled after one or two
steps; noisy, low-contrast, occluded ones keep changing for longer, which is what makes early
halting save compute on easy frames while hard frames use their budget.

The **decoder** runs after every step (the energy and the halting rule read the decoded class
distribution), so its per-frame parts are computed once by ``encode``: the 1x1 projections of
the 32x32 and 64x64 encoder features. Per step it only projects the latent (1x1), upsamples it
bilinearly to 32x32, adds the 32x32 term, applies ReLU and a 3x3 conv, upsamples to 64x64, adds
the full-resolution term, applies ReLU and a 1x1 classifier (a two-level U-Net-style decoder).

``VisionConfig`` also has the variants tried while tuning (``latent_stride=2``: a 32x32 latent;
``enc_dilated``: one more dilated conv in the encoder; ``norm_all``: GroupNorm after every
encoder stage); ``docs/VISION.md`` lists how they compared. The committed weights use the
defaults.

Training (``train.py``) supervises the decoding of *every* step, including step 0, with weights
that grow with the step index, over a random number of unrolled steps up to ``steps_max``. The
decoded mask therefore gets better step by step, and stopping early returns a usable mask.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

REFINERS = ('dilated', 'conv2', 'local', 'propagate')


@dataclass
class VisionConfig:
    """Architecture, refinement and halting configuration (saved with the weights)."""

    classes: Tuple[str, ...] = ('background', 'disk', 'rectangle', 'triangle')
    input_size: int = 64
    skip_channels: int = 16
    latent_channels: int = 32
    enc_dilated: bool = False       # an extra dilated 3x3 conv at the latent resolution
    norm_all: bool = False          # GroupNorm after every encoder stage (not only the last)
    latent_stride: int = 4          # 4: 16x16 latent, 2: 32x32 latent (input 64x64)
    # The step is 3x3 conv, GroupNorm, ReLU, then: 'dilated' a 3x3 conv of dilation 2 (reach
    # +3 latent cells = 12 px a step), 'conv2' a 3x3 conv (+2 cells = 8 px), 'local' a 1x1
    # conv (+1 cell = 4 px), so evidence crosses a large shape in several steps
    refiner: str = 'dilated'
    task: str = 'shapes'            # the scene generator it was trained on (scenes.TASKS)
    ref_hidden: int = 0             # hidden channels of the step (0: latent_channels)
    reach: int = 2                  # 'propagate': neighbours up to this many cells (1 or 2)
    steps_max: int = 8
    # Halting (tuned on the validation seeds by train.py; defaults are sane starting points).
    uncertain_p: float = 0.9        # a pixel is uncertain when its max class probability < this
    confident_frac: float = 0.02    # 'confident' when the fraction of uncertain pixels < this
    eps: float = 0.02               # slope rule: eps relative to the energy scale (see plugin)
    K: int = 1                      # slope window, steps

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.classes)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d['classes'] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'VisionConfig':
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if 'classes' in kw:
            kw['classes'] = tuple(kw['classes'])
        return cls(**kw)


class _Unrolled(nn.Module):
    """A refiner network: ``encode``, a weight-tied ``step`` and ``decode``; ``forward`` unrolls.

    Subclasses implement ``encode(x) -> (z, inject, skip)``, ``step(z, inject) -> z`` and
    ``decode(z, skip) -> logits``; training and the batched evaluation call ``forward``.
    """

    def forward(self, x: torch.Tensor, steps: int):
        """Logits after each of steps 0..``steps`` (a list of ``steps + 1`` tensors)."""
        z, inject, skip = self.encode(x)
        outs = [self.decode(z, skip)]
        for _ in range(steps):
            z = self.step(z, inject)
            outs.append(self.decode(z, skip))
        return outs


class VisionIRPNet(_Unrolled):
    """Encoder, weight-tied refiner step and decoder (see the module docstring)."""

    def __init__(self, cfg: VisionConfig):
        """Build the modules of ``cfg``."""
        super().__init__()
        if cfg.latent_stride not in (2, 4):
            raise ValueError(f'latent_stride must be 2 or 4, got {cfg.latent_stride!r}')
        if cfg.refiner == 'propagate':
            raise ValueError("refiner 'propagate' is PropagationNet's: use build_net(cfg)")
        if cfg.refiner not in REFINERS:
            raise ValueError(f'refiner must be one of {REFINERS}, got {cfg.refiner!r}')
        self.cfg = cfg
        s, c = cfg.skip_channels, cfg.latent_channels
        # encoder (once per frame)
        self.stem1 = nn.Conv2d(3, s, 3, padding=1)
        self.stem2 = nn.Conv2d(s, s, 3, padding=1)
        self.down1 = nn.Conv2d(s, c, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(c, c, 3, padding=1)
        if cfg.latent_stride == 4:
            self.down2 = nn.Conv2d(c, c, 3, stride=2, padding=1)
            self.enc3 = nn.Conv2d(c, c, 3, padding=1)
        else:
            self.enc3 = nn.Conv2d(c, c, 3, padding=1)
        self.enc4 = nn.Conv2d(c, c, 3, padding=2, dilation=2) if cfg.enc_dilated else None
        self.enc_norm = nn.GroupNorm(4, c)
        if cfg.norm_all:
            self.n64, self.n32 = nn.GroupNorm(4, s), nn.GroupNorm(4, c)
            self.n16 = nn.GroupNorm(4, c) if cfg.latent_stride == 4 else nn.Identity()
        else:
            self.n64 = self.n32 = self.n16 = nn.Identity()
        self.to_z = nn.Conv2d(c, c, 1)
        # refiner (the step)
        hid = cfg.ref_hidden or c
        self.ref1 = nn.Conv2d(2 * c, hid, 3, padding=1)
        self.ref_norm = nn.GroupNorm(4, hid)
        self.ref2 = {'dilated': lambda: nn.Conv2d(hid, c, 3, padding=2, dilation=2),
                     'conv2': lambda: nn.Conv2d(hid, c, 3, padding=1),
                     'local': lambda: nn.Conv2d(hid, c, 1)}[cfg.refiner]()
        # decoder: skip terms are computed once per frame, the latent path after every step
        self.dec_skip = nn.Conv2d(s, s, 1)
        self.dec_z = nn.Conv2d(c, s, 1, bias=False)
        if cfg.latent_stride == 4:
            self.dec_f = nn.Conv2d(c, s, 1)
            self.dec_mid = nn.Conv2d(s, s, 3, padding=1)
        self.dec_out = nn.Conv2d(s, cfg.num_classes, 1)
        nn.init.zeros_(self.ref2.weight)  # the step starts as the identity map
        nn.init.zeros_(self.ref2.bias)

    def encode(self, x: torch.Tensor):
        """``x``: (B, 3, S, S) in [0, 1]. Returns ``(z0, inject, skip)``.

        ``skip`` is a tuple of the decoder's per-frame terms (computed once, reused each step).
        """
        x = x * 2.0 - 1.0
        f64 = F.relu(self.n64(self.stem2(F.relu(self.stem1(x)))))
        f32 = F.relu(self.n32(self.enc2(F.relu(self.down1(f64)))))
        h = f32
        if self.cfg.latent_stride == 4:
            h = F.relu(self.n16(self.down2(h)))
            skip = (self.dec_f(f32), self.dec_skip(f64))
        else:
            skip = (None, self.dec_skip(f64))
        if self.enc4 is not None:
            h = F.relu(self.enc3(h))
            e = F.relu(self.enc_norm(self.enc4(h)))
        else:
            e = F.relu(self.enc_norm(self.enc3(h)))
        return self.to_z(e), e, skip

    def step(self, z: torch.Tensor, inject: torch.Tensor) -> torch.Tensor:
        """One refinement iteration: ``z + ref2(relu(norm(ref1([z, inject]))))``."""
        h = F.relu(self.ref_norm(self.ref1(torch.cat([z, inject], 1))))
        return z + self.ref2(h)

    def decode(self, z: torch.Tensor, skip) -> torch.Tensor:
        """Class logits (B, C, S, S) at the model input size (``skip`` from :meth:`encode`)."""
        f32, f64 = skip
        u = self.dec_z(z)
        if f32 is not None:
            u = F.interpolate(u, size=f32.shape[-2:], mode='bilinear', align_corners=False)
            u = self.dec_mid(F.relu(u + f32))
        u = F.interpolate(u, size=f64.shape[-2:], mode='bilinear', align_corners=False)
        return self.dec_out(F.relu(u + f64))


def offsets(reach: int) -> tuple:
    """Neighbour offsets of one propagation step, in latent cells.

    The 8 directions at distances 1..``reach``: evidence travels up to ``reach`` cells
    (``2 * reach`` pixels of a 64x64 input) per step.
    """
    if reach not in (1, 2):
        raise ValueError(f'reach must be 1 or 2, got {reach!r}')
    return tuple((dy * r, dx * r) for r in range(1, reach + 1)
                 for (dy, dx) in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0),
                                  (1, 1)))


class PropagationNet(_Unrolled):
    """Encoder, a propagation step with learnt affinities, and a light decoder (``'propagate'``).

    Made for the ``tags`` task (``scenes.py``), where an object's class is written on a small
    tag somewhere on it and must be carried to every pixel of the object: evidence far away,
    as in recurrent "think longer" networks.

    - **Encoder** (once per frame, receptive field 23 px): two 3x3 convs at full resolution, a
      stride-2 conv, a 3x3 and a dilated 3x3 conv with GroupNorm to features ``e`` on a 32x32
      grid. From ``e``: the initial latent ``z_0 = relu(1x1(e))`` (non-negative: evidence where
      the tag is seen) and, per cell, 8 x ``reach`` **affinities** in (0, 1) (sigmoid of a 3x3
      conv), one per neighbour of :func:`offsets`: how much of that neighbour's evidence may
      flow in (high inside an object, low across its outline).
    - **Step** (weights shared, so steps are iterations of one map): geodesic propagation, then a
      learnt correction::

          m = max(z, max_k a_k * shift_k(z))                 # evidence moves <= reach cells
          z' = relu(m + conv3x3(relu(GN(conv3x3([m, e])))))  # residual, starts at zero

      The max never forgets evidence and moves it at most ``reach`` cells a step, so a pixel
      ``r`` cells (inside its object) from the tag needs about ``r / reach`` steps: small objects
      are done at step 0 or 1, long ones need many, and once the evidence has covered every
      object the latent stops changing, and so does the energy.
    - **Decoder**: 1x1 projections of ``z`` and ``e``, a 3x3 conv at 32x32, bilinear
      upsampling to 64x64 plus a 1x1 projection of the full-resolution features (sharp
      outlines), ReLU, 1x1 classifier. The energy after each step reads
      :meth:`decode_coarse` (the same decoder stopped at 32x32, the full-resolution term
      average-pooled), so a step costs the refiner and a third of a decoding.

    ``encode`` returns ``(z0, inject, skip)`` with ``inject = cat([e, affinities])``, so the
    plugin and the unknown detector use it as they use :class:`VisionIRPNet`.
    """

    def __init__(self, cfg: VisionConfig):
        """Build the modules of ``cfg`` (``refiner='propagate'``, ``latent_stride=2``)."""
        super().__init__()
        if cfg.refiner != 'propagate' or cfg.latent_stride != 2:
            raise ValueError("PropagationNet needs refiner='propagate' and latent_stride=2")
        self.cfg = cfg
        s, c = cfg.skip_channels, cfg.latent_channels
        self.stem1 = nn.Conv2d(3, s, 3, padding=1)
        self.stem2 = nn.Conv2d(s, s, 3, padding=1)
        self.down1 = nn.Conv2d(s, c, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(c, c, 3, padding=1)
        self.enc3 = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.enc_norm = nn.GroupNorm(4, c)
        self.to_z = nn.Conv2d(c, c, 1)
        self.offsets = offsets(cfg.reach)
        self.to_aff = nn.Conv2d(c, len(self.offsets), 3, padding=1)
        nn.init.constant_(self.to_aff.bias, 3.0)  # affinities start open (0.95): evidence
        # reaches every pixel from the start, so the tag's recognition gets gradient at once
        hid = cfg.ref_hidden or c
        self.ref1 = nn.Conv2d(2 * c, hid, 3, padding=1)
        self.ref_norm = nn.GroupNorm(4, hid)
        self.ref2 = nn.Conv2d(hid, c, 3, padding=1)
        nn.init.zeros_(self.ref2.weight)  # the step starts as pure propagation
        nn.init.zeros_(self.ref2.bias)
        self.dec_skip = nn.Conv2d(s, s, 1)
        self.dec_z = nn.Conv2d(c, s, 1, bias=False)
        self.dec_f = nn.Conv2d(c, s, 1)
        self.dec_mid = nn.Conv2d(s, s, 3, padding=1)
        self.dec_out = nn.Conv2d(s, cfg.num_classes, 1)

    def encode(self, x: torch.Tensor):
        """``x``: (B, 3, H, W) in [0, 1] (H, W multiples of 2). Returns ``(z0, inject, skip)``."""
        x = x * 2.0 - 1.0
        f64 = F.relu(self.stem2(F.relu(self.stem1(x))))
        f32 = F.relu(self.enc2(F.relu(self.down1(f64))))
        e = F.relu(self.enc_norm(self.enc3(f32)))
        aff = torch.sigmoid(self.to_aff(e))
        f64s = self.dec_skip(f64)
        return (F.relu(self.to_z(e)), torch.cat([e, aff], 1),
                (self.dec_f(e), f64s, F.avg_pool2d(f64s, 2)))

    def step(self, z: torch.Tensor, inject: torch.Tensor) -> torch.Tensor:
        """One iteration: propagate evidence to the neighbours, then the learnt correction."""
        c = self.cfg.latent_channels
        e, aff = inject[:, :c], inject[:, c:]
        H, W = z.shape[-2:]
        p = self.cfg.reach
        zp = F.pad(z, (p, p, p, p))
        m = z
        for k, (dy, dx) in enumerate(self.offsets):
            m = torch.maximum(m, aff[:, k:k + 1] * zp[:, :, p + dy:p + dy + H, p + dx:p + dx + W])
        h = F.relu(self.ref_norm(self.ref1(torch.cat([m, e], 1))))
        return F.relu(m + self.ref2(h))

    def decode(self, z: torch.Tensor, skip) -> torch.Tensor:
        """Class logits (B, C, H, W) at the model input size (``skip`` from :meth:`encode`)."""
        f32, f64 = skip[:2]
        u = self.dec_mid(F.relu(self.dec_z(z) + f32))
        u = F.interpolate(u, size=f64.shape[-2:], mode='bilinear', align_corners=False)
        return self.dec_out(F.relu(u + f64))

    def decode_coarse(self, z: torch.Tensor, skip) -> torch.Tensor:
        """Class logits at the latent's resolution (B, C, H/2, W/2), for the energy.

        The decoder's path without the upsampling: the full-resolution term enters average-
        pooled to the latent grid (computed once per frame by :meth:`encode`). About a third
        of :meth:`decode`'s cost; the halting statistics read it after every step, and the
        mask (``decode``) is decoded once, at the end.
        """
        f32, _, f64p = skip
        u = self.dec_mid(F.relu(self.dec_z(z) + f32))
        return self.dec_out(F.relu(u + f64p))


def build_net(cfg: VisionConfig) -> nn.Module:
    """Build the network of ``cfg``.

    :class:`PropagationNet` for ``refiner='propagate'``, else :class:`VisionIRPNet`.
    """
    return PropagationNet(cfg) if cfg.refiner == 'propagate' else VisionIRPNet(cfg)


def save_checkpoint(path: str, net: VisionIRPNet, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write weights (fp32 state dict) and config to ``path``; ``extra`` goes alongside."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {k: v.detach().to('cpu', torch.float32).contiguous()
             for k, v in net.state_dict().items()}
    torch.save({'config': net.cfg.to_dict(), 'state_dict': state, 'extra': extra or {}}, path)


def load_checkpoint(path: str, map_location: str = 'cpu') -> Tuple[VisionIRPNet, Dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights only, no pickled code)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    net = build_net(VisionConfig.from_dict(ckpt['config']))
    net.load_state_dict(ckpt['state_dict'])
    net.eval()
    return net, ckpt.get('extra', {})


def write_json(path: str, data: Dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    with open(path, 'w') as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write('\n')


__all__ = ['VisionConfig', 'VisionIRPNet', 'PropagationNet', 'build_net', 'offsets',
           'save_checkpoint', 'load_checkpoint', 'write_json']
