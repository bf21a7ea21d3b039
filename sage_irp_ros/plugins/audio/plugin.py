"""The audio plugin: an utterance enhanced by refining a time-frequency mask (no ROS).

:class:`AudioIRP` is the IRP (speech enhancement). Recognition (:mod:`.recognize`) and
voice-activity segmentation (:mod:`.vad`) run around it in the node; they are not refined.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch

from sage_irp_ros.accel import autocast
from sage_irp_ros.core.plugin import HALT_CONFIDENT, HaltConfig, IRPPlugin, IRPState, Schedule
from sage_irp_ros.plugins.audio.dsp import HOP, N_FFT, RATE
from sage_irp_ros.plugins.audio.model import MASK_FLOOR, MaskRefiner, log_power

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, 'enhancer.pt')
#: Longest utterance enhanced in one run (s); the segmenter cuts longer speech.
MAX_SECONDS = 30.0


@dataclass
class Enhanced:
    """The result of one run: the enhanced waveform (mono float32, 16 kHz) and its mask."""

    samples: np.ndarray
    mask_mean: float
    steps: int


class AudioIRP(IRPPlugin):
    """Speech enhancement by iterative refinement of a time-frequency mask.

    Invariants
    ----------
    State space:
        A mask ``M`` in ``[floor, 1]`` over the STFT (257 bins x frames, 32 ms Hann window,
        16 ms hop) of the 16 kHz utterance; the estimate is ``M * X`` (noisy phase). The first
        state is ``M = 1``: the input unchanged.
    Noise model:
        Additive noise (stationary or not: coloured, hum, babble, recorded) at any SNR; clean
        input is a fixed point (the network learned to leave it alone).
    Energy:
        The network's predicted distance of the current estimate to the clean speech, in dB:
        with the committed weights (``objective`` mel) the distance in the recogniser's 25 mel
        bands after removing each band's mean (RMS over bands, mean over frames; mel powers
        50 dB under the loudest band count as equal); with ``lsd`` weights the log-spectral
        distance over all bins. Lower is better; 0 is clean. It is a learned estimate of the error
        (trained by regression onto the true distance at every step), so it tracks the error:
        clean speech starts near 0 and halts at once (``confident`` under ``halt_db``),
        noisy speech starts high and falls as the mask refines.
    Contribution:
        Each step adds a bounded update (``0.5 * tanh``) to the mask from the noisy and current
        spectra over +-12 frames of context; the same weights at every step.
    """

    kind = 'audio'
    #: What the energy (the error head) predicts: 'mel' (distance in the recogniser's mel
    #: bands, mean removed) or 'lsd' (log-spectral distance), as the weights were trained.
    objective = 'lsd'
    ENERGY_NAMES = {'mel': 'predicted mel distance to clean speech',
                    'mel_irm': 'predicted mel distance to clean speech',
                    'lsd': 'predicted log-spectral distance to clean speech'}

    @property
    def energy_name(self) -> str:
        """What the energy measures, in words (for plots and docs)."""
        return self.ENERGY_NAMES.get(self.objective, self.objective)

    def __init__(self, model: MaskRefiner, version: str = '1', halt_db: float = 3.0,
                 floor: float = MASK_FLOOR, device: str = 'cpu', precision: str = 'fp32'):
        """Wrap a trained ``model`` on ``device`` at ``precision``.

        'fp16' (CUDA only) runs the network under autocast; the mask, the STFT and the energy
        stay float32.
        """
        autocast(torch.device(device), precision)  # refuses fp16 off CUDA
        self.precision = precision
        self.model = model.to(device).eval()
        self.version = version
        self.halt_db = float(halt_db)
        self.floor = float(floor)
        self.device = device
        self._window = torch.hann_window(N_FFT, device=device)

    def _amp(self):
        return autocast(torch.device(self.device), self.precision)

    @classmethod
    def from_checkpoint(cls, path: str = DEFAULT_WEIGHTS, device: str = 'cpu',
                        **kwargs: Any) -> 'AudioIRP':
        """Load the committed weights (``enhancer.pt`` with its ``enhancer.json``)."""
        meta_path = os.path.splitext(path)[0] + '.json'
        meta = {}
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        model = MaskRefiner(hidden=int(meta.get('hidden', 96)),
                            noise_aware=bool(meta.get('noise_aware', False)))
        model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
        version = meta.get('version') or (f"enhancer-{meta.get('objective', 'lsd')}-seed"
                                          f"{meta.get('seed', '?')}")
        plugin = cls(model, version=version, device=device, **kwargs)
        plugin.objective = meta.get('objective', 'lsd')
        return plugin

    def halt_config(self) -> HaltConfig:
        """Slope rule: stop when a step lowers the energy by under 2 % of E_0; at most 8."""
        return HaltConfig(eps=0.02, K=1, max_steps=8)

    # ------------------------------------------------------------------ contract

    def init_state(self, x0: Any, ctx: Optional[Mapping[str, Any]] = None) -> IRPState:
        """Mono float32 samples at 16 kHz -> STFT and the all-pass mask."""
        x = np.asarray(x0, dtype=np.float32).reshape(-1)
        if x.size < N_FFT:
            raise ValueError(f'utterance of {x.size} samples is too short (< {N_FFT})')
        if x.size > MAX_SECONDS * RATE:
            raise ValueError(f'utterance of {x.size / RATE:.1f} s is over {MAX_SECONDS} s')
        if not np.all(np.isfinite(x)):
            raise ValueError('utterance samples are not finite')
        with torch.inference_mode():
            wav = torch.from_numpy(x).to(self.device)
            X = torch.stft(wav, N_FFT, HOP, window=self._window, return_complex=True,
                           center=True)
            mag = X.abs().unsqueeze(0)
            logx = log_power(mag)
        enhance = bool((ctx or {}).get('enhance', True))
        return IRPState(payload=torch.ones_like(mag),
                        meta={'X': X, 'logx': logx, 'n': x.size, 'enhance': enhance})

    def _trunk(self, state: IRPState) -> torch.Tensor:
        h = state.meta.get('_h')
        if h is None:
            with torch.inference_mode(), self._amp():
                h = self.model.trunk(state.meta['logx'], state.payload)
            state.meta['_h'] = h
        return h

    def energy(self, state: IRPState) -> float:
        """Predicted distance (dB) of the current estimate to clean speech (``energy_name``)."""
        with torch.inference_mode():
            h = self._trunk(state)
            with self._amp():
                err = self.model.err(h)
            err = torch.nn.functional.softplus(err.float()).squeeze(1) * 5.0
        return float(err.mean())

    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """Add one bounded update to the mask."""
        with torch.inference_mode():
            h = self._trunk(state)
            with self._amp():
                delta = self.model.delta(h)
            nxt = (state.payload + self.model.step_size * torch.tanh(delta.float()))
            nxt = nxt.clamp(self.floor, 1.0)
        new = state.evolve(nxt)
        new.meta.pop('_h', None)
        return new

    def halt(self, state: IRPState, energies: list) -> Optional[str]:
        """``confident`` once the predicted error is under ``halt_db`` (or enhancement is off)."""
        if not state.meta.get('enhance', True):
            return HALT_CONFIDENT
        return HALT_CONFIDENT if energies and energies[-1] <= self.halt_db else None

    def result(self, state: IRPState) -> Enhanced:
        """Masked STFT back to a waveform of the input's length."""
        with torch.inference_mode():
            Y = state.payload[0] * state.meta['X']
            y = torch.istft(Y, N_FFT, HOP, window=self._window, center=True,
                            length=state.meta['n'])
        return Enhanced(samples=y.cpu().numpy().astype(np.float32),
                        mask_mean=float(state.payload.mean()), steps=state.step_idx)

    def energy_scale(self, e0: float) -> float:
        """Make the slope rule relative to E_0 (dB), at least 1 dB."""
        return max(abs(e0), 1.0)


def load_default(device: str = 'cpu', precision: str = 'fp32', **kwargs: Any) -> AudioIRP:
    """Load the plugin with the committed weights (fp16: CUDA only)."""
    if not os.path.exists(DEFAULT_WEIGHTS):
        raise FileNotFoundError(f'committed audio weights missing: {DEFAULT_WEIGHTS}')
    return AudioIRP.from_checkpoint(DEFAULT_WEIGHTS, device=device, precision=precision,
                                    **kwargs)
