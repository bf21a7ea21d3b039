"""The vision refiner's network: a local encoder, a weight-tied latent refiner, a light decoder.

Why this design makes refinement matter
---------------------------------------
Shape colour and texture carry no class information in our scenes (see ``scenes.py``); only the
outline does. The **encoder** is deliberately *local*: one full-resolution conv (the boundary
features the decoder reuses), two stride-2 convs and one 3x3 conv to a 16x16 latent, a
receptive field of about 19 pixels. Decoding its latent directly (step 0) finds *where* shapes
are but cannot tell a disk's interior from a rectangle's. The **refiner** is one residual block
applied again and again with the same weights (so steps are iterations of one map, not layers):
each step reads the current latent and the encoder's features (input injection, as in deep-
equilibrium and recurrent-convolution models) and adds a correction. Two 3x3 convs at stride 4
(the second dilated by 2) widen the receptive field by 24 pixels per step, so class evidence
from the outline spreads over the shape and noise is averaged over a growing neighbourhood.
Clean, isolated shapes are settled after one or two steps; noisy, low-contrast, occluded ones
keep changing for longer, which is what makes early halting save compute on easy frames while
hard frames use their budget.

The **decoder** is cheap on purpose (it runs after every step, because the energy and the
halting rule read the decoded class distribution): a 1x1 projection of the latent, bilinear
upsampling to the input size, concatenation with the full-resolution encoder features
(boundaries), a 1x1 conv with ReLU and a 1x1 classifier.

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


@dataclass
class VisionConfig:
    """Architecture, refinement and halting configuration (saved with the weights)."""

    classes: Tuple[str, ...] = ('background', 'disk', 'rectangle', 'triangle')
    input_size: int = 64
    skip_channels: int = 16
    latent_channels: int = 32
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


class VisionIRPNet(nn.Module):
    """Encoder, weight-tied refiner step and decoder (see the module docstring)."""

    def __init__(self, cfg: VisionConfig):
        """Build the modules of ``cfg``."""
        super().__init__()
        self.cfg = cfg
        s, c = cfg.skip_channels, cfg.latent_channels
        self.stem = nn.Conv2d(3, s, 3, padding=1)
        self.down1 = nn.Conv2d(s, c, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.enc3 = nn.Conv2d(c, c, 3, padding=1)
        self.enc_norm = nn.GroupNorm(4, c)
        self.to_z = nn.Conv2d(c, c, 1)
        self.ref1 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.ref_norm = nn.GroupNorm(4, c)
        self.ref2 = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.dec_proj = nn.Conv2d(c, s, 1)
        self.dec_mid = nn.Conv2d(2 * s, s, 1)
        self.dec_out = nn.Conv2d(s, cfg.num_classes, 1)
        nn.init.zeros_(self.ref2.weight)  # the step starts as the identity map
        nn.init.zeros_(self.ref2.bias)

    def encode(self, x: torch.Tensor):
        """``x``: (B, 3, S, S) in [0, 1]. Returns ``(z0, inject, skip)``."""
        x = x * 2.0 - 1.0
        skip = F.relu(self.stem(x))
        h = F.relu(self.down1(skip))
        e = F.relu(self.enc_norm(self.enc3(F.relu(self.down2(h)))))
        return self.to_z(e), e, skip

    def step(self, z: torch.Tensor, inject: torch.Tensor) -> torch.Tensor:
        """One refinement iteration: ``z + ref2(relu(norm(ref1([z, inject]))))`` (ref2 dilated)."""
        h = F.relu(self.ref_norm(self.ref1(torch.cat([z, inject], 1))))
        return z + self.ref2(h)

    def decode(self, z: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C, S, S) at the model input size."""
        up = F.interpolate(self.dec_proj(z), size=skip.shape[-2:], mode='bilinear',
                           align_corners=False)
        return self.dec_out(F.relu(self.dec_mid(torch.cat([up, skip], 1))))

    def forward(self, x: torch.Tensor, steps: int):
        """Logits after each of steps 0..``steps`` (a list of ``steps + 1`` tensors)."""
        z, inject, skip = self.encode(x)
        outs = [self.decode(z, skip)]
        for _ in range(steps):
            z = self.step(z, inject)
            outs.append(self.decode(z, skip))
        return outs


def save_checkpoint(path: str, net: VisionIRPNet, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write weights (fp32 state dict) and config to ``path``; ``extra`` goes alongside."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {k: v.detach().to('cpu', torch.float32).contiguous()
             for k, v in net.state_dict().items()}
    torch.save({'config': net.cfg.to_dict(), 'state_dict': state, 'extra': extra or {}}, path)


def load_checkpoint(path: str, map_location: str = 'cpu') -> Tuple[VisionIRPNet, Dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights only, no pickled code)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    net = VisionIRPNet(VisionConfig.from_dict(ckpt['config']))
    net.load_state_dict(ckpt['state_dict'])
    net.eval()
    return net, ckpt.get('extra', {})


def write_json(path: str, data: Dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    with open(path, 'w') as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write('\n')


__all__ = ['VisionConfig', 'VisionIRPNet', 'save_checkpoint', 'load_checkpoint', 'write_json']
