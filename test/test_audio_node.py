"""Audio node in process: chunks in (plain and stamped, any size/rate), transcripts out, bad
input counted while the node goes on, a stream stopping mid-utterance."""

import json
import shutil
import tempfile

import numpy as np
import pytest
from conftest import wait_for
from rclpy.parameter import Parameter
from std_msgs.msg import Int16MultiArray, String

from sage_irp_ros.msg import Transcript
from sage_irp_ros.plugins.audio.dsp import RATE, to_int16
from sage_irp_ros.plugins.audio.node import AudioIRPNode, chunk_msg

pytestmark = [pytest.mark.usefixtures('one_torch_thread'),
              pytest.mark.skipif(shutil.which('flite') is None, reason='flite not installed')]


@pytest.fixture(scope='module')
def speech():
    from sage_irp_ros.plugins.audio.speech import say
    with tempfile.TemporaryDirectory() as tmp:
        return say('go forward two meters', 'flite:slt', tmp)


def int16_msg(x):
    m = Int16MultiArray()
    m.data = np.asarray(x, np.int16).tolist()
    return m


@pytest.fixture
def node(ros):
    n = ros.add_node(AudioIRPNode(context=ros.context, parameter_overrides=[
        Parameter('stream_timeout_s', value=0.3), Parameter('max_chunk_s', value=5.0)]))
    yield n
    n.destroy_node()


def feed(node, x, sizes=(1600, 333, 4000, 17)):
    i = k = 0
    while i < x.size:
        n = sizes[k % len(sizes)]
        node._on_input('input', int16_msg(x[i:i + n]))
        i, k = i + n, k + 1


