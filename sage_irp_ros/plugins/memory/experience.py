"""Experiences: what a plugin node hands memory after a run, checked before it is stored.

An experience is a dict: the plugin's own part (``IRPPlugin.experience``: ``key``, ``latent``,
``summary``) plus what the node host adds (``plugin``, ``entity_id``, ``steps``, ``energy``,
``halt_reason``, ``stamp``, ``frame_id``). It reaches the memory node by reference through the
in-process mailbox (``sage_irp_ros.core.mailbox``) or as an ``Experience`` message
(``sage_irp_ros.ros.conversions.experience_from_msg`` builds the same dict). No ROS here.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from sage_irp_ros.plugins.memory.store import check_key, json_default, to_array


def summary_json(summary: Any) -> str:
    """Return ``summary`` as compact JSON text; ValueError when JSON cannot carry it (NaN, ...)."""
    try:
        return json.dumps({} if summary is None else summary, default=json_default,
                          allow_nan=False, separators=(',', ':'))
    except (TypeError, ValueError) as exc:
        raise ValueError(f'summary is not JSON-able: {exc}') from None


def check_latent(latent):
    """Return ``latent`` as a numpy array (None stays None); ValueError unless numeric, finite."""
    a = to_array(latent)
    if a is None:
        return None
    if a.dtype.kind not in 'biuf':
        raise ValueError(f'latent must be a numeric array, got dtype {a.dtype}')
    if a.dtype.kind == 'f':
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise ValueError(f'latent holds {bad} non-finite value(s)')
    return a


def check_experience(item: Mapping[str, Any]) -> Dict[str, Any]:
    """Return the ``ExperienceStore.add`` arguments of an experience; ValueError if unusable.

    Checks: ``plugin`` a non-empty string; ``key`` (:func:`check_key`); ``latent``
    (:func:`check_latent`; a tensor on a GPU is copied to the cpu here); ``summary`` JSON-able;
    ``steps`` an integer >= 0 or None; ``energy`` a number or None (not finite: stored as
    unknown); ``halt_reason`` a string or None; ``stamp`` a finite number or None (now).
    """
    if not isinstance(item, Mapping):
        raise ValueError(f'an experience is a dict, got {type(item).__name__}')
    plugin = item.get('plugin')
    if not isinstance(plugin, str) or not plugin:
        raise ValueError(f'experience without a plugin name (plugin={plugin!r})')
    key = check_key(item.get('key'))
    latent = check_latent(item.get('latent'))
    summary = item.get('summary')
    summary_json(summary)
    steps = item.get('steps')
    if steps is not None and (int(steps) != steps or steps < 0):
        raise ValueError(f'steps must be an integer >= 0, got {steps!r}')
    energy = item.get('energy')
    if energy is not None:
        energy = float(energy)
        energy = energy if math.isfinite(energy) else None
    halt = item.get('halt_reason')
    if halt is not None and not isinstance(halt, str):
        raise ValueError(f'halt_reason must be a string, got {halt!r}')
    stamp = item.get('stamp')
    if stamp is not None:
        stamp = float(stamp)
        if not math.isfinite(stamp) or stamp <= 0:
            stamp = None
    return {'plugin': plugin, 'key': key, 'latent': latent, 'summary': summary,
            'steps': None if steps is None else int(steps), 'energy': energy,
            'halt_reason': halt or None, 'stamp': stamp}


def run_experience(plugin: Any, result: Any, plugin_name: str) -> Optional[Dict[str, Any]]:
    """Return the experience of a finished run (``RefineResult``), or None when not remembered.

    The plugin's ``experience(state, output)`` plus the run's facts (``plugin``: the registry
    name, ``steps``, ``energy``, ``halt_reason``): what the node host hands memory (it adds
    ``entity_id``, ``stamp`` and ``frame_id``) and what a benchmark stores directly.
    ``ValueError`` when ``experience()`` returns something that is not None nor a dict with a
    ``key``.
    """
    exp = plugin.experience(result.state, result.output)
    if exp is None:
        return None
    if not isinstance(exp, Mapping) or 'key' not in exp:
        raise ValueError('experience() must return None or a dict with a key, got '
                         f'{type(exp).__name__}')
    trace = result.trace
    return dict(exp, plugin=plugin_name, steps=trace.steps, energy=trace.energy,
                halt_reason=trace.halt_reason)


def recall_threshold(plugin: Any) -> Optional[float]:
    """Return the similarity under which ``plugin`` ignores a hint (its ``recall_similarity``).

    The store does not read a record under it (``nearest(min_similarity=...)``): a frame of a
    place never seen costs the search, not the read of a latent it would not use.
    """
    v = getattr(plugin, 'recall_similarity', None)
    return None if v is None else float(v)


def recall_from(store: Any, plugin_name: str,
                min_similarity: Optional[float] = None) -> Callable[[Any], Any]:
    """Return ``ctx['recall']`` reading ``store`` directly: the nearest record or None.

    For in-process use (benchmarks, the demo, tests); the node host has its own, which also
    counts and survives a missing or damaged store. Hits are not counted (``touch=False``), as
    on the host's read-only store. ``min_similarity``: see :func:`recall_threshold`.
    """
    def recall(key):
        hits = store.nearest(plugin_name, key, k=1, touch=False, min_similarity=min_similarity)
        return hits[0] if hits else None
    return recall



class RecallGate:
    """When a plugin asks memory for a warm start: every input while that pays, fewer when not.

    A look-up costs every input something (the plugin's key, the store's search): a robot in
    places it has never seen would pay it for nothing. The gate asks on every input while the
    look-ups give warm starts; after ``patience`` inputs in a row without one it asks on every
    2nd input, then every 4th, ... at most every ``max_interval``-th; the first warm start
    brings it back to every input. A place seen before is therefore warm-started again at most
    ``max_interval - 1`` inputs after the robot comes back to it. One gate per plugin node
    (the node host) or per stream (the benchmark); not thread-safe (one worker asks).
    """

    def __init__(self, patience: int = 3, max_interval: int = 8):
        """Back off after ``patience`` misses in a row, to one look-up per ``max_interval``."""
        if patience < 1 or max_interval < 1:
            raise ValueError('patience and max_interval must be >= 1')
        self.patience = int(patience)
        self.max_interval = int(max_interval)
        self.misses = 0
        self.interval = 1
        self._wait = 0
        self.asked = 0
        self.skipped = 0

    def ask(self) -> bool:
        """Return True when this input should look memory up."""
        if self._wait > 0:
            self._wait -= 1
            self.skipped += 1
            return False
        self.asked += 1
        return True

    def observe(self, warm_start: Optional[Mapping[str, Any]]) -> None:
        """Tell the gate what a look-up gave (the run's ``state.meta['warm_start']``)."""
        if warm_start is not None and warm_start.get('used'):
            self.misses, self.interval = 0, 1
        else:
            self.misses += 1
            if self.misses >= self.patience:
                self.interval = min(self.interval * 2, self.max_interval)
        self._wait = self.interval - 1
