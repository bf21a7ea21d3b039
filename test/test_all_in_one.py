"""sage_irp_all: the orchestrator and a plugin node in one process, driven over DDS."""

import json

import numpy as np
import yaml
from conftest import wait_for
from std_msgs.msg import Float32MultiArray, String

from sage_irp_ros.msg import BudgetGrant


def test_one_process_runs_orchestrator_and_plugin(ros, node_process, tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({
        'orchestrator_node': {'ros__parameters': {
            'period_s': 0.2, 'total_atp': 50.0, 'trust_file': str(tmp_path / 'trust.json')}},
        'fixture_irp_node': {'ros__parameters': {'input_topic': '/sig'}},
    }))
    proc = node_process('sage_irp_ros.ros.all_in_one', name=None, args=(
        '--plugins', 'fixture', '--ros-args', '--params-file', str(params)))
    grants = ros.collect(BudgetGrant, '/irp/budget', 50)
    telem = ros.collect(String, '/irp/telemetry_json', 50)
    pub = ros.node.create_publisher(Float32MultiArray, '/sig', 10)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 20), proc.log()
    rng = np.random.default_rng(0)

    def granted_run():
        pub.publish(Float32MultiArray(data=rng.standard_normal(64).tolist()))
        return any(json.loads(t.data)['run']['cycle'] is not None for t in telem)

    # The plugin's runs draw on the orchestrator's grants (telemetry names the cycle).
    assert wait_for(granted_run, 20, period=0.2), proc.log()
    assert any(g.plugin == '/fixture_irp_node' for g in grants)
    assert proc.stop() == 0, proc.log()


def test_cuda_asked_on_a_machine_without_it_falls_back_and_nothing_crashes(ros, node_process,
                                                                            tmp_path):
    """``device:=cuda precision:=fp16`` for every plugin, here (no CUDA): warned fallbacks."""
    import torch
    if torch.cuda.is_available():
        import pytest
        pytest.skip('this machine has CUDA: the fallback is not exercised')
    from diagnostic_msgs.msg import DiagnosticArray
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({
        f'/**/{n}': {'ros__parameters': {'device': 'cuda', 'precision': 'fp16'}}
        for n in ('vision_irp_node', 'language_irp_node', 'fixture_irp_node')}))
    diags = ros.collect(DiagnosticArray, '/diagnostics', 50)
    proc = node_process('sage_irp_ros.ros.all_in_one', args=(
        '--plugins', 'vision,language,fixture', '--no-orchestrator', '--ros-args',
        '--params-file', str(params)))

    def states():
        out = {}
        for arr in list(diags):
            for st in arr.status:
                kv = {k.key: k.value for k in st.values}
                if 'lifecycle_state' in kv:
                    out[st.name] = (kv['lifecycle_state'], kv['device'], kv['precision'])
        return out
    assert wait_for(lambda: len(states()) == 3, 60), proc.log()
    assert set(states().values()) == {('active', 'cpu', 'fp32')}, states()
    log = proc.log()
    assert 'no CUDA device is available' in log and 'fp16' in log
    assert proc.stop() == 0, log
