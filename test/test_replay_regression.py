"""Replay regression: the sample bag through the real node graph vs a golden summary; and the
replay and record tools (round trip over DDS).

The regression runs the demo in regression mode (``python -m sage_irp_ros.demo --regression``:
orchestrator, vision and language nodes in their own processes, budgets and deadlines
non-binding, the recorder, the replay of ``data/sample_bag`` at half its rate) and compares
its summary with ``test/golden/replay_summary.json``:

- every input answered, per plugin (exact);
- vision mIoU within +-0.03, language token accuracy within +-0.05 (absolute);
- mean steps per input within +-1 step.

After a retrain of a model, regenerate the golden with
``python -m sage_irp_ros.demo --write-golden`` and review the diff.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sage_irp_ros.core import validate_record
from sage_irp_ros.tools.bagio import make_typestore, rclpy_qos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAG = os.path.join(ROOT, 'data', 'sample_bag')
GOLDEN = os.path.join(ROOT, 'test', 'golden', 'replay_summary.json')
TOLERANCE = {'mIoU': 0.03, 'token_accuracy': 0.05, 'status_as_expected': 0.0,
             'word_accuracy': 0.05, 'mean_steps': 1.0}


def _env():
    return dict(os.environ, FASTDDS_BUILTIN_TRANSPORTS='LARGE_DATA', PYTHONUNBUFFERED='1')


def _bag_messages(path):
    from rosbags.rosbag2 import Reader
    out = {}
    with Reader(path) as reader:
        for conn, _, data in reader.messages():
            out.setdefault(conn.topic, []).append(bytes(data))
    return out


def test_sample_bag_contents():
    from rosbags.rosbag2 import Reader
    with Reader(BAG) as reader:
        topics = {t: (i.msgtype, i.msgcount) for t, i in reader.topics.items()}
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
    assert topics == {'/camera/image_raw': ('sensor_msgs/msg/Image', 64),
                      '/speech/text': ('std_msgs/msg/String', 20),
                      '/audio/raw': ('std_msgs/msg/Int16MultiArray', 64),
                      '/map': ('nav_msgs/msg/OccupancyGrid', 1),
                      '/start_pose': ('geometry_msgs/msg/PoseStamped', 1),
                      '/goal_pose': ('geometry_msgs/msg/PoseStamped', 5)}
    assert [f for f in os.listdir(BAG) if f != 'metadata.yaml'] == ['sample_bag.mcap']
    size = sum(os.path.getsize(os.path.join(BAG, f)) for f in os.listdir(BAG))
    assert size < 20e6
    # The camera is replayed best effort (sensor-data QoS), the text reliable.
    assert rclpy_qos(qos['/camera/image_raw']).reliability.name == 'BEST_EFFORT'
    assert rclpy_qos(qos['/speech/text']).reliability.name == 'RELIABLE'
    assert rclpy_qos(qos['/camera/image_raw'], reliable=True).reliability.name == 'RELIABLE'
    assert rclpy_qos(qos['/map']).durability.name == 'TRANSIENT_LOCAL'  # latched, as map_server
    with open(os.path.join(ROOT, 'data', 'sample_bag_truth.json')) as f:
        truth = json.load(f)
    assert len(truth['frames']) == 64 and len(truth['utterances']) == 20
    assert truth['audio']['sample_rate'] == 16000 and truth['audio']['transcript']
    # Custom types register from msg/*.msg, with the hashes rosidl computes.
    store = make_typestore()
    assert store.hash_rihs01('sage_irp_ros/msg/IRPTelemetry').startswith('RIHS01_')


def test_replay_record_round_trip(tmp_path):
    out = str(tmp_path / 'rec_bag')
    summary = str(tmp_path / 'rec.json')
    rec = subprocess.Popen([sys.executable, '-m', 'sage_irp_ros.tools.record', out,
                            *sorted(_bag_messages(BAG)), '--summary-json', summary],
                           cwd=ROOT, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rep = subprocess.run([sys.executable, '-m', 'sage_irp_ros.tools.replay', BAG,
                              '--rate', '4', '--reliable', '--wait-subscribers', '20',
                              '--summary-json', str(tmp_path / 'rep.json')],
                             cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
        assert rep.returncode == 0, rep.stdout + rep.stderr
        time.sleep(0.5)
    finally:
        rec.send_signal(signal.SIGINT)
        log = rec.communicate(timeout=20)[0]
    assert rec.returncode == 0, log
    with open(tmp_path / 'rep.json') as f:
        sent = json.load(f)
    original = _bag_messages(BAG)
    recorded = _bag_messages(out)
    assert sent['messages'] == {t: len(m) for t, m in original.items()}
    assert {t: len(m) for t, m in recorded.items()} == sent['messages'], log
    for topic, msgs in original.items():
        # Same CDR payloads; DDS may pad a payload to a multiple of 4 bytes with zeros.
        for a, b in zip(msgs, recorded[topic], strict=True):
            assert b[:len(a)] == a and not b[len(a):].strip(b'\0'), topic
        assert abs(sum(map(len, recorded[topic])) - sent['bytes'][topic]) <= 3 * len(msgs)


@pytest.mark.timeout(240)
def test_replay_regression_against_golden(tmp_path):
    out = tmp_path / 'demo'
    proc = subprocess.run([sys.executable, '-m', 'sage_irp_ros.demo', '--out', str(out),
                           '--regression', '--quiet'], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out / 'summary.json') as f:
        summary = json.load(f)
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert summary['mode'] == golden['mode'] == 'regression'
    assert summary['ok'] and all(summary['checks'].values()), summary['checks']
    for kind, want in golden['plugins'].items():
        got = summary['plugins'][kind]
        assert got['inputs'] == want['inputs'], kind
        assert got['answered'] == want['answered'] and got['unaccounted'] == 0, (kind, got)
        assert abs(got['mean_steps'] - want['mean_steps']) <= TOLERANCE['mean_steps'], (
            kind, got['mean_steps'], want['mean_steps'])
        metric = want['quality']['metric']
        assert got['quality']['metric'] == metric
        assert abs(got['quality']['value'] - want['quality']['value']) <= TOLERANCE[metric], (
            kind, got['quality'], want['quality'])
    # Every telemetry line is schema-valid; the recorded bag and the plots are there.
    with open(out / 'telemetry.jsonl') as f:
        lines = f.readlines()
    assert len(lines) == sum(p['runs'] for p in summary['plugins'].values())
    for line in lines:
        validate_record(json.loads(line))
    assert (out / 'output_bag' / 'metadata.yaml').exists()
    for name in ('energy_traces.png', 'steps_per_input.png', 'budget_trust.png',
                 'overlays.png'):
        assert (out / name).stat().st_size > 1000, name


def test_replay_waits_for_a_late_subscriber_by_default(tmp_path):
    """No flag: the replay holds its first message until the (late) recorder has matched."""
    summary = str(tmp_path / 'rec.json')
    rep = subprocess.Popen([sys.executable, '-m', 'sage_irp_ros.tools.replay', BAG, '--rate',
                            '8', '--topics', '/speech/text', '--quiet'], cwd=ROOT, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # the recorder starts a second after the replay
    rec = subprocess.Popen([sys.executable, '-m', 'sage_irp_ros.tools.record',
                            str(tmp_path / 'late'), '/speech/text', '--summary-json', summary],
                           cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        assert rep.wait(timeout=60) == 0, rep.communicate()[0]
        time.sleep(0.5)
    finally:
        rec.send_signal(signal.SIGINT)
        log = rec.communicate(timeout=20)[0]
    with open(summary) as f:
        assert json.load(f)['messages'] == {'/speech/text': 20}, log
