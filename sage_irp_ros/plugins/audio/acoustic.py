"""The recogniser's acoustic model, differentiable: a training objective that hears as it does.

pocketsphinx's bundled en-us model (the one :mod:`~sage_irp_ros.plugins.audio.recognize`
decodes with) is a phonetically-tied mixture model: 42 codebooks (one per base phone) of 128
diagonal Gaussians in each of three feature streams (13 cepstra, their deltas, their
delta-deltas), read here from its ``means`` and ``variances`` files. :class:`AcousticModel`
computes the same features as pocketsphinx's front end in torch, so gradients flow through it
(``feat.params``: pre-emphasis 0.97, 25.625 ms Hamming windows every 10 ms, 512-point FFT, 25
mel filters 130-6800 Hz, natural log, DCT-II, lifter 22, batch cepstral mean normalisation,
``1s_c_d_dd`` deltas over +-2 frames), and the posterior of every Gaussian of a stream given a
frame. What it leaves out or changes: pocketsphinx's own noise removal (the same for the clean
and the enhanced audio of a pair), the filters' rounding to FFT bins, the mixture weights of
the senones, and the decoder; variances are floored at :data:`VAR_FLOOR` (a few of the
model's Gaussians have a variance of 0 in some dimension and would read an exactly flat frame
with certainty), and mel powers at :data:`MEL_FLOOR` under the clean speech's loudest.

:meth:`AcousticModel.divergence` is, per item, the mean over frames of ``log(1 + KL)``, with
KL = ``KL(p(. | clean) || p(. | estimate))`` of the Gaussians' posteriors averaged over the
three streams: how differently the recogniser's Gaussians read an estimate and the clean
speech. ``train --objective mel_am`` adds it to the loss.
"""

from __future__ import annotations

import os
from typing import List, Sequence

import numpy as np
import torch

from sage_irp_ros.plugins.audio.dsp import mel_filterbank

WINDOW, SHIFT, N_FFT_AM, PRE_EMPHASIS, N_CEP, LIFTER = 410, 160, 512, 0.97, 13, 22
N_FILTERS = 25
#: Variance floor (the model's variances: median 88-140 per stream, a few exactly 0): with
#: pocketsphinx's own 1e-4, a frame of digital silence gave divergences of 1e5 nats.
VAR_FLOOR = 1.0
#: Mel powers 70 dB under the clean utterance's loudest band count as equal: digital silence in
#: a synthetic voice would otherwise give cepstra no microphone gives. (The mel distance's 50 dB,
#: ``train.MEL_FLOOR``, is about the median band power of a person's clip: under it, the
#: Gaussians read a person's pauses as a fricative instead of silence.)
MEL_FLOOR = 1e-7


def model_dir() -> str:
    """Return the folder of pocketsphinx's bundled en-us acoustic model."""
    import pocketsphinx
    return os.path.join(os.path.dirname(pocketsphinx.__file__), 'model', 'en-us', 'en-us')


def read_gaussians(path: str) -> List[np.ndarray]:
    """Read a sphinx ``means`` or ``variances`` file: per stream, (codebooks, densities, dims)."""
    with open(path, 'rb') as f:
        data = f.read()
    at = data.index(b'endhdr\n') + len(b'endhdr\n')
    for order in ('<', '>'):
        if int(np.frombuffer(data[at:at + 4], order + 'u4')[0]) == 0x11223344:
            break
    else:
        raise ValueError(f'{path}: no byte-order magic after the header')
    at += 4

    def ints(n):
        nonlocal at
        out = np.frombuffer(data[at:at + 4 * n], order + 'i4').astype(int)
        at += 4 * n
        return out
    n_mgau, n_feat, n_dens = ints(3)
    veclen = ints(n_feat)
    (n,) = ints(1)
    if n != n_mgau * n_dens * veclen.sum():
        raise ValueError(f'{path}: {n} values for {n_mgau} x {n_dens} x {veclen.sum()}')
    flat = np.frombuffer(data[at:at + 4 * n], order + 'f4').astype(np.float32)
    per_mgau = flat.reshape(n_mgau, n_dens * veclen.sum())
    out, off = [], 0
    for dims in veclen:  # each codebook holds its streams one after the other
        out.append(per_mgau[:, off:off + n_dens * dims].reshape(n_mgau, n_dens, dims))
        off += n_dens * dims
    return out


