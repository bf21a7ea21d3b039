"""``make demo``: replay the sample bag through the real node graph, watch it, score it.

``python -m sage_irp_ros.demo`` (what ``make demo`` runs):

1. starts ``orchestrator_node``, ``vision_irp_node`` and ``language_irp_node``, each in its own
   process with ``config/sage_irp.yaml`` (plus a fresh trust file and faster diagnostics), and
   waits until they are up;
2. starts the recorder (:mod:`sage_irp_ros.tools.record`) on the output topics;
3. replays ``data/sample_bag`` (:mod:`sage_irp_ros.tools.replay`) with its original timing,
   printing progress once a second (per plugin: inputs done, halt reasons, ATP);
4. waits until every input is answered or accounted for, stops everything with SIGINT;
5. scores the recorded outputs against the bag's ground truth and writes ``out/demo/``:
   ``summary.json``, ``telemetry.jsonl`` (every line schema-valid), ``output_bag/`` (mcap),
   PNG plots and the node logs; prints the summary table.

It exits 0 only when every stage worked: nodes up, recorder subscribed, every input answered or
counted as dropped (stale) or refused, telemetry valid, clean shutdown. ``--regression`` makes
budgets and deadlines non-binding (the summary then depends on the models and the bag, not on
the machine's load); ``--write-golden`` (implies ``--regression``) also writes the regression
test's golden summary (``test/golden/replay_summary.json``).
Processes run in a private ``ROS_DOMAIN_ID`` (unless one is set), localhost discovery, and Fast
DDS's ``LARGE_DATA`` transport (camera images between processes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Dict, List, Optional

import numpy as np

from sage_irp_ros.ros.conversions import image_to_rgb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = {  # plugin kind -> (module, node name)
    'vision': ('sage_irp_ros.plugins.vision.node', 'vision_irp_node'),
    'language': ('sage_irp_ros.plugins.language.node', 'language_irp_node'),
}
ORCHESTRATOR = ('sage_irp_ros.ros.orchestrator_node', 'orchestrator_node')
INPUT_TOPICS = {'vision': '/camera/image_raw', 'language': '/speech/text'}
RECORD_TOPICS = ('/vision/mask', '/vision/overlay', '/language/text_repaired',
                 '/language/meaning', '/irp/telemetry', '/irp/telemetry_json', '/irp/budget',
                 '/diagnostics')
GOLDEN_KEYS = ('inputs', 'answered', 'mean_steps', 'quality')
DIAG_PERIOD_S = 0.5
# --regression: ATP per cycle so large, and no deadline, that no run halts on budget or time,
# so steps and quality depend on the models and the bag only (not on this machine's load).
REGRESSION_TOTAL_ATP = 1e6


def find_path(rel: str) -> str:
    """Return ``rel`` under the source checkout, the working folder or the package share."""
    for base in (ROOT, os.getcwd()):
        if os.path.exists(os.path.join(base, rel)):
            return os.path.join(base, rel)
    try:
        from ament_index_python.packages import get_package_share_directory
        return os.path.join(get_package_share_directory('sage_irp_ros'), rel)
    except Exception:  # noqa: BLE001 - no ament index: report the checkout's path
        return os.path.join(ROOT, rel)


def setup_environment(out_dir: str) -> Dict[str, str]:
    """Set the DDS isolation and transport variables (before rclpy is imported)."""
    env = os.environ
    if not env.get('ROS_DOMAIN_ID'):
        env['ROS_DOMAIN_ID'] = str(1 + os.getpid() % 100)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.pop('ROS_LOCALHOST_ONLY', None)
    env['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
    env.setdefault('ROS_LOG_DIR', os.path.join(out_dir, 'logs', 'ros'))
    env['PYTHONUNBUFFERED'] = '1'
    return {k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                'FASTDDS_BUILTIN_TRANSPORTS')}


class Proc:
    """A child process with its output in a log file; stopped with SIGINT."""

    def __init__(self, name: str, args: List[str], log_dir: str):
        self.name = name
        self.log_path = os.path.join(log_dir, f'{name}.log')
        self._log = open(self.log_path, 'w', encoding='utf-8')
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGINT the process and return its exit code (killed when it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def tail(self, n: int = 15) -> str:
        """Return the last ``n`` lines of the log."""
        with open(self.log_path, encoding='utf-8', errors='replace') as f:
            return ''.join(f.readlines()[-n:])


class Monitor:
    """The demo's own node: live telemetry, grants and diagnostics for the progress line."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        from sage_irp_ros.msg import BudgetGrant
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('sage_irp_demo', context=self.context)
        self.lock = threading.Lock()
        self.runs = defaultdict(list)           # kind -> telemetry records
        self.granted = defaultdict(dict)        # entity -> {cycle: atp}
        self.diag = {}                          # status name -> {key: value}
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(String, '/irp/telemetry_json', self._on_telemetry, qos)
        self.node.create_subscription(BudgetGrant, '/irp/budget', self._on_grant, qos)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - shutdown races end the thread
            pass

    def _on_telemetry(self, msg) -> None:
        try:
            rec = json.loads(msg.data)
        except ValueError:
            return
        with self.lock:
            self.runs[rec.get('plugin')].append(rec)

    def _on_grant(self, msg) -> None:
        with self.lock:
            cycles = self.granted[msg.plugin]
            cycles[msg.cycle] = max(cycles.get(msg.cycle, 0.0), msg.atp_granted)

    def _on_diag(self, msg) -> None:
        with self.lock:
            for st in msg.status:
                self.diag[st.name] = {kv.key: kv.value for kv in st.values}

    def host_counters(self, node_name: str) -> Optional[dict]:
        """Return the newest ``/diagnostics`` counters of a plugin node (or None)."""
        with self.lock:
            return self.diag.get(f'/{node_name}: irp host')

    def trust(self, node_name: str) -> Optional[float]:
        """Return the orchestrator's newest trust of a plugin node (or None)."""
        with self.lock:
            d = self.diag.get(f'/{node_name}: allocation')
        return float(d['trust']) if d and 'trust' in d else None

    def subscribed_by(self, topic: str, node_name: str) -> bool:
        """Return True when ``node_name`` subscribes to ``topic``."""
        return any(i.node_name == node_name
                   for i in self.node.get_subscriptions_info_by_topic(topic))

    def get_int_parameter(self, node_name: str, name: str, timeout: float = 5.0):
        """Return an integer parameter of a node through its get_parameters service."""
        from rcl_interfaces.srv import GetParameters
        cli = self.node.create_client(GetParameters, f'/{node_name}/get_parameters')
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                return None
            fut = cli.call_async(GetParameters.Request(names=[name]))
            end = time.monotonic() + timeout
            while not fut.done() and time.monotonic() < end:
                time.sleep(0.02)
            if not fut.done() or not fut.result().values:
                return None
            return int(fut.result().values[0].integer_value)
        finally:
            self.node.destroy_client(cli)

    def close(self) -> None:
        """Shut the node down."""
        self.context.try_shutdown()
        self._thread.join(timeout=5)
        self.executor.shutdown()


