"""Test fixture plugins: tiny, real refiners used to test the loop, node host and orchestrator.

They are not robot features. :class:`SmoothingFixture` denoises a 1-D signal by gradient descent
on a quadratic energy, so its energy falls monotonically and its convergence is known in closed
form. :class:`NoisyFixture` is the same refiner made to misbehave (noisy, non-monotone energy),
for testing that trust falls for a plugin that does not deliver.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Mapping, Optional

import numpy as np

from sage_irp_ros.core.plugin import IRPPlugin, IRPState, Schedule


class SmoothingFixture(IRPPlugin):
    """Test fixture: Tikhonov smoothing of a 1-D signal by gradient descent.

    Four invariants:

    - state space: ``x``, a float64 vector the length of the input ``y``;
    - noise model: ``y`` is a smooth signal plus white noise; the state starts at ``y``;
    - energy: ``E(x) = 0.5 * ||x - y||^2 + 0.5 * lam * ||D x||^2`` (D: first differences),
      in squared input units, lower is better, minimum at the smoothed signal;
    - contribution: a denoised signal; it exists to exercise the machinery with a refiner whose
      every property is known (monotone descent at step size ``lr < 2 / (1 + 4 lam)``).
    """

    kind = 'custom'
    version = 'fixture-smoothing-1'

    def __init__(self, lam: float = 4.0, lr: float = 0.1, max_len: int = 1 << 16):
        """Configure the smoothing weight ``lam``, step size ``lr`` and the longest input."""
        if not lam >= 0 or not 0 < lr:
            raise ValueError('lam must be >= 0 and lr > 0')
        self.lam = float(lam)
        self.lr = float(lr)
        self.max_len = int(max_len)

    def init_state(self, x0: Any, ctx: Optional[Mapping[str, Any]] = None) -> IRPState:
        """Start from the noisy signal itself."""
        y = np.asarray(x0, dtype=np.float64).reshape(-1)
        if y.size == 0:
            raise ValueError('empty input signal')
        if y.size > self.max_len:
            raise ValueError(f'input of {y.size} samples exceeds max_len={self.max_len}')
        return IRPState(payload=y.copy(), meta={'y': y})

    def _grad(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        g = x - y
        d = np.diff(x)
        g[:-1] -= self.lam * d
        g[1:] += self.lam * d
        return g

    def energy(self, state: IRPState) -> float:
        """Quadratic data + smoothness energy (squared input units)."""
        x, y = state.payload, state.meta['y']
        return float(0.5 * np.sum((x - y) ** 2) + 0.5 * self.lam * np.sum(np.diff(x) ** 2))

    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """One gradient step."""
        x = state.payload
        return state.evolve(x - self.lr * self._grad(x, state.meta['y']))

    def result(self, state: IRPState) -> np.ndarray:
        """Return the smoothed signal as float32."""
        return state.payload.astype(np.float32)


class NoisyFixture(SmoothingFixture):
    """Test fixture that misbehaves: each step adds noise, so its energy is noisy and non-monotone.

    The noise is drawn from a generator seeded by the input's bytes, so a run is reproducible and
    runs of one instance stay independent. Same invariants as :class:`SmoothingFixture`, except
    that its steps do not reliably lower the energy: its contribution is mostly noise.
    """

    version = 'fixture-noisy-1'

    def __init__(self, noise: float = 0.5, **kwargs: Any):
        """Configure the noise amplitude (in input units) on top of the smoothing step."""
        super().__init__(**kwargs)
        self.noise = float(noise)

    def init_state(self, x0: Any, ctx: Optional[Mapping[str, Any]] = None) -> IRPState:
        """Start from the signal; seed a per-run generator from its bytes."""
        state = super().init_state(x0, ctx)
        seed = zlib.crc32(state.meta['y'].tobytes())
        state.meta['rng'] = np.random.default_rng(seed)
        return state

    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """Take a gradient step, then add noise."""
        nxt = super().step(state, schedule)
        noise = self.noise * state.meta['rng'].standard_normal(nxt.payload.shape)
        return dataclasses.replace(nxt, payload=nxt.payload + noise)
