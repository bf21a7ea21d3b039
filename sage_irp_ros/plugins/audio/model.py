"""The enhancer network: one refinement step of a time-frequency mask, and its energy head.

Input of a step, per STFT frame: the noisy log-power spectrum, the log-power of the current
estimate (mask x noisy) and the mask itself, each over the 257 bins. A pointwise layer squeezes
them to ``hidden`` channels, two dilated temporal convolutions (non-causal, +-4 and +-8 frames)
see the context, and two heads read the result:

- ``delta``: the mask's update (tanh, scaled), added to the mask and clipped to [floor, 1];
- ``err``: the predicted error of the current estimate per frame, dB (>= 0): the distance the
  weights were trained on (``train.py --objective``: mel bands, or log-spectral).

The same weights run at every step (a fixed-point refiner), so a step's work depends on how far
the estimate is from clean speech, which the error head measures.
"""

from __future__ import annotations

import torch
from torch import nn

from sage_irp_ros.plugins.audio.dsp import N_BINS

#: The lowest mask value (about -26 dB): the plugin's default floor, and the ideal mask's.
MASK_FLOOR = 0.05
#: The per-bin quantile of the log-power over frames a noise-aware model reads as noise floor.
NOISE_QUANTILE = 0.1


def ideal_ratio_mask(speech_mag: torch.Tensor, noise_mag: torch.Tensor,
                     floor: float = MASK_FLOOR) -> torch.Tensor:
    """Return the ideal ratio mask ``sqrt(|S|^2 / (|S|^2 + |N|^2))`` per bin, in [floor, 1].

    Computed from the true speech and noise magnitudes, so it is no method: the training target
    of ``train.py --objective mel_irm``, and the benchmark's ceiling of any mask
    (``bench/audio_bench.py``, ``wer_oracle_mask_*``).
    """
    ps, pn = speech_mag.square(), noise_mag.square()
    return (ps / (ps + pn).clamp_min(1e-20)).sqrt().clamp(floor, 1.0)


class MaskRefiner(nn.Module):
    """One step of mask refinement and the error (energy) of the current estimate."""

    def __init__(self, hidden: int = 96, n_bins: int = N_BINS, step_size: float = 0.5,
                 noise_aware: bool = False):
        super().__init__()
        self.hidden = hidden
        self.step_size = step_size
        self.noise_aware = bool(noise_aware)
        self.inp = nn.Conv1d((4 if self.noise_aware else 3) * n_bins, hidden, 1)
        self.c1 = nn.Conv1d(hidden, hidden, 5, padding=2)
        self.c2 = nn.Conv1d(hidden, hidden, 5, padding=4, dilation=2)
        self.delta = nn.Conv1d(hidden, n_bins, 1)
        self.err = nn.Conv1d(hidden, 1, 1)
        self.act = nn.GELU()

    def features(self, logx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stack noisy log-power, estimate log-power and mask: (B, 3F, T).

        ``noise_aware``: a fourth block, the noisy log-power over the utterance's noise floor
        (per bin, the ``NOISE_QUANTILE`` quantile of the log-power over the frames: the level
        the bin rarely goes under, which speech pauses and stationary noise set), (B, 4F, T).
        The other inputs see +-12 frames; this one says what the whole utterance's noise is.
        """
        est = logx + 0.5 * torch.log10(mask.clamp_min(1e-3))  # log-power units: 1 = 40 dB
        parts = [logx, est, mask * 2 - 1]
        if self.noise_aware:
            parts.append(logx - torch.quantile(logx, NOISE_QUANTILE, dim=2, keepdim=True))
        return torch.cat(parts, dim=1)

    def trunk(self, logx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Shared features of both heads: (B, hidden, T)."""
        h = self.act(self.inp(self.features(logx, mask)))
        h = h + self.act(self.c1(h))
        return h + self.act(self.c2(h))

    def forward(self, logx: torch.Tensor, mask: torch.Tensor, floor: float = 0.0):
        """Return ``(next_mask, err_db of the current mask per frame)``."""
        h = self.trunk(logx, mask)
        err = nn.functional.softplus(self.err(h)).squeeze(1) * 5.0
        nxt = (mask + self.step_size * torch.tanh(self.delta(h))).clamp(floor, 1.0)
        return nxt, err

    def error(self, logx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return the predicted error (dB) per frame of the current mask only."""
        h = self.trunk(logx, mask)
        return nn.functional.softplus(self.err(h)).squeeze(1) * 5.0


def log_power(spec_mag: torch.Tensor) -> torch.Tensor:
    """Return the normalised log-power of an STFT magnitude (B, F, T).

    1 at the loudest bin of the utterance, 0 at 40 dB below it, floored at 80 dB below (-1).
    """
    p = spec_mag.square()
    ref = p.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return torch.log10(p / ref + 1e-8) / 4.0 + 1.0