class AcousticModel(torch.nn.Module):
    """pocketsphinx en-us's front end and Gaussians as a torch module (see the module doc)."""

    def __init__(self, folder: str | None = None):
        super().__init__()
        folder = folder or model_dir()
        means = read_gaussians(os.path.join(folder, 'means'))
        variances = read_gaussians(os.path.join(folder, 'variances'))
        self.n_streams = len(means)
        for s, (m, v) in enumerate(zip(means, variances, strict=True)):
            m = torch.from_numpy(m.reshape(-1, m.shape[-1]).copy())
            iv = 1.0 / torch.from_numpy(np.maximum(v, VAR_FLOOR).reshape(-1, v.shape[-1]))
            const = -0.5 * ((m.square() * iv).sum(1) - torch.log(iv).sum(1)
                            + m.shape[1] * np.log(2 * np.pi))
            self.register_buffer(f'inv_var{s}', iv)
            self.register_buffer(f'mean_inv_var{s}', m * iv)
            self.register_buffer(f'const{s}', const)
        fb = mel_filterbank(N_FILTERS, n_bins=N_FFT_AM // 2 + 1)
        self.register_buffer('filters', torch.from_numpy(fb / fb.sum(1, keepdims=True)))
        i = torch.arange(N_CEP, dtype=torch.float64)[:, None]
        dct = torch.cos(np.pi / N_FILTERS * i * (torch.arange(N_FILTERS) + 0.5))
        dct = dct * np.sqrt(2.0 / N_FILTERS)
        dct[0] = np.sqrt(1.0 / N_FILTERS)
        lifter = 1 + LIFTER / 2 * torch.sin(i * np.pi / LIFTER)
        self.register_buffer('dct', (dct * lifter).float())
        self.register_buffer('window', torch.hamming_window(WINDOW, periodic=False))

    def mel_power(self, x: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, N) in [-1, 1] -> pocketsphinx's mel powers (B, T, 25)."""
        x = x * 32768.0  # pocketsphinx reads int16
        x = torch.cat([x[:, :1], x[:, 1:] - PRE_EMPHASIS * x[:, :-1]], 1)
        frames = x.unfold(1, WINDOW, SHIFT) * self.window
        return torch.fft.rfft(frames, N_FFT_AM).abs().square() @ self.filters.T

    @staticmethod
    def n_frames(n_samples: int) -> int:
        """Return how many frames :meth:`mel_power` makes of ``n_samples`` samples."""
        return (n_samples - WINDOW) // SHIFT + 1

    def floor_of(self, clean: torch.Tensor) -> torch.Tensor:
        """Return the mel power floor (B, 1, 1) of clean speech (:data:`MEL_FLOOR`)."""
        return self.mel_power(clean).amax(dim=(1, 2), keepdim=True) * MEL_FLOOR + 1e-4

    def features(self, x: torch.Tensor, floor) -> List[torch.Tensor]:
        """Waveforms (B, N) -> the streams (B, T, 13): cepstra, deltas, delta-deltas.

        ``floor``: added to the mel powers before the log (:meth:`floor_of` the clean speech).
        """
        cep = torch.log(self.mel_power(x) + floor) @ self.dct.T
        cep = cep - cep.mean(1, keepdim=True)
        n = cep.shape[1]
        pad = torch.cat([cep[:, :1].expand(-1, 3, -1), cep, cep[:, -1:].expand(-1, 3, -1)], 1)

        def at(k):
            return pad[:, 3 + k:3 + k + n]
        return [cep, at(2) - at(-2), (at(3) - at(-1)) - (at(1) - at(-3))]

    def log_posteriors(self, x: torch.Tensor, floor, frames=None) -> List[torch.Tensor]:
        """Per stream, log p(Gaussian | frame) over all its codebooks' Gaussians (B, T, G).

        ``frames``: only these frames (an index; the Gaussians are most of the cost).
        """
        out = []
        for s, f in enumerate(self.features(x, floor)):
            if frames is not None:
                f = f[:, frames]
            ll = (getattr(self, f'const{s}') - 0.5 * (f.square() @ getattr(self, f'inv_var{s}').T)
                  + f @ getattr(self, f'mean_inv_var{s}').T)
            out.append(torch.log_softmax(ll, -1))
        return out

    def divergence(self, estimate: torch.Tensor, clean: Sequence[torch.Tensor], floor,
                   frames=None) -> torch.Tensor:
        """Per item (B,), the mean over frames of ``log(1 + KL)``, KL of the posteriors.

        KL(clean || estimate) of a frame's Gaussians' posteriors, nats, mean over the streams.
        The posteriors are sharp, and a frame's KL ranges over four decades (a median of 2 nats,
        a 99th percentile of 200-450 on training mixtures): ``log(1 + KL)`` keeps a few frames
        the enhancement cannot mend from deciding the loss.
        ``clean``: :meth:`log_posteriors` of the clean speech with the same ``floor`` and
        ``frames`` (computed once per batch).
        """
        kl = 0.0
        for pe, pc in zip(self.log_posteriors(estimate, floor, frames), clean, strict=True):
            kl = kl + (pc.exp() * (pc - pe)).sum(-1)
        return torch.log1p(kl / self.n_streams).mean(-1)