def _wait(predicate, timeout: float, procs=(), period: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if any(not p.alive() for p in procs):
            return False
        time.sleep(period)
    return bool(predicate())


def _progress_line(mon: Monitor, sent: Dict[str, int], t: float) -> str:
    parts = []
    with mon.lock:
        runs = {k: list(v) for k, v in mon.runs.items()}
    for kind, (_, node_name) in PLUGINS.items():
        recs = runs.get(kind, [])
        halts = Counter(r['halt_reason'] for r in recs)
        spent = sum(r['budget']['ATP_spent'] for r in recs)
        c = mon.host_counters(node_name) or {}
        parts.append(f'{kind} {len(recs)}/{sent.get(kind, "?")} done'
                     f' (dropped {c.get("dropped_stale", "?")}; halts '
                     + (', '.join(f'{h} {n}' for h, n in halts.most_common()) or '-')
                     + f'; ATP spent {spent:.0f})')
    return f'[{t:5.1f} s] ' + ' | '.join(parts)


# --------------------------------------------------------------------------- scoring

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
    """Load the ground truth written beside the bag (json + npz)."""
    base = os.path.normpath(bag)
    with open(base + '_truth.json', encoding='utf-8') as f:
        truth = json.load(f)
    npz = np.load(base + '_truth.npz')
    truth['class_maps'] = dict(zip(npz['stamps_ns'].tolist(), npz['class_maps'], strict=True))
    return truth


def _stamp_ns(header) -> int:
    return header.stamp.sec * 10 ** 9 + header.stamp.nanosec


def match_utterance(text: str, utterances: List[dict]) -> Optional[dict]:
    """Return the utterance whose unmasked words ``text`` (a repaired text) keeps verbatim."""
    words = text.split(' ')
    for u in utterances:
        masked = u['masked_text'].split(' ')
        if len(masked) == len(words) and all(
                m == w for m, w in zip(masked, words, strict=True) if m != '[MASK]'):
            return u
    return None


def score(recorded: Dict[str, list], truth: dict) -> dict:
    """Score the recorded outputs: vision mIoU (scene frames), language token accuracy."""
    from sage_irp_ros.plugins.vision.evaluate import IoUAccumulator
    frames = {f['stamp_ns']: f for f in truth['frames']}
    acc = IoUAccumulator(len(truth['classes']))
    acc_easy, acc_hard = IoUAccumulator(len(truth['classes'])), IoUAccumulator(
        len(truth['classes']))
    answered_frames = set()
    for _, m in recorded.get('/vision/mask', []):
        t = _stamp_ns(m.header)
        if t not in frames or t in answered_frames:
            continue
        answered_frames.add(t)
        if t in truth['class_maps']:
            gt = truth['class_maps'][t]
            mask = image_to_rgb(m)[:, :, 0]  # mono8 class ids
            acc.add(mask, gt)
            (acc_easy if frames[t]['difficulty'] < 0.5 else acc_hard).add(mask, gt)
    n_scenes = sum(1 for t in answered_frames if t in truth['class_maps'])
    correct = total = 0
    answered_utts = set()
    for _, m in recorded.get('/language/text_repaired', []):
        u = match_utterance(m.data, truth['utterances'])
        if u is None or u['index'] in answered_utts:
            continue
        answered_utts.add(u['index'])
        words = m.data.split(' ')
        for p in u['masked_positions']:
            correct += int(words[p] == u['tokens'][p])
            total += 1
    return {
        'vision': {'answered': len(answered_frames), 'quality': {
            'metric': 'mIoU', 'value': round(acc.miou(), 4), 'n': n_scenes,
            'easy_half': round(acc_easy.miou(), 4), 'hard_half': round(acc_hard.miou(), 4),
            'per_class': [None if v is None else round(v, 4) for v in acc.per_class()]}},
        'language': {'answered': len(answered_utts), 'quality': {
            'metric': 'token_accuracy', 'value': round(correct / max(total, 1), 4),
            'n': len(answered_utts), 'masked_tokens': total}},
    }


def summarize(recorded, truth, sent, counters, max_steps, trust, grants) -> dict:
    """Build the per-plugin summary from the recorded bag, the node counters and the truth."""
    records = [json.loads(m.data) for _, m in recorded.get('/irp/telemetry_json', [])]
    scores = score(recorded, truth)
    out = {}
    for kind, (_, node_name) in PLUGINS.items():
        recs = [r for r in records if r['plugin'] == kind]
        steps = [r['steps'] for r in recs]
        c = counters.get(kind) or {}
        cap = max_steps.get(kind)
        granted = [r['budget']['ATP_granted'] for r in recs]
        received = int(c.get('received', -1))
        dropped = int(c.get('dropped_stale', 0))
        bad = int(c.get('bad_input', 0))
        answered = scores[kind]['answered']
        n_in = sent.get(kind, 0)
        out[kind] = {
            'node': f'/{node_name}',
            'inputs': n_in,
            'received': received,
            'answered': answered,
            'dropped_stale': dropped,
            'bad_input': bad,
            'lost_in_transport': max(0, n_in - received) if received >= 0 else None,
            'unaccounted': n_in - answered - dropped - bad,
            'runs': len(recs),
            'mean_steps': round(float(np.mean(steps)), 4) if steps else None,
            'max_steps': cap,
            'compute_saved': (round(1.0 - sum(steps) / (len(steps) * cap), 4)
                              if steps and cap else None),
            'halt_reasons': dict(Counter(r['halt_reason'] for r in recs).most_common()),
            'quality': scores[kind]['quality'],
            'atp_granted_by_orchestrator': round(sum(grants.get(f'/{node_name}', {}).values()),
                                                 3),
            'runs_on_grant': sum(g is not None for g in granted),
            'atp_granted_to_runs': round(sum(g for g in granted if g is not None), 3),
            'atp_spent': round(sum(r['budget']['ATP_spent'] for r in recs), 3),
            'mean_time_ms': (round(float(np.mean([r['budget']['time_ms'] for r in recs])), 3)
                             if recs else None),
            'mean_monotonicity': (round(float(np.mean(
                [r['trust']['monotonicity_ratio'] for r in recs])), 4) if recs else None),
            'trust': None if trust.get(kind) is None else round(trust[kind], 4),
        }
    return out


def format_table(plugins: dict) -> str:
    """Return the summary table as text."""
    cols = ('plugin', 'inputs', 'answered', 'dropped', 'mean steps', 'max', 'saved',
            'halt reasons', 'quality', 'ATP granted', 'ATP spent', 'trust')
    rows = []
    for kind, s in plugins.items():
        q = s['quality']
        rows.append((
            kind, str(s['inputs']), str(s['answered']), str(s['dropped_stale']),
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


# ----------------------------------------------------------------------------- plots

def plots(out_dir: str, recorded, truth, t0_ns: int) -> List[str]:
    """Write the PNG plots; return their paths."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from sage_irp_ros.plugins.vision.node import PALETTE
    records = [(t, json.loads(m.data)) for t, m in recorded.get('/irp/telemetry_json', [])]
    frame_of = {f['stamp_ns']: f for f in truth['frames']}
    paths = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)

    fig, axes = plt.subplots(1, len(PLUGINS), figsize=(11, 4))
    for ax, kind in zip(axes, PLUGINS, strict=True):
        recs = [r for _, r in records if r['plugin'] == kind]
        cmap = plt.get_cmap('viridis')
        for i, r in enumerate(recs):
            ax.plot(range(len(r['E_trace'])), r['E_trace'], '-o', ms=2, lw=0.8,
                    color=cmap(i / max(1, len(recs) - 1)))
        ax.set(title=f'{kind}: energy per step ({len(recs)} runs, colour = order)',
               xlabel='step', ylabel='energy E')
    save(fig, 'energy_traces.png')

    fig, axes = plt.subplots(1, len(PLUGINS), figsize=(11, 4))
    for ax, kind in zip(axes, PLUGINS, strict=True):
        recs = [r for _, r in records if r['plugin'] == kind]
        if kind == 'vision':
            xs, ys, cs = [], [], []
            for r in recs:
                t = int(round((r.get('metadata') or {}).get('input_stamp', 0) * 1e9 / 1e6)) * 10**6
                f = frame_of.get(t)
                if f is None:
                    continue
                xs.append(f['index'])
                ys.append(r['steps'])
                cs.append('tab:blue' if f['kind'] == 'scene' else 'tab:orange')
            ax.scatter(xs, ys, c=cs, s=14)
            ax.set(title='vision: steps per frame (blue: scenes, difficulty 0 -> 1; '
                         'orange: photos)', xlabel='frame', ylabel='steps')
        else:
            ax.bar(range(len(recs)), [r['steps'] for r in recs], color='tab:green')
            ax.set(title='language: steps per utterance', xlabel='utterance (arrival order)',
                   ylabel='steps')
        ax.title.set_fontsize(9)
    save(fig, 'steps_per_input.png')

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for kind, colour in zip(PLUGINS, ('tab:blue', 'tab:green'), strict=False):
        node = f'/{PLUGINS[kind][1]}'
        g = sorted((t, m.cycle, m.atp_granted) for t, m in recorded.get('/irp/budget', [])
                   if m.plugin == node)
        per_cycle = {}
        for t, cyc, atp in g:
            per_cycle[cyc] = (per_cycle.get(cyc, (t, 0.0))[0], max(atp, per_cycle.get(
                cyc, (t, 0.0))[1]))
        if per_cycle:
            ts, atps = zip(*sorted(per_cycle.values()), strict=True)
            ax1.step([(t - t0_ns) * 1e-9 for t in ts], atps, where='post', color=colour,
                     label=f'{kind} granted / cycle')
        spent = [(t, r['budget']['ATP_spent']) for t, r in records if r['plugin'] == kind]
        if spent:
            ax1.plot([(t - t0_ns) * 1e-9 for t, _ in spent], [s for _, s in spent], 'x',
                     color=colour, label=f'{kind} spent / run')
        trust = []
        for t, arr in recorded.get('/diagnostics', []):
            for st in arr.status:
                if st.name == f'{node}: allocation':
                    vals = {kv.key: kv.value for kv in st.values}
                    trust.append(((t - t0_ns) * 1e-9, float(vals['trust'])))
        if trust:
            ax2.plot(*zip(*trust, strict=True), '-o', ms=3, color=colour, label=kind)
    ax1.set(ylabel='ATP', title='budget: ATP granted per cycle and spent per run')
    ax1.legend(fontsize=8)
    ax2.set(xlabel='time since the demo started recording, s', ylabel='trust',
            title='trust (orchestrator)')
    ax2.legend(fontsize=8)
    save(fig, 'budget_trust.png')

    overlays = {_stamp_ns(m.header): m for _, m in recorded.get('/vision/overlay', [])}
    scenes = [f for f in truth['frames'] if f['kind'] == 'scene']
    picks = [scenes[i] for i in np.linspace(0, len(scenes) - 1, 4).astype(int)] + [
        f for f in truth['frames'] if f['kind'] == 'photo']
    picks = [f for f in picks if f['stamp_ns'] in overlays]
    if picks:
        fig, axes = plt.subplots(2, len(picks), figsize=(2.2 * len(picks), 4.6), squeeze=False)
        for j, f in enumerate(picks):
            m = overlays[f['stamp_ns']]
            img = image_to_rgb(m)
            axes[0, j].imshow(img)
            title = (f'd={f["difficulty"]:.2f}' if f['kind'] == 'scene' else f['name'])
            axes[0, j].set_title(f'#{f["index"]} {title}', fontsize=8)
            gt = truth['class_maps'].get(f['stamp_ns'])
            if gt is not None:
                axes[1, j].imshow(PALETTE[gt % len(PALETTE)])
                axes[1, j].set_title('truth', fontsize=8)
            for ax in axes[:, j]:
                ax.axis('off')
        save(fig, 'overlays.png')
    return paths


# ------------------------------------------------------------------------------ run

def run(args) -> int:
    """Run the demo; return the exit code."""
    out_dir = os.path.abspath(args.out)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    log_dir = os.path.join(out_dir, 'logs')
    os.makedirs(log_dir)
    env = setup_environment(out_dir)
    bag = os.path.abspath(args.bag or find_path(os.path.join('data', 'sample_bag')))
    config = os.path.abspath(args.config or find_path(os.path.join('config', 'sage_irp.yaml')))
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    def fail(*a):
        print(*a, file=sys.stderr, flush=True)
    say(f'sage_irp demo: bag {bag}, config {config}, ROS_DOMAIN_ID {env["ROS_DOMAIN_ID"]}, '
        f'out {out_dir}')
    truth = load_truth(bag)
    from sage_irp_ros.tools.replay import bag_topics
    replay_topics = [t for t in INPUT_TOPICS.values() if t in bag_topics(bag)]

    t_start = time.monotonic()
    checks = {}
    procs: List[Proc] = []
    mon = Monitor()
    recorder = replayer = None
    code = {}
    try:
        py = sys.executable
        base = ['--ros-args', '--params-file', config]
        orch_extra, plugin_extra = [], []
        if args.regression:  # budgets and deadlines never bind: the plugins' own halting
            orch_extra = ['-p', f'total_atp:={REGRESSION_TOTAL_ATP}']
            plugin_extra = ['-p', 'deadline_ms:=0.0']
        procs.append(Proc('orchestrator_node', [
            py, '-m', ORCHESTRATOR[0], *base, '-p', f'trust_file:={out_dir}/trust.json',
            '-p', f'diagnostics_period_s:={DIAG_PERIOD_S}', *orch_extra], log_dir))
        for kind, (module, name) in PLUGINS.items():
            extra = list(plugin_extra)
            if kind == 'vision' and args.vision_model:
                extra += ['-p', f'model_path:={os.path.abspath(args.vision_model)}']
            procs.append(Proc(name, [py, '-m', module, *base, *extra,
                                     '-p', f'diagnostics_period_s:={DIAG_PERIOD_S}'], log_dir))
        say('starting orchestrator_node, vision_irp_node, language_irp_node ...')
        up = _wait(lambda: all(mon.host_counters(n) for _, n in PLUGINS.values())
                   and all(mon.node.count_subscribers(t) > 0 for t in replay_topics)
                   and mon.node.count_publishers('/irp/budget') > 0, args.startup_timeout,
                   procs)
        checks['nodes_up'] = up
        if not up:
            fail('nodes did not come up within --startup-timeout')
            for p in procs:
                fail(f'--- {p.name} ({"running" if p.alive() else "exited"}):\n{p.tail()}')
            return 1
        say(f'nodes up after {time.monotonic() - t_start:.1f} s')
        max_steps = {k: mon.get_int_parameter(n, 'max_steps') for k, (_, n) in PLUGINS.items()}

        bag_out = os.path.join(out_dir, 'output_bag')
        recorder = Proc('recorder', [py, '-m', 'sage_irp_ros.tools.record', bag_out,
                                     *RECORD_TOPICS, '--summary-json',
                                     os.path.join(log_dir, 'record_summary.json')], log_dir)
        ok = _wait(lambda: all(mon.subscribed_by(t, 'sage_irp_record') for t in RECORD_TOPICS),
                   30.0, [recorder])
        checks['recorder_subscribed'] = ok
        if not ok:
            fail(f'recorder did not subscribe:\n{recorder.tail()}')
            return 1
        time.sleep(0.5)  # let the new subscriptions match on the publishers' side

        t_rec0 = time.time_ns()
        replay_summary = os.path.join(log_dir, 'replay_summary.json')
        replayer = Proc('replay', [py, '-m', 'sage_irp_ros.tools.replay', bag, '--rate',
                                   str(args.rate), '--topics', *replay_topics,
                                   '--wait-subscribers', '5', '--summary-json', replay_summary],
                        log_dir)
        sent_expected = {'vision': len(truth['frames']),
                         'language': len(truth['utterances'])}
        t_show = 0.0
        while replayer.alive():
            time.sleep(0.1)
            if time.monotonic() - t_show >= 1.0:
                t_show = time.monotonic()
                say(_progress_line(mon, sent_expected, t_show - t_start))
        code['replay'] = replayer.stop()
        checks['replay_ok'] = code['replay'] == 0
        with open(replay_summary, encoding='utf-8') as f:
            rs = json.load(f)['messages']
        sent = {k: rs.get(INPUT_TOPICS[k], 0) for k in PLUGINS}

        def settled():
            for kind, (_, name) in PLUGINS.items():
                c = mon.host_counters(name)
                if not c:
                    return False
                done = int(c['runs']) + int(c['dropped_stale']) + int(c['bad_input'])
                with mon.lock:
                    n_tel = len(mon.runs.get(kind, []))
                if int(c['received']) < sent[kind] or done < int(c['received']) \
                        or n_tel < int(c['runs']):
                    return False
            return True

        # Quiet for two diagnostics periods: every received input has been processed.
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and not settled():
            if time.monotonic() - t_show >= 1.0:
                t_show = time.monotonic()
                say(_progress_line(mon, sent, t_show - t_start))
            time.sleep(0.1)
        time.sleep(2.5 * DIAG_PERIOD_S)
        checks['all_inputs_processed'] = settled()
        say(_progress_line(mon, sent, time.monotonic() - t_start))
        counters = {k: mon.host_counters(n) for k, (_, n) in PLUGINS.items()}
        trust = {k: mon.trust(n) for k, (_, n) in PLUGINS.items()}
        with mon.lock:
            grants = {k: dict(v) for k, v in mon.granted.items()}
            live_runs = {k: len(v) for k, v in mon.runs.items()}

        code['recorder'] = recorder.stop()
        recorder = None
        for p in procs:
            code[p.name] = p.stop()
        procs = []
        checks['clean_shutdown'] = all(c == 0 for c in code.values())

        recorded = read_bag(bag_out)
        sink = JsonlSinkCounter(os.path.join(out_dir, 'telemetry.jsonl'))
        for _, m in recorded.get('/irp/telemetry_json', []):
            sink.write(json.loads(m.data))
        sink.close()
        checks['telemetry_valid'] = sink.rejected == 0 and sink.written > 0
        plugins = summarize(recorded, truth, sent, counters, max_steps, trust, grants)
        for kind, s in plugins.items():
            checks[f'{kind}_all_answered_or_accounted'] = (
                s['unaccounted'] == 0 and s['answered'] > 0 and s['lost_in_transport'] == 0)
            checks[f'{kind}_telemetry_recorded'] = s['runs'] == live_runs.get(kind, 0)
        paths = [] if args.no_plots else plots(out_dir, recorded, truth, t_rec0)
        ok = all(checks.values())
        summary = {
            'bag': os.path.relpath(bag, ROOT), 'rate': args.rate,
            'mode': 'regression' if args.regression else 'config',
            'wall_s': round(time.monotonic() - t_start, 2), 'environment': env,
            'plugins': plugins, 'checks': checks, 'ok': ok,
            'outputs': {'telemetry_jsonl': 'telemetry.jsonl', 'bag': 'output_bag',
                        'plots': [os.path.basename(p) for p in paths],
                        'telemetry_lines': sink.written},
        }
        with open(os.path.join(out_dir, 'summary.json'), 'w', encoding='utf-8') as f:
            json.dump(summary, f, indent=1)
            f.write('\n')
        if args.write_golden:
            write_golden(summary, args.write_golden)
            say(f'golden summary written to {args.write_golden}')
        print('\n' + format_table(plugins), flush=True)
        print('\nchecks: ' + ', '.join(f'{k} {"ok" if v else "FAILED"}'
                                        for k, v in checks.items()), flush=True)
        print(f'wrote {out_dir}: summary.json, telemetry.jsonl ({sink.written} records), '
              f'output_bag/, {len(paths)} plots, logs/; {summary["wall_s"]} s', flush=True)
        return 0 if ok else 1
    finally:
        for p in [replayer, recorder, *procs]:
            if p is not None and p.alive():
                p.stop()
        mon.close()


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
        kind: {'inputs': s['inputs'], 'answered': s['answered'],
               'mean_steps': s['mean_steps'],
               'quality': {'metric': s['quality']['metric'], 'value': s['quality']['value']}}
        for kind, s in summary['plugins'].items()}}


def write_golden(summary: dict, path: str) -> None:
    """Write the golden summary of the regression test."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(golden_of(summary), f, indent=1)
        f.write('\n')


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(prog='python -m sage_irp_ros.demo',
                                 description='Replay the sample bag through the nodes, record '
                                             'and score the outputs.')
    ap.add_argument('--bag', default=None, help='bag to replay (default: data/sample_bag; '
                                                'its ground truth <bag>_truth.json/.npz)')
    ap.add_argument('--config', default=None, help='parameter file (config/sage_irp.yaml)')
    ap.add_argument('--out', default=os.path.join('out', 'demo'), help='output folder '
                                                                       '(replaced)')
    ap.add_argument('--vision-model', default=None,
                    help='checkpoint for the vision node (default: the shipped weights)')
    ap.add_argument('--rate', type=float, default=None,
                    help='replay speed factor (default 1.0; 0.5 with --regression, so that a '
                         'busy machine does not drop a frame as stale and change the summary)')
    ap.add_argument('--startup-timeout', type=float, default=120.0,
                    help='seconds the nodes may take to come up')
    ap.add_argument('--drain-timeout', type=float, default=30.0,
                    help='seconds to wait after the replay for the last answers')
    ap.add_argument('--regression', action='store_true',
                    help='budgets and deadlines never bind (total_atp 1e6, deadline_ms 0), so '
                         'the summary does not depend on the machine\'s load; the regression '
                         'test and --write-golden use it')
    ap.add_argument('--no-plots', action='store_true', help='skip the PNG plots')
    ap.add_argument('--quiet', action='store_true', help='no progress lines')
    ap.add_argument('--write-golden', nargs='?', default=None,
                    const=os.path.join(ROOT, 'test', 'golden', 'replay_summary.json'),
                    help='also write the regression test\'s golden summary (default path: '
                         'test/golden/replay_summary.json)')
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """Run the demo (``make demo``)."""
    args = parse_args(argv)
    if args.write_golden:
        args.regression = True
    if args.rate is None:
        args.rate = 0.5 if args.regression else 1.0
    if not math.isfinite(args.rate) or args.rate <= 0:
        print('--rate must be > 0', file=sys.stderr)
        return 2
    return run(args)


if __name__ == '__main__':
    raise SystemExit(main())
