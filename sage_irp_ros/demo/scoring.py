"""Scoring of a demo run: read the recorded bag and the truth, summarise per plugin, golden.

Each plugin's quality comes from its own ``score(recorded, truth)`` hook, named by its registry
entry (``DemoSpec.score``); this module adds what every plugin shares: inputs, answers, drops,
steps, halt reasons, ATP and trust from the telemetry, the node counters and the orchestrator.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from typing import Dict, Optional, Sequence

import numpy as np

from sage_irp_ros import registry
from sage_irp_ros.registry import PluginSpec

#: The parts of a plugin's summary the regression test compares.
GOLDEN_KEYS = ('inputs', 'answered', 'mean_steps', 'quality')


def read_bag(path: str) -> Dict[str, list]:
    """Return ``{topic: [(receive time ns, message), ...]}`` of a recorded bag."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from sage_irp_ros.tools.bagio import message_class
    out = defaultdict(list)
    with Reader(path) as reader:
        classes = {c.id: message_class(c.msgtype) for c in reader.connections}
        for conn, t, data in reader.messages():
            out[conn.topic].append((t, deserialize_message(bytes(data), classes[conn.id])))
    return out


def load_truth(bag: str) -> dict:
    """Load the ground truth written beside the bag: ``<bag>_truth.json`` and ``.npz``.

    The npz (optional) holds per-stamp arrays: ``stamps_ns`` and arrays with one row per stamp;
    each such array ``key`` becomes ``truth[key] = {stamp_ns: row}`` (an array without
    ``stamps_ns`` is kept whole).
    """
    base = os.path.normpath(bag)
    with open(base + '_truth.json', encoding='utf-8') as f:
        truth = json.load(f)
    if os.path.exists(base + '_truth.npz'):
        npz = np.load(base + '_truth.npz')
        stamps = npz['stamps_ns'].tolist() if 'stamps_ns' in npz.files else None
        for key in npz.files:
            if key != 'stamps_ns':
                truth[key] = (npz[key] if stamps is None
                              else dict(zip(stamps, npz[key], strict=True)))
    return truth


def score(plugins: Sequence[PluginSpec], recorded: Dict[str, list], truth: dict) -> dict:
    """Return each plugin's ``{'answered', 'quality'}`` from its registry ``score`` hook."""
    return {s.name: registry.load(s.demo.score)(recorded, truth) for s in plugins}


def summarize(plugins: Sequence[PluginSpec], recorded, truth, sent, counters, max_steps, trust,
              grants) -> dict:
    """Build the per-plugin summary from the recorded bag, the node counters and the truth.

    ``sent``, ``counters`` (the node's ``/diagnostics`` host counters), ``max_steps`` and
    ``trust`` map a plugin's name to its value; ``grants`` maps a node (``/name``) to
    ``{cycle: ATP}``. Telemetry records are a plugin's when their entity is its node.
    """
    records = [json.loads(m.data) for _, m in recorded.get('/irp/telemetry_json', [])]
    scores = score(plugins, recorded, truth)
    out = {}
    for spec in plugins:
        name = spec.name
        recs = [r for r in records if r.get('entity_id', '').endswith(f'/{spec.node_name}')]
        steps = [r['steps'] for r in recs]
        c = counters.get(name) or {}
        cap = max_steps.get(name)
        granted = [r['budget']['ATP_granted'] for r in recs]
        received = int(c.get('received', -1))
        dropped = int(c.get('dropped_stale', 0))
        bad = int(c.get('bad_input', 0))
        answered = scores[name]['answered']
        n_in = sent.get(name, 0)
        if spec.demo.stream:  # every chunk is kept: an input is accounted for when received
            unaccounted = max(n_in - max(received, 0), 0)
        else:
            unaccounted = n_in - answered - dropped - bad
        out[name] = {
            'node': f'/{spec.node_name}',
            'inputs': n_in,
            'received': received,
            'answered': answered,
            'dropped_stale': dropped,
            'bad_input': bad,
            'lost_in_transport': max(0, n_in - received) if received >= 0 else None,
            'unaccounted': unaccounted,
            'runs': len(recs),
            'mean_steps': round(float(np.mean(steps)), 4) if steps else None,
            'max_steps': cap,
            'compute_saved': (round(1.0 - sum(steps) / (len(steps) * cap), 4)
                              if steps and cap else None),
            'halt_reasons': dict(Counter(r['halt_reason'] for r in recs).most_common()),
            'quality': scores[name]['quality'],
            'atp_granted_by_orchestrator': round(
                sum(grants.get(f'/{spec.node_name}', {}).values()), 3),
            'runs_on_grant': sum(g is not None for g in granted),
            'atp_granted_to_runs': round(sum(g for g in granted if g is not None), 3),
            'atp_spent': round(sum(r['budget']['ATP_spent'] for r in recs), 3),
            'mean_time_ms': (round(float(np.mean([r['budget']['time_ms'] for r in recs])), 3)
                             if recs else None),
            'mean_monotonicity': (round(float(np.mean(
                [r['trust']['monotonicity_ratio'] for r in recs])), 4) if recs else None),
            'trust': None if trust.get(name) is None else round(trust[name], 4),
        }
    return out


