"""Which plugins the demo runs: the registry's entries with a demo whose inputs are in the bag.

Every plugin of :mod:`sage_irp_ros.registry` that is not a test fixture and has a
:class:`~sage_irp_ros.registry.DemoSpec` takes part when all of its ``replay_topics`` are in
the bag. Its node runs as ``python -m <module of spec.node>`` under the name ``spec.node_name``;
the demo replays its ``replay_topics``, records its ``record_topics`` (plus
:data:`COMMON_RECORD_TOPICS`) and scores it with ``spec.demo.score``.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

from sage_irp_ros import registry
from sage_irp_ros.registry import PluginSpec

#: Topics the demo records whatever the plugins: telemetry, grants and diagnostics.
COMMON_RECORD_TOPICS = ('/irp/telemetry', '/irp/telemetry_json', '/irp/budget', '/diagnostics')


def demo_specs() -> List[PluginSpec]:
    """Return every registered plugin that is not a fixture and has a demo (registry order)."""
    return [s for s in registry.specs(include_fixtures=False) if s.demo is not None]


def select_plugins(bag_topics: Iterable[str],
                   specs: Optional[Sequence[PluginSpec]] = None) -> List[PluginSpec]:
    """Return the demo plugins (``specs``, default :func:`demo_specs`) the bag can feed.

    A plugin is selected when every one of its ``demo.replay_topics`` is among ``bag_topics``.
    """
    topics = set(bag_topics)
    return [s for s in (demo_specs() if specs is None else specs)
            if s.demo is not None and s.demo.replay_topics
            and all(t in topics for t in s.demo.replay_topics)]


def node_module(spec: PluginSpec) -> str:
    """Return the module that runs the plugin's node (``python -m`` it)."""
    return spec.node.partition(':')[0]


def _unique(topics: Iterable[str]) -> List[str]:
    out: List[str] = []
    for t in topics:
        if t not in out:
            out.append(t)
    return out


def replay_topics(specs: Sequence[PluginSpec]) -> List[str]:
    """Return the bag topics to replay for ``specs`` (in order, each once)."""
    return _unique(t for s in specs for t in s.demo.replay_topics)


def record_topics(specs: Sequence[PluginSpec]) -> List[str]:
    """Return the topics to record: every plugin's outputs, then the common ones."""
    return _unique([*(t for s in specs for t in s.demo.record_topics), *COMMON_RECORD_TOPICS])