def test_speech_in_chunks_of_any_size_gives_transcript_text_and_masked(ros, node, speech):
    tr = ros.collect(Transcript, '/speech/transcript')
    text = ros.collect(String, '/speech/transcript_text')
    masked = ros.collect(String, '/speech/text')
    assert wait_for(lambda: node.outputs['masked'].get_subscription_count() > 0, 5)
    x = to_int16(np.concatenate([np.zeros(RATE // 2), speech, np.zeros(RATE)]))
    feed(node, x)
    assert wait_for(lambda: tr and text and masked, 20)
    t = tr[0]
    assert 'meters' in t.text and t.cut == 'silence'
    assert len(t.words) == len(t.confidences) == len(t.start_s) == len(t.end_s) >= 3
    assert all(0 <= c <= 1 for c in t.confidences)
    assert t.enhance_steps == 0 and t.halt_reason == 'confident'  # clean speech: no steps
    assert text[0].data == t.text and masked[0].data == t.masked_text
    # each word's N-best rivals travel with it, and the masked text lists them
    assert len(t.alternatives) == len(t.words) and any(t.alternatives)
    assert '|' in t.masked_text
    for w, c, a, tok in zip(t.words, t.confidences, t.alternatives, t.masked_text.split(),
                            strict=True):
        assert tok == (w if c >= 0.5 or not a else f'[MASK:{w}={max(c, 0.01):.2f}|{a}]')
    assert node.counters.bad_input == 0 and node.counters.runs == 1


def test_partial_results_while_an_utterance_goes_on(ros, speech):
    node = ros.add_node(AudioIRPNode(context=ros.context, parameter_overrides=[
        Parameter('partial_interval_s', value=0.3)]))
    try:
        tr = ros.collect(Transcript, '/speech/transcript')
        part = ros.collect(Transcript, '/speech/partial')
        assert wait_for(lambda: node.outputs['partial'].get_subscription_count() > 0, 5)
        x = to_int16(np.concatenate([np.zeros(RATE // 2), speech, np.zeros(RATE)]))
        feed(node, x)
        assert wait_for(lambda: tr, 20)
        assert wait_for(lambda: len(part) == node.partials, 5)
        # one preview per 0.3 s of speech, before the final transcript, of the same utterance
        assert len(part) >= int(speech.size / RATE / 0.3) - 1 >= 2
        assert all(p.cut == 'partial' and p.header.stamp == tr[0].header.stamp and
                   not p.confidences and len(p.words) == len(p.start_s) for p in part)
        assert [p.duration_s for p in part] == sorted(p.duration_s for p in part)
        assert len(part[-1].words) >= 2 and 0 < part[-1].end_s[-1] <= part[-1].duration_s + 0.01
        # the final transcript is still the enhanced utterance's, with confidences
        assert tr[0].cut == 'silence' and len(tr[0].confidences) == len(tr[0].words)
    finally:
        node.destroy_node()


def test_stamped_48k_stereo_float_keeps_its_time(ros, node, speech):
    tr = ros.collect(Transcript, '/speech/transcript')
    from sage_irp_ros.plugins.audio.dsp import resample
    x = resample(np.concatenate([np.zeros(RATE // 2), speech, np.zeros(RATE)]), RATE, 48000)
    st = np.stack([x, x], axis=1).ravel().astype(np.float32)
    t0 = 1_700_000_000 * 10 ** 9
    step = 4800 * 2
    for i in range(0, st.size, step):
        node._on_input('stamped', chunk_msg(st[i:i + step], 48000, 2,
                                            t0 + int(i // 2 / 48000 * 1e9), 'F32LE'))
    assert wait_for(lambda: tr, 20)
    assert 'meters' in tr[0].text
    start = tr[0].header.stamp.sec + tr[0].header.stamp.nanosec * 1e-9 - 1_700_000_000
    assert 0.1 < start < 0.6  # the utterance starts 0.5 s in, with 0.2 s of lead-in


def test_bad_chunks_are_counted_and_the_node_goes_on(ros, node, speech):
    tr = ros.collect(Transcript, '/speech/transcript')
    bad = [('input', int16_msg([])),
           ('input', int16_msg(np.zeros(6 * RATE))),                       # huge
           ('stamped', chunk_msg(np.zeros(100), 16000, 1, 0, 'MP3')),      # encoding
           ('stamped', chunk_msg(np.zeros(100), 0, 1, 0)),                 # rate
           ('stamped', chunk_msg(np.zeros(101), 16000, 2, 0)),             # channels
           ('stamped', chunk_msg(np.full(100, np.nan), 16000, 1, 0, 'F32LE'))]
    odd = chunk_msg(np.zeros(100), 16000, 1, 0)
    odd.data = bytes(odd.data)[:-1]
    bad.append(('stamped', odd))
    for port, m in bad:
        node._on_input(port, m)
    assert wait_for(lambda: node.counters.bad_input == len(bad), 10)
    # garbage and clipping: used, counted as clipped, no crash
    rng = np.random.default_rng(0)
    node._on_input('input', int16_msg(rng.integers(-32768, 32767, RATE)))
    node._on_input('input', int16_msg(np.full(1600, 32767)))
    node._on_input('input', int16_msg(np.zeros(2 * RATE)))
    assert wait_for(lambda: node.clipped_chunks >= 1, 10)
    x = to_int16(np.concatenate([np.zeros(RATE // 2), speech, np.zeros(RATE)]))
    feed(node, x)
    assert wait_for(lambda: any('meters' in t.text for t in tr), 20)
    assert node.counters.plugin_errors == 0


def test_stream_stopping_mid_utterance_is_flushed(ros, node, speech):
    tr = ros.collect(Transcript, '/speech/transcript')
    x = to_int16(np.concatenate([np.zeros(RATE // 2), speech]))
    feed(node, x)
    assert wait_for(lambda: tr, 20)
    assert tr[0].cut == 'flush' and 'meters' in tr[0].text


def test_model_path_loads_another_enhancer_and_garbage_is_one_clear_failure(ros, tmp_path):
    from sage_irp_ros.plugins.audio.plugin import DEFAULT_WEIGHTS
    from sage_irp_ros.ros.lifecycle import StartError
    own = tmp_path / 'mine.pt'
    shutil.copy(DEFAULT_WEIGHTS, own)
    shutil.copy(DEFAULT_WEIGHTS.replace('.pt', '.json'), tmp_path / 'mine.json')
    n = ros.add_node(AudioIRPNode(context=ros.context, parameter_overrides=[
        Parameter('model_path', value=str(own))]))
    try:
        meta = json.loads((tmp_path / 'mine.json').read_text())
        assert n.lifecycle_state == 'active' and n.plugin.objective == meta['objective']
        assert n.plugin.version == meta['version']
    finally:
        n.destroy_node()
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(StartError, match="model_path: cannot load .*bad.pt"):
        AudioIRPNode('audio_bad', context=ros.context, parameter_overrides=[
            Parameter('model_path', value=str(bad))])