def format_table(plugins: dict) -> str:
    """Return the summary table (``summary['plugins']``) as text.

    ``received`` is the node's own count (``-`` when it did not report one): an input sent but
    not received was lost in transport; one received but neither answered nor dropped was lost
    in the node.
    """
    cols = ('plugin', 'inputs', 'received', 'answered', 'dropped', 'mean steps', 'max', 'saved',
            'halt reasons', 'quality', 'ATP granted', 'ATP spent', 'trust')
    rows = []
    for name, s in plugins.items():
        q = s['quality']
        rows.append((
            name, str(s['inputs']), '-' if s['received'] < 0 else str(s['received']),
            str(s['answered']), str(s['dropped_stale']),
            '-' if s['mean_steps'] is None else f'{s["mean_steps"]:.2f}', str(s['max_steps']),
            '-' if s['compute_saved'] is None else f'{100 * s["compute_saved"]:.0f} %',
            ', '.join(f'{h} {n}' for h, n in s['halt_reasons'].items()) or '-',
            f'{q["metric"]} {q["value"]:.3f} (n={q["n"]})',
            f'{s["atp_granted_by_orchestrator"]:.0f}', f'{s["atp_spent"]:.0f}',
            '-' if s['trust'] is None else f'{s["trust"]:.3f}'))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = '+'.join('-' * (w + 2) for w in widths)
    fmt = ' | '.join(f'{{:<{w}}}' for w in widths)
    return '\n'.join([fmt.format(*cols), line] + [fmt.format(*r) for r in rows])


class JsonlSinkCounter:
    """A :class:`~sage_irp_ros.core.telemetry.JsonlSink` on a fresh file, rejects reported."""

    def __init__(self, path: str):
        from sage_irp_ros.core.telemetry import JsonlSink
        if os.path.exists(path):
            os.remove(path)
        self._sink = JsonlSink(path, on_reject=lambda reason, rec: print(
            f'telemetry record rejected: {reason}', file=sys.stderr))

    @property
    def written(self) -> int:
        """Records written."""
        return self._sink.written

    @property
    def rejected(self) -> int:
        """Records rejected (not schema-valid)."""
        return self._sink.rejected

    def write(self, record) -> bool:
        """Validate and append one record."""
        return self._sink.write(record)

    def close(self) -> None:
        """Close the file."""
        self._sink.close()


def golden_of(summary: dict) -> dict:
    """Return the parts of a summary the regression test compares."""
    return {'bag': summary['bag'], 'rate': summary['rate'], 'mode': summary['mode'],
            'plugins': {
        name: {'inputs': s['inputs'], 'answered': s['answered'],
               'mean_steps': s['mean_steps'],
               'quality': {'metric': s['quality']['metric'], 'value': s['quality']['value']}}
        for name, s in summary['plugins'].items()}}


def write_golden(summary: dict, path: str) -> None:
    """Write the golden summary of the regression test."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(golden_of(summary), f, indent=1)
        f.write('\n')


def truth_of(spec: PluginSpec, truth: dict):
    """Return a plugin's part of the truth: ``truth[demo.truth_key]`` (a dotted key: nested)."""
    value = truth
    for part in spec.demo.truth_key.split('.'):
        value = value[part]
    return value


def expected_inputs(plugins: Sequence[PluginSpec], truth: dict) -> Dict[str, int]:
    """Return each plugin's number of inputs in the truth (``len`` of :func:`truth_of`).

    For a stream plugin that is the number of segments (utterances) it should answer.
    """
    return {s.name: len(truth_of(s, truth)) for s in plugins}


def sent_inputs(plugins: Sequence[PluginSpec], messages: Dict[str, int],
                default: Optional[int] = 0) -> Dict[str, int]:
    """Return each plugin's inputs: the messages replayed on its ``demo.input_topics``."""
    return {s.name: sum(messages.get(t, default) for t in s.demo.input_topics)
            for s in plugins}
