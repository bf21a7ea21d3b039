"""The demo's parts without nodes: plugin scoring hooks, registry-driven selection, plots,
the summary, the process harness, and ``make bench``'s command list.

Messages are hand-built stand-ins (``types.SimpleNamespace`` with the fields the code reads).
"""

import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace as NS

import numpy as np
import pytest

from sage_irp_ros import registry
from sage_irp_ros.demo import scoring, selection
from sage_irp_ros.demo.plots import colour_of
from sage_irp_ros.demo.plots import plots as draw_plots
from sage_irp_ros.plugins.language import demo as language_demo
from sage_irp_ros.plugins.vision import demo as vision_demo
from sage_irp_ros.registry import DemoSpec, PluginSpec, Port
from sage_irp_ros.tools.procs import ChildProcess, wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THROWAWAY_IN = '/test_demo_parts/signal_in'


def header(ns):
    return NS(stamp=NS(sec=ns // 10 ** 9, nanosec=ns % 10 ** 9))


def mono8(arr, ns, pad=0):
    arr = np.asarray(arr, np.uint8)
    h, w = arr.shape
    rows = np.zeros((h, w + pad), np.uint8)
    rows[:, :w] = arr
    return NS(header=header(ns), height=h, width=w, step=w + pad, encoding='mono8',
              data=rows.tobytes())


def rgb8(arr, ns, pad=0):
    arr = np.asarray(arr, np.uint8)
    h, w, _ = arr.shape
    rows = np.zeros((h, 3 * w + pad), np.uint8)
    rows[:, :3 * w] = arr.reshape(h, 3 * w)
    return NS(header=header(ns), height=h, width=w, step=3 * w + pad, encoding='rgb8',
              data=rows.tobytes())


S1, S2, S3 = 10 ** 9, 2 * 10 ** 9 + 5, 3 * 10 ** 9  # stamps: easy scene, hard scene, photo


def vision_truth():
    return {
        'classes': ['background', 'thing'],
        'frames': [{'kind': 'scene', 'difficulty': 0.0, 'index': 0, 'stamp_ns': S1},
                   {'kind': 'scene', 'difficulty': 0.9, 'index': 1, 'stamp_ns': S2},
                   {'kind': 'photo', 'name': 'cat', 'index': 2, 'stamp_ns': S3}],
        'class_maps': {S1: np.array([[0, 1], [1, 1]], np.uint8),
                       S2: np.array([[0, 0], [1, 1]], np.uint8)},
    }


# ------------------------------------------------------------------------ scoring hooks

def test_image_array_decodes_padded_rows():
    m = mono8([[1, 2, 3], [4, 5, 6]], S1, pad=5)
    np.testing.assert_array_equal(vision_demo.image_array(m), [[1, 2, 3], [4, 5, 6]])
    rgb = np.arange(2 * 2 * 3).reshape(2, 2, 3)
    np.testing.assert_array_equal(vision_demo.image_array(rgb8(rgb, S1, pad=2)), rgb)
    listed = mono8([[7, 8]], S1)
    listed.data = list(listed.data)  # rclpy may hand over a sequence of ints
    np.testing.assert_array_equal(vision_demo.image_array(listed), [[7, 8]])
    with pytest.raises(ValueError, match='mono8 or rgb8'):
        vision_demo.image_array(NS(encoding='bgr8', height=1, width=1, step=3, data=b'abc'))
    with pytest.raises(ValueError, match='bytes'):
        vision_demo.image_array(NS(encoding='mono8', height=2, width=2, step=2, data=b'ab'))


def test_vision_score_miou_halves_and_per_class():
    recorded = {'/vision/mask': [
        (1, mono8([[0, 1], [1, 1]], S1, pad=2)),   # easy scene: perfect
        (2, mono8([[1, 1], [1, 1]], S1)),          # the same frame again: ignored
        (3, mono8([[0, 1], [1, 1]], S2)),          # hard scene: one pixel wrong
        (4, mono8([[0, 0], [0, 0]], S3)),          # photo: answered, not scored
        (5, mono8([[0, 0], [0, 0]], 99)),          # no such frame: ignored
    ]}
    out = vision_demo.score(recorded, vision_truth())
    # Summed over both scenes: background 2/3 (I 1+1, U 1+2), thing 5/6 (I 3+2, U 3+3).
    assert out['answered'] == 3
    q = out['quality']
    assert q['metric'] == 'mIoU' and q['n'] == 2
    assert q['value'] == pytest.approx(0.75, abs=1e-4)
    assert q['per_class'] == [pytest.approx(0.6667, abs=1e-4), pytest.approx(0.8333, abs=1e-4)]
    assert q['easy_half'] == 1.0
    assert q['hard_half'] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-4)
    assert vision_demo.score({}, vision_truth())['answered'] == 0


def language_truth():
    return {'utterances': [
        {'index': 0, 'masked_text': 'a [MASK] c', 'tokens': ['a', 'b', 'c'],
         'masked_positions': [1]},
        {'index': 1, 'masked_text': '[MASK] [MASK] z', 'tokens': ['x', 'y', 'z'],
         'masked_positions': [0, 1]},
    ]}


def test_language_score_token_accuracy():
    recorded = {'/language/text_repaired': [
        (1, NS(data='a b c')),         # 1 of 1 right
        (2, NS(data='x q z')),         # 1 of 2 right
        (3, NS(data='x y z')),         # utterance 1 again: ignored
        (4, NS(data='not one of them')),
    ]}
    out = language_demo.score(recorded, language_truth())
    assert out['answered'] == 2
    assert out['quality'] == {'metric': 'token_accuracy', 'value': 0.6667, 'n': 2,
                              'masked_tokens': 3}
    assert language_demo.match_utterance('a zz c', language_truth()['utterances'])['index'] == 0
    assert language_demo.match_utterance('a b', language_truth()['utterances']) is None


def test_hook_modules_are_ros_free_and_the_demo_names_no_plugin():
    ros = re.compile(r'^\s*(from|import)\s+(rclpy|sensor_msgs|std_msgs|sage_irp_ros\.msg|'
                     r'sage_irp_ros\.ros)\b', re.M)
    for mod in (vision_demo, language_demo):
        with open(mod.__file__) as f:
            assert not ros.search(f.read()), mod.__name__
    folder = os.path.join(ROOT, 'sage_irp_ros', 'demo')
    for fn in os.listdir(folder):
        if fn.endswith('.py'):
            with open(os.path.join(folder, fn)) as f:
                text = f.read().lower()
            assert 'vision' not in text and 'language' not in text, fn


# ---------------------------------------------------------------------------- selection

def throwaway_spec(name='throwaway_demo', fixture=False, plot_steps=None):
    return PluginSpec(
        name=name, kind='custom', description='test_demo_parts: a throwaway plugin',
        node='sage_irp_ros.plugins.fixture.node:FixtureIRPNode',
        executable='fixture_irp_node', node_name=f'{name}_node',
        plugin='sage_irp_ros.plugins.fixture:make_plugin',
        inputs=(Port('input', 'std_msgs/msg/Float32MultiArray', 'input'),),
        demo=DemoSpec(replay_topics=(THROWAWAY_IN,), record_topics=(f'/{name}/out',),
                      truth_key='utterances',
                      score='sage_irp_ros.plugins.language.demo:score',
                      plot_steps=plot_steps),
        fixture=fixture)


@pytest.fixture
def throwaway():
    spec = registry.register(throwaway_spec())
    fixture_spec = registry.register(throwaway_spec('throwaway_fixture', fixture=True))
    yield spec
    registry.unregister(spec.name)
    registry.unregister(fixture_spec.name)


def test_selection_follows_the_registry(throwaway):
    names = [s.name for s in selection.select_plugins([THROWAWAY_IN, '/camera/image_raw'])]
    assert 'throwaway_demo' in names and 'vision' in names
    assert 'language' not in names  # its topic is not in this bag
    assert 'throwaway_fixture' not in names  # fixtures never take part
    assert 'throwaway_demo' not in [s.name for s in selection.select_plugins(
        ['/camera/image_raw', '/speech/text'])]
    picked = selection.select_plugins([THROWAWAY_IN])
    assert [s.name for s in picked] == ['throwaway_demo']
    assert selection.node_module(picked[0]) == 'sage_irp_ros.plugins.fixture.node'
    assert selection.replay_topics(picked) == [THROWAWAY_IN]
    assert selection.record_topics(picked) == ['/throwaway_demo/out',
                                               *selection.COMMON_RECORD_TOPICS]
    assert scoring.expected_inputs(picked, language_truth()) == {'throwaway_demo': 2}
    assert scoring.sent_inputs(picked, {THROWAWAY_IN: 5, '/other': 1}) == {'throwaway_demo': 5}


def test_selection_after_unregister_and_builtin_topics():
    assert 'throwaway_demo' not in [s.name for s in selection.demo_specs()]
    picked = selection.select_plugins(['/camera/image_raw', '/speech/text'])
    assert [s.name for s in picked] == ['vision', 'language']
    assert selection.record_topics(picked) == [
        '/vision/mask', '/vision/overlay', '/language/text_repaired', '/language/meaning',
        '/irp/telemetry', '/irp/telemetry_json', '/irp/budget', '/diagnostics']
    # the microphone's stream too: audio takes part, its transcripts recorded
    picked = selection.select_plugins(['/camera/image_raw', '/speech/text', '/audio/raw'])
    assert [s.name for s in picked] == ['vision', 'language', 'audio']
    assert picked[-1].demo.stream and '/speech/transcript' in selection.record_topics(picked)


def test_command_line_has_a_model_option_per_demo_plugin(throwaway):
    from sage_irp_ros.demo.__main__ import parse_args
    args = parse_args(['--vision-model', 'v.pt', '--throwaway-demo-model', 't.pt',
                       '--regression', '--no-plots', '--quiet', '--rate', '2'])
    assert args.vision_model == 'v.pt' and args.throwaway_demo_model == 't.pt'
    assert args.language_model is None and args.regression and args.rate == 2.0


# ------------------------------------------------------------------------ summary, plots

def telemetry(kind, entity, steps, stamp_ns=None, spent=2.0):
    rec = {'plugin': kind, 'entity_id': entity, 'steps': steps, 'halt_reason': 'stable',
           'E_trace': [1.0 / (1 + i) for i in range(steps + 1)],
           'budget': {'ATP_granted': 10.0, 'ATP_spent': spent, 'time_ms': 3.0},
           'trust': {'monotonicity_ratio': 1.0},
           'metadata': {} if stamp_ns is None else {'input_stamp': stamp_ns * 1e-9}}
    return NS(data=json.dumps(rec))


def synthetic_recording(specs, t0=10 ** 9):
    rec = {'/irp/telemetry_json': [], '/irp/budget': [], '/diagnostics': []}
    for i, spec in enumerate(specs):
        node = f'/{spec.node_name}'
        for j in range(3):
            t = t0 + (10 * i + j) * 10 ** 7
            stamp = [S1, S2, S3][j] if spec.name == 'vision' else None
            rec['/irp/telemetry_json'].append((t, telemetry(spec.kind, node, j + 1, stamp)))
            rec['/irp/budget'].append((t, NS(plugin=node, cycle=j, atp_granted=5.0 + j)))
            rec['/diagnostics'].append((t, NS(status=[NS(
                name=f'{node}: allocation', values=[NS(key='trust', value=str(1 + j))])])))
    rgb = np.full((2, 2, 3), 200, np.uint8)
    rec['/vision/overlay'] = [(t0, rgb8(rgb, s)) for s in (S1, S2, S3)]
    return rec


def test_summarize_from_registry_hooks():
    spec = registry.get('language')
    recorded = {'/language/text_repaired': [(1, NS(data='a b c')), (2, NS(data='x q z'))],
                '/irp/telemetry_json': [(1, telemetry('language', '/language_irp_node', 2)),
                                        (2, telemetry('language', '/language_irp_node', 4)),
                                        (3, telemetry('vision', '/vision_irp_node', 9))]}
    out = scoring.summarize([spec], recorded, language_truth(), sent={'language': 2},
                            counters={'language': {'received': '2', 'dropped_stale': '0',
                                                   'bad_input': '0'}},
                            max_steps={'language': 8}, trust={'language': 0.5},
                            grants={'/language_irp_node': {1: 3.0, 2: 4.0}})
    s = out['language']
    assert s['answered'] == 2 and s['unaccounted'] == 0 and s['lost_in_transport'] == 0
    assert s['runs'] == 2 and s['mean_steps'] == 3.0 and s['compute_saved'] == 0.625
    assert s['quality']['value'] == 0.6667 and s['atp_granted_by_orchestrator'] == 7.0
    table = scoring.format_table(out)
    assert 'language' in table and 'token_accuracy 0.667 (n=2)' in table
    header, _, row = table.splitlines()
    assert [c.strip() for c in header.split('|')][1:4] == ['inputs', 'received', 'answered']
    assert [c.strip() for c in row.split('|')][1:4] == ['2', '2', '2']
    golden = scoring.golden_of({'bag': 'b', 'rate': 1.0, 'mode': 'regression', 'plugins': out})
    assert golden['plugins']['language'] == {'inputs': 2, 'answered': 2, 'mean_steps': 3.0,
                                             'quality': {'metric': 'token_accuracy',
                                                         'value': 0.6667}}


def _pngs(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith('.png'))


def test_plots_with_one_plugin(tmp_path, throwaway):
    specs = [throwaway]
    paths = draw_plots(str(tmp_path), specs, synthetic_recording(specs), language_truth(),
                        10 ** 9)
    assert _pngs(tmp_path) == ['budget_trust.png', 'energy_traces.png', 'steps_per_input.png']
    assert sorted(os.path.basename(p) for p in paths) == _pngs(tmp_path)
    for p in paths:
        assert os.path.getsize(p) > 1000


def test_plots_with_three_plugins(tmp_path, throwaway):
    specs = [registry.get('vision'), registry.get('language'), throwaway]
    truth = dict(vision_truth(), **language_truth())
    paths = draw_plots(str(tmp_path), specs, synthetic_recording(specs), truth, 10 ** 9)
    # The vision hook module adds overlays.png (its plots function).
    assert _pngs(tmp_path) == ['budget_trust.png', 'energy_traces.png', 'overlays.png',
                               'steps_per_input.png']
    assert len(paths) == 4 and all(os.path.getsize(p) > 1000 for p in paths)
    assert len({colour_of(i) for i in range(3)}) == 3


def test_load_truth_keys_npz_arrays_by_stamp(tmp_path):
    base = str(tmp_path / 'bag')
    with open(base + '_truth.json', 'w') as f:
        json.dump({'frames': []}, f)
    np.savez(base + '_truth.npz', stamps_ns=np.array([5, 7]),
             class_maps=np.zeros((2, 3, 3), np.uint8))
    truth = scoring.load_truth(base)
    assert sorted(truth['class_maps']) == [5, 7] and truth['class_maps'][7].shape == (3, 3)


# ----------------------------------------------------------------- processes and bench

def test_child_process_stops_with_sigint_and_kills_a_hung_one(tmp_path):
    quiet = ChildProcess('sleeper', [sys.executable, '-c',
                                     'import time; print("up", flush=True); time.sleep(60)'],
                         str(tmp_path))
    assert wait(lambda: 'up' in quiet.log(), 20.0, [quiet], period=0.05)
    t = time.monotonic()
    assert quiet.stop(timeout=10) != 0 and not quiet.alive()
    assert time.monotonic() - t < 10
    hung = ChildProcess('hung', [sys.executable, '-c',
                                 'import signal, time; signal.signal(signal.SIGINT, '
                                 'signal.SIG_IGN); print("up", flush=True); time.sleep(60)'],
                        str(tmp_path))
    assert wait(lambda: 'up' in hung.log(), 20.0, [hung], period=0.05)
    assert hung.stop(timeout=0.5) == -9
    assert hung.stop() == -9  # stopping again only returns the code
    assert os.path.basename(hung.log_path) == 'hung.log' and 'up' in hung.tail(1)
    done = ChildProcess('done', [sys.executable, '-c', 'pass'], str(tmp_path))
    assert not wait(lambda: False, 20.0, [done], period=0.05)  # it exited: stop waiting


def test_bench_runs_every_registered_benchmark_then_the_orchestrator():
    out = subprocess.run([sys.executable, 'bench/run_all.py', '--dry-run'], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [ln.split(' ', 2)[2] for ln in out.stdout.splitlines() if ln.startswith('+ ')]
    want = [' '.join(s.bench) for s in registry.specs() if s.bench]
    assert lines == want + ['bench/orchestrator_bench.py --cycles 60']


def test_a_stream_plugin_accounts_for_chunks_received_and_answers_by_segment():
    """Audio in the replay demo: 64 chunks in, 2 transcripts out; a chunk is accounted for when
    the node received it (it keeps every chunk), the answers and quality come from score()."""
    from types import SimpleNamespace as NS

    from sage_irp_ros import registry
    audio = registry.get('audio')
    truth = {'audio': {'transcript': [{'text': 'go to the kitchen'}, {'text': 'stop now'}]}}
    msgs = [(0, NS(header=NS(stamp=NS(sec=s, nanosec=0)), text=t))
            for s, t in ((2, 'stop now'), (1, 'go to the kitchen'))]
    recorded = {'/speech/transcript': msgs, '/irp/telemetry_json': []}
    counters = {'audio': {'received': '64', 'dropped_stale': '0', 'bad_input': '0'}}
    out = scoring.summarize([audio], recorded, truth, {'audio': 64}, counters, {'audio': 8},
                            {}, {})['audio']
    assert out['answered'] == 2 and out['unaccounted'] == 0
    assert out['quality']['metric'] == 'word_accuracy' and out['quality']['value'] == 1.0
    counters['audio']['received'] = '61'
    out = scoring.summarize([audio], recorded, truth, {'audio': 64}, counters, {'audio': 8},
                            {}, {})['audio']
    assert out['unaccounted'] == 3 and out['lost_in_transport'] == 3
    assert scoring.expected_inputs([audio], truth) == {'audio': 2}
