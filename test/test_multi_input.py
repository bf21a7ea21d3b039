"""Multi-input plugins: several ports with their own QoS and triggers, latched values, a timer."""

import json

import numpy as np
import pytest
from conftest import wait_for
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32MultiArray, String

from sage_irp_ros import registry
from sage_irp_ros.registry import PluginSpec, Port
from sage_irp_ros.ros import conversions
from sage_irp_ros.ros.host import IRPNodeHost

FLOATS = 'std_msgs/msg/Float32MultiArray'
SPEC = PluginSpec(
    name='multi_fixture', kind='custom', description='test: a signal plus a latched offset',
    node='test_multi_input:MultiNode', executable='', node_name='multi_fixture_node',
    plugin='sage_irp_ros.plugins.fixture:make_plugin',
    inputs=(Port('signal', FLOATS, 'mi/signal', required=False),
            Port('offset', FLOATS, 'mi/offset', qos='latched', trigger='none', depth=1),
            Port('chunk', FLOATS, 'mi/chunk', trigger='each', depth=20, required=False)),
    outputs=(Port('output', FLOATS, 'mi/out'),), fixture=True)


class MultiNode(IRPNodeHost):
    """Test node: smooths the triggering signal or chunk plus the latched offset."""

    plugin_name = 'multi_fixture'

    def decode_inputs(self, inputs):
        msg = inputs.msg if inputs.msg is not None else inputs.msgs.get('signal')
        if msg is None:
            raise conversions.InputError('nothing to refine yet (no signal)')
        x = conversions.float_array(msg, 1000)
        return x + conversions.float_array(inputs.msgs['offset'], 10)[0], None

    def publish_output(self, output, header, result, x0):
        self.outputs['output'].publish(Float32MultiArray(data=output.astype(np.float32)
                                                         .tolist()))


@pytest.fixture
def spec():
    registry.register(SPEC, replace=True)
    yield SPEC
    registry.unregister(SPEC.name)


def latched_publisher(ros):
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return ros.node.create_publisher(Float32MultiArray, '/mi/offset', qos)


def test_latched_input_is_kept_and_required_inputs_gate_runs(ros, spec):
    out = ros.collect(Float32MultiArray, '/mi/out', 50)
    sig = ros.node.create_publisher(Float32MultiArray, '/mi/signal', 10)
    node = ros.add_node(MultiNode(context=ros.context))
    try:
        assert wait_for(lambda: sig.get_subscription_count() == 1, 5)
        sig.publish(Float32MultiArray(data=[1.0, 1.0, 1.0]))   # no offset yet: refused
        assert wait_for(lambda: node.counters.bad_input == 1, 5)
        assert not out
        off = latched_publisher(ros)
        off.publish(Float32MultiArray(data=[10.0]))
        assert wait_for(lambda: node._latest.get('', {}).get('offset') is not None, 5)
        assert node.counters.runs == 0                        # a kept input triggers nothing
        sig.publish(Float32MultiArray(data=[1.0, 1.0, 1.0]))
        assert wait_for(lambda: out, 5)
        assert np.allclose(out[0].data, 11.0)
    finally:
        node.destroy_node()


def test_a_late_node_gets_the_latched_value(ros, spec):
    off = latched_publisher(ros)
    off.publish(Float32MultiArray(data=[-2.0]))               # before the node exists
    out = ros.collect(Float32MultiArray, '/mi/out', 50)
    node = ros.add_node(MultiNode(context=ros.context))
    try:
        assert wait_for(lambda: node._latest.get('', {}).get('offset') is not None, 5)
        node._on_input('signal', Float32MultiArray(data=[2.0, 2.0]))
        assert wait_for(lambda: out, 5)
        assert np.allclose(out[0].data, 0.0)
    finally:
        node.destroy_node()


def test_each_message_of_a_stream_input_is_refined_in_order(ros, spec):
    out = ros.collect(Float32MultiArray, '/mi/out', 50)
    node = ros.add_node(MultiNode(context=ros.context))
    try:
        node._on_input('offset', Float32MultiArray(data=[0.0]))
        for i in range(12):  # a burst, faster than the worker: none is dropped
            node._on_input('chunk', Float32MultiArray(data=[float(i)] * 4))
        assert wait_for(lambda: len(out) == 12, 10)
        assert [round(m.data[0]) for m in out] == list(range(12))
        assert node.counters.dropped_stale == 0
        for i in range(5):  # 'newest': only the newest of a burst waits
            node._on_input('signal', Float32MultiArray(data=[float(i)] * 4))
        assert wait_for(lambda: node.counters.runs + node.counters.dropped_stale == 17, 10)
        assert node.counters.dropped_stale >= 1
    finally:
        node.destroy_node()


def test_timer_triggers_runs_with_the_newest_inputs(ros, spec):
    telem = ros.collect(String, '/irp/telemetry_json', 50)
    node = ros.add_node(MultiNode(context=ros.context, parameter_overrides=[
        Parameter('run_period_s', value=0.1)]))
    try:
        node._on_input('offset', Float32MultiArray(data=[1.0]))
        assert not wait_for(lambda: telem, 0.5)   # no signal yet: nothing to refine
        node._latest.setdefault('', {})['signal'] = Float32MultiArray(data=[3.0, 3.0])
        assert wait_for(lambda: len(telem) >= 2, 5)
        assert {json.loads(t.data)['metadata']['trigger'] for t in telem} == {'timer'}
    finally:
        node.destroy_node()


def test_a_timer_runs_each_stream_on_its_own_newest_inputs(ros, spec):
    """``run_period_s`` with ``streams``: a timer run per stream that has had an input, reading
    that stream's newest signal and the shared offset, published on that stream's topic."""
    node = ros.add_node(MultiNode(context=ros.context, parameter_overrides=[
        Parameter('run_period_s', value=0.05), Parameter('streams', value=['s0', 's1'])]))
    outs = {s: ros.collect(Float32MultiArray, f'/{s}/mi/out', 100) for s in ('s0', 's1')}
    try:
        node._on_input('offset', Float32MultiArray(data=[10.0]))  # shared by the streams
        node._on_input('signal', Float32MultiArray(data=[1.0, 1.0]), 's0')
        assert wait_for(lambda: len(outs['s0']) >= 3, 10)  # its own run, then timer runs
        assert not outs['s1']  # nothing of its own yet: no timer run
        node._on_input('signal', Float32MultiArray(data=[2.0, 2.0]), 's1')
        n0 = len(outs['s0'])
        assert wait_for(lambda: len(outs['s1']) >= 3 and len(outs['s0']) >= n0 + 2, 10)
        assert {round(m.data[0]) for m in outs['s0']} == {11}
        assert {round(m.data[0]) for m in outs['s1']} == {12}
    finally:
        node.destroy_node()
