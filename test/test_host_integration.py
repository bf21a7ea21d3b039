"""The node host over real DDS: a fixture plugin node in its own process."""

import json
import math

import numpy as np
from conftest import diag_value, wait_for
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Float32MultiArray, String

from sage_irp_ros.core import validate_record
from sage_irp_ros.msg import BudgetGrant, IRPTelemetry
from sage_irp_ros.ros.conversions import msg_to_record

MODULE = 'sage_irp_ros.plugins.fixture.node'


def signal(n=200, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 6, n)
    return (np.sin(t) + 0.4 * rng.standard_normal(n)).astype(np.float32)


def roughness(x):
    return float(np.sum(np.diff(np.asarray(x, dtype=np.float64)) ** 2))


def connect(ros, topic='/input'):
    pub = ros.node.create_publisher(Float32MultiArray, topic, 10)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 15), 'node never subscribed'
    return pub


def test_node_refines_publishes_result_and_telemetry_and_survives_bad_input(ros, node_process):
    node = node_process(MODULE, {'input_topic': '/input', 'output_topic': '/output',
                                 'diagnostics_period_s': 0.2, 'max_input_len': 1000})
    outputs = ros.collect(Float32MultiArray, '/output')
    telem = ros.collect(IRPTelemetry, '/irp/telemetry')
    telem_json = ros.collect(String, '/irp/telemetry_json')
    diags = ros.collect(DiagnosticArray, '/diagnostics')
    pub = connect(ros)
    assert wait_for(lambda: ros.node.count_publishers('/irp/telemetry') > 0, 10)

    x = signal()
    pub.publish(Float32MultiArray(data=x.tolist()))
    assert wait_for(lambda: outputs and telem and telem_json, 15), node.log()
    y = np.asarray(outputs[0].data)
    assert y.shape == x.shape and roughness(y) < 0.2 * roughness(x)

    record = json.loads(telem_json[0].data)
    validate_record(record)
    assert record['plugin'] == 'custom' and record['entity_id'] == '/fixture_irp_node'
    assert record['halt_reason'] == 'slope<eps' and record['steps'] > 0
    assert record['E'] < record['E_trace'][0]
    assert msg_to_record(telem[0]) == record
    assert len(telem[0].energy_trace) == record['steps'] + 1

    # Bad input: empty, non-finite, oversize. Each is logged and counted; the node goes on.
    # (One at a time: the node keeps only the newest input, so a burst would drop some.)
    pub.publish(Float32MultiArray(data=[]))
    assert wait_for(lambda: diag_value(diags, 'bad_input') == '1', 10), node.log()
    pub.publish(Float32MultiArray(data=[1.0, math.nan, 2.0]))
    assert wait_for(lambda: diag_value(diags, 'bad_input') == '2', 10), node.log()
    pub.publish(Float32MultiArray(data=[0.5] * 1001))
    assert wait_for(lambda: diag_value(diags, 'bad_input') == '3', 10), node.log()
    pub.publish(Float32MultiArray(data=signal(seed=1).tolist()))
    assert wait_for(lambda: len(outputs) == 2 and len(telem_json) == 2, 10), node.log()
    log = node.log()
    assert 'bad input on /input: empty array' in log
    assert 'non-finite' in log and 'exceeds max_input_len=1000' in log
    assert node.proc.poll() is None

    assert node.stop() == 0, node.log()


def test_grants_limit_steps_and_top_ups_apply(ros, node_process):
    node = node_process(MODULE, {'input_topic': '/input', 'grant_timeout_s': 30.0,
                                 'diagnostics_period_s': 0.1})
    telem = ros.collect(String, '/irp/telemetry_json')
    diags = ros.collect(DiagnosticArray, '/diagnostics')
    grants = ros.node.create_publisher(BudgetGrant, '/irp/budget', 10)
    pub = connect(ros)
    assert wait_for(lambda: grants.get_subscription_count() > 0, 10)

    sent = [0]

    def grant(cycle, atp):
        grants.publish(BudgetGrant(plugin='/fixture_irp_node', cycle=cycle, atp_granted=atp,
                                   trust_weight=1.0))
        sent[0] += 1
        # wait until the node has counted it, so it applies to the next input
        assert wait_for(lambda: diag_value(diags, 'grants') == str(sent[0]), 10), node.log()

    def refine_one(seed):
        n = len(telem)
        pub.publish(Float32MultiArray(data=signal(seed=seed).tolist()))
        assert wait_for(lambda: len(telem) > n, 10), node.log()
        return json.loads(telem[-1].data)

    grant(1, 0.0)
    # a zero grant cannot pay for the input: it is not refined (and not charged), but counted
    n = len(telem)
    pub.publish(Float32MultiArray(data=signal(seed=1).tolist()))
    assert wait_for(lambda: diag_value(diags, 'dropped_no_budget') == '1', 10), node.log()
    assert len(telem) == n

    grant(1, 1e6)  # a top-up of the same cycle
    rec = refine_one(2)
    assert rec['steps'] > 0 and rec['halt_reason'] == 'slope<eps'
    assert rec['budget']['ATP_granted'] == 1e6

    grant(0, 0.0)  # an older cycle is ignored
    rec = refine_one(3)
    assert rec['steps'] > 0 and rec['run']['cycle'] == 1
    assert node.stop() == 0


def test_sigint_shuts_down_cleanly(node_process):
    node = node_process(MODULE)
    assert wait_for(lambda: 'ready' in node.log(), 15), node.log()
    assert node.stop(timeout=10) == 0
    assert 'Traceback' not in node.log()


def test_a_second_sigint_during_shutdown_is_harmless(node_process):
    """Ctrl-C under ``ros2 launch``: launch and the terminal both send SIGINT, close together."""
    import signal
    import time
    for _ in range(3):
        node = node_process(MODULE)
        assert wait_for(lambda node=node: 'ready' in node.log(), 15), node.log()
        node.proc.send_signal(signal.SIGINT)
        time.sleep(0.005)
        node.proc.send_signal(signal.SIGINT)
        assert node.stop(timeout=10) == 0, node.log()
        assert 'Traceback' not in node.log() and 'KeyboardInterrupt' not in node.log()


def test_start_up_errors_are_one_line_naming_the_parameter(node_process, tmp_path):
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint at all' * 10)
    cases = [
        ('sage_irp_ros.plugins.vision.node', {'model_path': str(garbage)}, 'model_path'),
        ('sage_irp_ros.plugins.vision.node', {'model_path': str(tmp_path / 'none.pt')},
         'model_path'),
        ('sage_irp_ros.plugins.language.node', {'tokenizer_path': str(garbage)},
         'tokenizer_path'),
        ('sage_irp_ros.ros.orchestrator_node', {'period_s': -1.0}, 'period_s'),
        (MODULE, {'input_qos_reliability': 'sometimes'}, 'input_qos_reliability'),
    ]
    procs = [(node_process(m, params), name) for m, params, name in cases]
    for proc, name in procs:
        assert proc.proc.wait(timeout=60) == 1, proc.log()
        log = proc.log()
        assert name in log and 'Traceback' not in log and 'weights_only' not in log, log
        assert len([ln for ln in log.splitlines() if '[ERROR]' in ln]) <= 2, log


def test_a_misspelled_parameter_is_named(node_process):
    node = node_process(MODULE, {'deadline_msec': 5.0})
    assert wait_for(lambda: 'ready' in node.log(), 15), node.log()
    assert wait_for(lambda: 'deadline_msec' in node.log(), 5), node.log()
    assert node.stop() == 0
