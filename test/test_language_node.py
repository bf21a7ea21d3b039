"""language_irp_node over DDS: masked utterances in, repaired text, meaning and telemetry out."""

import json

import numpy as np
from conftest import diag_value, wait_for
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Float32MultiArray, String

from sage_irp_ros.core import validate_record

MODULE = 'sage_irp_ros.plugins.language.node'


def test_language_node_repairs_text_and_survives_bad_input(ros, node_process):
    node = node_process(MODULE, {'input_topic': '/text_in', 'output_topic': '/text_out',
                                 'default_atp': 0.0,  # no orchestrator: unlimited runs
                                 'meaning_topic': '/meaning', 'max_input_chars': 200,
                                 'diagnostics_period_s': 0.2})
    texts = ros.collect(String, '/text_out')
    meanings = ros.collect(Float32MultiArray, '/meaning')
    telem = ros.collect(String, '/irp/telemetry_json')
    diags = ros.collect(DiagnosticArray, '/diagnostics')
    pub = ros.node.create_publisher(String, '/text_in', 10)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 30), node.log()

    def send(text, n_out):
        pub.publish(String(data=text))
        assert wait_for(lambda: len(texts) >= n_out and len(telem) >= n_out, 15), node.log()
        return texts[n_out - 1].data, json.loads(telem[n_out - 1].data)

    out, rec = send('Please put the [MASK] on the [MASK] table.', 1)
    assert '[MASK]' not in out and out.startswith('Please put the ')
    assert out.endswith(' table.')
    validate_record(rec)
    assert rec['plugin'] == 'language' and rec['steps'] > 0
    assert rec['halt_reason'] in ('stable', 'max_steps') and rec['metadata']['masked_tokens'] == 2
    assert wait_for(lambda: meanings, 5)
    m = np.asarray(meanings[0].data)
    assert m.ndim == 1 and abs(np.linalg.norm(m) - 1) < 1e-3

    out, rec = send('Hello robot, stop here.', 2)  # nothing to repair: passes through
    assert out == 'Hello robot, stop here.' and rec['steps'] == 0
    assert rec['halt_reason'] == 'stable'

    pub.publish(String(data='   '))
    assert wait_for(lambda: diag_value(diags, 'bad_input') == '1', 10), node.log()
    pub.publish(String(data='x' * 201))
    assert wait_for(lambda: diag_value(diags, 'bad_input') == '2', 10), node.log()
    assert 'empty text' in node.log() and 'exceeds max_input_chars=200' in node.log()
    out, _ = send('The robot [MASK] to the door.', 3)
    assert '[MASK]' not in out
    assert node.stop() == 0, node.log()
