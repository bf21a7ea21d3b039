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
        return any(json.loads(t.data)['metadata']['cycle'] is not None for t in telem)

    # The plugin's runs draw on the orchestrator's grants (telemetry names the cycle).
    assert wait_for(granted_run, 20, period=0.2), proc.log()
    assert any(g.plugin == '/fixture_irp_node' for g in grants)
    assert proc.stop() == 0, proc.log()
