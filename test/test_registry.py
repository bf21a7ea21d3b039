"""The registry: a throwaway plugin added through it alone is launched, granted and scored."""

import json
import os
import sys
import textwrap

import numpy as np
import pytest
import yaml
from conftest import wait_for
from std_msgs.msg import Float32MultiArray, String

from sage_irp_ros import launch_plan, registry
from sage_irp_ros.msg import BudgetGrant

PLUGIN = '''
"""A throwaway plugin, outside the package: halves a number until it is near zero."""
from sage_irp_ros.core import HaltConfig, IRPPlugin, IRPState
from sage_irp_ros.registry import DemoSpec, Port, PluginSpec


class Halver(IRPPlugin):
    """State: a float; energy: its square; step: halve it."""

    kind = 'custom'
    version = 'halver-1'

    def init_state(self, x0, ctx=None):
        return IRPState(payload=float(x0[0]))

    def energy(self, state):
        return state.payload ** 2

    def step(self, state, schedule):
        return state.evolve(state.payload / 2)

    def result(self, state):
        return state.payload

    def halt_config(self):
        return HaltConfig(eps=1e-4, K=1, max_steps=40)


def make_plugin(device='cpu', precision='fp32'):
    return Halver()


def score(recorded, truth):
    outs = [m.data[0] for _, m in recorded.get('/halver/out', [])]
    good = sum(abs(x) < 0.05 for x in outs)
    return {'answered': len(outs), 'quality': {'metric': 'near_zero',
                                              'value': good / max(len(outs), 1),
                                              'n': len(outs)}}


F = 'std_msgs/msg/Float32MultiArray'
PLUGIN_SPECS = [PluginSpec(
    name='halver', kind='custom', description='throwaway test plugin',
    node='throwaway_irp.node:HalverNode', executable='halver_node', node_name='halver_node',
    plugin='throwaway_irp:make_plugin',
    inputs=(Port('input', F, 'halver/in'),), outputs=(Port('output', F, 'halver/out'),),
    demo=DemoSpec(replay_topics=('/halver/in',), record_topics=('/halver/out',),
                  truth_key='halver_inputs', score='throwaway_irp:score'))]
'''

NODE = '''
"""The throwaway plugin's node: the host does everything but decoding and publishing."""
from std_msgs.msg import Float32MultiArray

from sage_irp_ros.ros import conversions
from sage_irp_ros.ros.host import IRPNodeHost


class HalverNode(IRPNodeHost):
    plugin_name = 'halver'

    def decode(self, msg):
        return conversions.float_array(msg, 8), None

    def publish_output(self, output, header, result, x0):
        self.outputs['output'].publish(Float32MultiArray(data=[float(output)]))
'''


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    pkg = tmp_path / 'throwaway_irp'
    pkg.mkdir()
    (pkg / '__init__.py').write_text(textwrap.dedent(PLUGIN))
    (pkg / 'node.py').write_text(textwrap.dedent(NODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('PYTHONPATH', f'{tmp_path}:{os.environ.get("PYTHONPATH", "")}')
    monkeypatch.setenv(registry.ENV_MODULES, 'throwaway_irp')
    yield registry.get('halver')
    registry.unregister('halver')
    registry._loaded_modules.discard('throwaway_irp')
    sys.modules.pop('throwaway_irp', None)


def test_registry_names_the_builtin_plugins_once():
    names = registry.names()
    assert names[:2] == ['vision', 'language'] and 'fixture' in names
    assert len(set(names)) == len(names)
    assert 'fixture' not in registry.names(include_fixtures=False)
    for spec in registry.specs():
        assert spec.node_class().plugin_name == spec.name
        assert spec.port('input').name == 'input'
    with pytest.raises(KeyError, match='registered: .*fixture, language.*vision'):
        registry.get('sonar')
    with pytest.raises(ValueError, match='already registered'):
        registry.register(registry.get('vision'))


def test_resolve_device_falls_back_with_reasons():
    vision, fixture = registry.get('vision'), registry.get('fixture')
    assert registry.resolve_device(vision, 'cuda:0', 'fp16', cuda_available=True) == (
        'cuda:0', 'fp16', [])
    dev, prec, notes = registry.resolve_device(vision, 'cuda', 'fp16', cuda_available=False)
    assert (dev, prec) == ('cpu', 'fp32') and len(notes) == 2
    dev, prec, notes = registry.resolve_device(fixture, 'cuda', 'fp32', cuda_available=True)
    assert dev == 'cpu' and 'cpu only' in notes[0]
    for bad in ('gpu', 'cpu:1', 'cuda:x'):
        with pytest.raises(ValueError, match='device'):
            registry.resolve_device(vision, bad, 'fp32')
    with pytest.raises(ValueError, match='precision'):
        registry.resolve_device(vision, 'cpu', 'int8')


def test_a_throwaway_plugin_is_launched_granted_and_scored(throwaway, ros, node_process,
                                                           tmp_path):
    from sage_irp_ros.demo import scoring
    spec = throwaway
    assert 'halver' in registry.names()
    # launched: the launch plan starts it like any plugin
    plan = launch_plan.plan('halver', config='cfg.yaml', device='cuda',
                            overrides_path=str(tmp_path / 'ov.yaml'))
    assert [a.executable for a in plan.actions] == ['orchestrator_node', 'halver_node']
    assert plan.overrides['halver_node']['device'] == 'cpu'
    # and in one process with the orchestrator, from the registry alone
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({'orchestrator_node': {'ros__parameters': {
        'period_s': 0.2, 'total_atp': 50.0, 'trust_file': str(tmp_path / 'trust.json')}}}))
    proc = node_process('sage_irp_ros.ros.all_in_one', args=(
        '--plugins', 'halver', '--ros-args', '--params-file', str(params)))
    grants = ros.collect(BudgetGrant, '/irp/budget', 50)
    telem = ros.collect(String, '/irp/telemetry_json', 50)
    outs = ros.collect(Float32MultiArray, '/halver/out', 50)
    pub = ros.node.create_publisher(Float32MultiArray, '/halver/in', 10)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 30), proc.log()
    inputs = [8.0, -3.0, 0.5, 100.0]

    def granted_runs():
        return [r for r in map(lambda t: json.loads(t.data), telem)
                if r['entity_id'] == '/halver_node' and r['run']['cycle'] is not None]
    for x in inputs:
        n = len(granted_runs())
        assert wait_for(lambda n=n, x=x: (pub.publish(Float32MultiArray(data=[x])),
                                          len(granted_runs()) > n)[1], 20, period=0.3), \
            proc.log()
    assert any(g.plugin == '/halver_node' and g.atp_granted > 0 for g in grants)
    assert proc.stop() == 0, proc.log()
    # scored: the demo's scoring reads the plugin's hook through the registry
    recorded = {'/halver/out': [(0, m) for m in outs],
                '/irp/telemetry_json': [(0, t) for t in telem]}
    summary = scoring.summarize([spec], recorded, {'halver_inputs': inputs},
                                {'halver': len(outs)}, {}, {'halver': 40}, {}, {})
    row = summary['halver']
    assert row['answered'] == len(outs) >= len(inputs)
    near = sum(abs(m.data[0]) < 0.05 for m in outs) / len(outs)  # some runs stop on budget
    assert row['quality']['metric'] == 'near_zero' and row['quality']['value'] == near > 0
    assert row['runs'] >= len(inputs) and row['mean_steps'] > 3
    assert np.isfinite(row['atp_spent'])
