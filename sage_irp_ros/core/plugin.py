"""The plugin contract of IRP_SPEC section 2: what every refiner implements.

A plugin holds configuration and models only. Everything that belongs to one run lives in
an :class:`IRPState` (the payload) and a :class:`~sage_irp_ros.core.loop.Trace` (the energy
history), so one plugin instance can refine several inputs at once. The loop that drives a
plugin is written once, in :mod:`sage_irp_ros.core.loop` (``refine(plugin, x0, ...)``); a plugin
never re-implements it, as a diffusers scheduler never re-implements the pipeline. This module
imports no other module of the core (the loop imports it, not the other way round).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

# Halting reasons (IRP_SPEC section 3). The values are the wire strings of telemetry.
HALT_BUDGET = 'budget'
HALT_TIMEOUT = 'timeout'
HALT_MANUAL = 'manual'
HALT_FEASIBLE = 'feasible'
HALT_CONFIDENT = 'confident'
HALT_STABLE = 'stable'
HALT_SLOPE = 'slope<eps'
HALT_MAX_STEPS = 'max_steps'
HALT_ERROR = 'error'

HALT_REASONS = (
    HALT_BUDGET, HALT_TIMEOUT, HALT_MANUAL, HALT_FEASIBLE, HALT_CONFIDENT, HALT_STABLE,
    HALT_SLOPE, HALT_MAX_STEPS, HALT_ERROR,
)
# Reasons a plugin's own halt() may return.
PLUGIN_HALT_REASONS = (HALT_FEASIBLE, HALT_CONFIDENT, HALT_STABLE)

PLUGIN_KINDS = ('vision', 'language', 'audio', 'control', 'memory', 'custom')


@dataclass(frozen=True)
class HaltConfig:
    """The halting parameters of a plugin (ROS parameters of its node).

    Attributes
    ----------
    eps:
        Slope threshold, relative to the plugin's energy scale: halt ``slope<eps`` when over the
        last ``K`` steps ``(E[t-K] - E[t]) / K < eps * plugin.energy_scale(E_0)``.
    K:
        Window of the slope rule, in steps (>= 1).
    max_steps:
        Hard cap of steps (>= 0).

    """

    eps: float = 1e-3
    K: int = 2
    max_steps: int = 50

    def __post_init__(self):
        """Reject values that make the rules meaningless."""
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f'eps must be a finite number >= 0, got {self.eps!r}')
        if int(self.K) != self.K or self.K < 1:
            raise ValueError(f'K must be an integer >= 1, got {self.K!r}')
        if int(self.max_steps) != self.max_steps or self.max_steps < 0:
            raise ValueError(f'max_steps must be an integer >= 0, got {self.max_steps!r}')


@dataclass
class IRPState:
    """The refinement state of one run.

    Attributes
    ----------
    payload:
        What the plugin refines (latent tensor, token ids, trajectory, memory set).
    step_idx:
        Number of steps applied to reach this state (0 for the initial state).
    meta:
        Plugin data that belongs to this run (the input size, cached logits, a per-run RNG).

    The energy history and timestamps of the run live in the loop's ``Trace``.

    """

    payload: Any
    step_idx: int = 0
    meta: dict = field(default_factory=dict)

    def evolve(self, payload: Any, **meta: Any) -> 'IRPState':
        """Return the next state: a new payload, step index + 1, meta updated with ``meta``."""
        new_meta = dict(self.meta)
        new_meta.update(meta)
        return dataclasses.replace(self, payload=payload, step_idx=self.step_idx + 1,
                                   meta=new_meta)


@dataclass(frozen=True)
class Schedule:
    """What a step may know about where it stands in the run.

    Attributes
    ----------
    step_idx:
        Index of the step about to run (0-based).
    max_steps:
        The hard cap of steps of this run.
    steps_left:
        Steps the budget and ``max_steps`` still allow, this one included (>= 1).
    noise_level:
        A schedule value in [0, 1]: 1 at the first step, falling linearly to 0 at ``max_steps``.
        Plugins with a noise or mask schedule use it; others ignore it.

    """

    step_idx: int
    max_steps: int
    steps_left: int
    noise_level: float


class IRPPlugin(abc.ABC):
    """Base class of every refiner.

    Subclasses set ``kind`` (one of ``PLUGIN_KINDS``) and implement ``init_state``, ``energy``,
    ``step`` and ``result``; ``project`` and ``halt`` have defaults. Every plugin documents its
    four invariants (state space, noise model, energy with units and sign, contribution) in its
    class docstring.
    """

    kind: str = 'custom'
    #: Version string of the model / algorithm, reported in telemetry (``run.model_version``).
    version: str = '0'

    @abc.abstractmethod
    def init_state(self, x0: Any, ctx: Optional[Mapping[str, Any]] = None) -> IRPState:
        """Encode the input into the initial refinement state."""

    @abc.abstractmethod
    def energy(self, state: IRPState) -> float:
        """Return the energy of ``state``: a finite float, lower is better."""

    @abc.abstractmethod
    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """Apply one refinement iteration and return the next state."""

    def step_batch(self, states: list, schedules: list) -> list:
        """Step several runs at once (the batched loop, ``refine_batch``); one by one here.

        A plugin whose step is a network overrides this to run the states that can share a
        batch (same shapes) in one pass; the result must equal stepping each alone.
        """
        return [self.step(s, sch) for s, sch in zip(states, schedules, strict=True)]

    def energies(self, states: list) -> list:
        """Return the energy of each state; one by one here (a plugin may sync once for all)."""
        return [self.energy(s) for s in states]

    def halt_config(self) -> HaltConfig:
        """Return the plugin's halting defaults: the one source of them (nodes declare theirs).

        The default: the slope rule with ``eps`` 1e-3 over ``K`` 2, at most 50 steps.
        """
        return HaltConfig()

    def project(self, state: IRPState) -> IRPState:
        """Enforce the state's constraints; identity by default."""
        return state

    def halt(self, state: IRPState, energies: list) -> Optional[str]:
        """Return a plugin-specific halting reason (``PLUGIN_HALT_REASONS``) or None.

        Called before every step with the current state and the energies so far
        (``energies[0]`` is the initial state's energy).
        """
        return None

    @abc.abstractmethod
    def result(self, state: IRPState) -> Any:
        """Decode ``state`` into the task output."""

    def experience(self, state: IRPState, output: Any) -> Optional[dict]:
        """Return what memory should remember of a finished run, or None (the default).

        Called by the node host after a run (not after one that ended in ``error``) when its
        ``memory`` parameter is on. A plugin that is remembered returns a dict:

        - ``'key'``: 1-D float32 numpy array, the embedding memory searches by (finite, not
          all zeros; runs of similar inputs should have similar keys, by cosine);
        - ``'latent'``: numpy array or torch tensor (any device), the run's final latent, what
          a later warm start starts from (None: nothing to start from);
        - ``'summary'``: a JSON-able dict describing the output.

        Warm starts: the ``ctx`` of a run may carry ``'recall'``, a callable ``recall(key)``
        returning the memory store's nearest record of this plugin (a ``MemoryRecord``: ``source``,
        ``id``, ``similarity``, ``latent``, ``summary``, ``steps``, ...) or None. A plugin may
        call it in ``init_state``; one that did sets ``state.meta['warm_start'] = {'used':
        bool, 'similarity': float, 'source': 'prototype' | 'experience', 'id': int}``, and the
        host copies it into the run's telemetry metadata.
        """
        return None

    def energy_scale(self, e0: float) -> float:
        """Return the scale that makes the slope threshold ``eps`` relative.

        The default is ``max(|E_0|, 1e-12)``: ``eps`` is then a fraction of the initial energy per
        step. Plugins whose energy has a natural unit (nats per token, say) override this.
        """
        return max(abs(e0), 1e-12)


def recalled_hint(record: Any, min_similarity: float) -> tuple:
    """Begin a plugin's warm start: ``(hint latent or None, the warm_start telemetry dict)``.

    ``record`` is what ``ctx['recall'](key)`` returned (memory's nearest record, or None). The
    dict has ``used`` False, and ``similarity``, ``source``, ``id``, ``members`` (the runs the
    record stands for: 1 for a raw experience) (and ``energy``, the remembered run's final
    energy) when there is a record; ``why`` says why no hint is given:
    ``no memory``, ``not similar enough`` (under ``min_similarity``) or ``no latent``. The
    plugin then checks the hint against its own input, sets ``used`` and keeps the dict as
    ``state.meta['warm_start']`` (``docs/MEMORY.md``).
    """
    info = {'used': False}
    if record is None:
        info['why'] = 'no memory'
        return None, info
    info.update(similarity=float(record.similarity or 0.0), source=str(record.source),
                id=int(record.id), members=int(getattr(record, 'members', 1) or 1))
    if getattr(record, 'energy', None) is not None:
        info['energy'] = float(record.energy)
    if record.similarity is None or record.similarity < min_similarity:
        info['why'] = 'not similar enough'
        return None, info
    if record.latent is None:
        info['why'] = 'no latent'
        return None, info
    return record.latent, info
