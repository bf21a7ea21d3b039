"""``python -m sage_irp_ros.demo`` (``make demo``): the command line and the run itself.

See :mod:`sage_irp_ros.demo` for what a run does. The plugins come from the registry
(:mod:`sage_irp_ros.demo.selection`); each one with a demo gets a ``--<name>-model`` option
(its node's ``model_path`` parameter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from typing import Dict, List

from sage_irp_ros.demo.monitor import Monitor, progress_line
from sage_irp_ros.demo.plots import plots
from sage_irp_ros.demo.scoring import (
    JsonlSinkCounter,
    expected_inputs,
    format_table,
    load_truth,
    read_bag,
    sent_inputs,
    summarize,
    write_golden,
)
from sage_irp_ros.demo.selection import (
    demo_specs,
    node_module,
    record_topics,
    replay_topics,
    select_plugins,
)
from sage_irp_ros.tools.procs import ChildProcess, wait
from sage_irp_ros.transport import PROFILE_VARS, apply_camera_profile

# The source checkout (or, installed, the folder holding the package).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORCHESTRATOR = ('sage_irp_ros.ros.orchestrator_node', 'orchestrator_node')
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
    apply_camera_profile(env)  # camera-size images (issue #15); the user's profile wins
    env.setdefault('ROS_LOG_DIR', os.path.join(out_dir, 'logs', 'ros'))
    env['PYTHONUNBUFFERED'] = '1'
    return {k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                'FASTDDS_BUILTIN_TRANSPORTS', *PROFILE_VARS) if env.get(k)}


def _model_option(name: str) -> str:
    return f'{name}_model'


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
    plugins = select_plugins(bag_topics(bag))
    if not plugins:
        fail(f'no registered plugin with a demo has its input topics in {bag}')
        return 1
    to_replay = replay_topics(plugins)
    to_record = record_topics(plugins)

    t_start = time.monotonic()
    checks = {}
    procs: List[ChildProcess] = []
    mon = Monitor()
    recorder = replayer = None
    code = {}

    def start(name, argv):
        return ChildProcess(name, argv, log_dir, cwd=ROOT)
    try:
        py = sys.executable
        base = ['--ros-args', '--params-file', config]
        orch_extra, plugin_extra = [], []
        if args.regression:  # budgets and deadlines never bind: the plugins' own halting
            orch_extra = ['-p', f'total_atp:={REGRESSION_TOTAL_ATP}']
            plugin_extra = ['-p', 'deadline_ms:=0.0']
        procs.append(start(ORCHESTRATOR[1], [
            py, '-m', ORCHESTRATOR[0], *base, '-p', f'trust_file:={out_dir}/trust.json',
            '-p', f'diagnostics_period_s:={DIAG_PERIOD_S}', *orch_extra]))
        for spec in plugins:
            extra = list(plugin_extra)
            model = getattr(args, _model_option(spec.name), None)
            if model:
                extra += ['-p', f'model_path:={os.path.abspath(model)}']
            for k, v in spec.demo.params:
                extra += ['-p', f'{k}:={v}']
            procs.append(start(spec.node_name, [
                py, '-m', node_module(spec), *base, *extra,
                '-p', f'diagnostics_period_s:={DIAG_PERIOD_S}']))
        say(f'starting {", ".join(p.name for p in procs)} ...')
        up = wait(lambda: all(mon.host_counters(s.node_name) for s in plugins)
                  and all(mon.node.count_subscribers(t) > 0 for t in to_replay)
                  and mon.node.count_publishers('/irp/budget') > 0, args.startup_timeout,
                  procs)
        checks['nodes_up'] = up
        if not up:
            fail('nodes did not come up within --startup-timeout')
            for p in procs:
                fail(f'--- {p.name} ({"running" if p.alive() else "exited"}):\n{p.tail()}')
            return 1
        say(f'nodes up after {time.monotonic() - t_start:.1f} s')
        max_steps = {s.name: mon.get_int_parameter(s.node_name, 'max_steps') for s in plugins}

        bag_out = os.path.join(out_dir, 'output_bag')
        recorder = start('recorder', [py, '-m', 'sage_irp_ros.tools.record', bag_out,
                                      *to_record, '--summary-json',
                                      os.path.join(log_dir, 'record_summary.json')])
        ok = wait(lambda: all(mon.subscribed_by(t, 'sage_irp_record') for t in to_record),
                  30.0, [recorder])
        checks['recorder_subscribed'] = ok
        if not ok:
            fail(f'recorder did not subscribe:\n{recorder.tail()}')
            return 1
        time.sleep(0.5)  # let the new subscriptions match on the publishers' side

        t_rec0 = time.time_ns()
        replay_summary = os.path.join(log_dir, 'replay_summary.json')
        replayer = start('replay', [py, '-m', 'sage_irp_ros.tools.replay', bag, '--rate',
                                    str(args.rate), '--topics', *to_replay,
                                    '--wait-subscribers', '5', '--summary-json',
                                    replay_summary])
        sent_expected = expected_inputs(plugins, truth)
        t_show = 0.0
        while replayer.alive():
            time.sleep(0.1)
            if time.monotonic() - t_show >= 1.0:
                t_show = time.monotonic()
                say(progress_line(mon, plugins, sent_expected, t_show - t_start))
        code['replay'] = replayer.stop()
        checks['replay_ok'] = code['replay'] == 0
        with open(replay_summary, encoding='utf-8') as f:
            sent = sent_inputs(plugins, json.load(f)['messages'])

        def settled():
            for spec in plugins:
                c = mon.host_counters(spec.node_name)
                if not c:
                    return False
                done = int(c['runs']) + int(c['dropped_stale']) + int(c['bad_input'])
                n_tel = len(mon.runs_of(spec.node_name))
                if spec.demo.stream:  # chunks kept; settled when no segment is pending
                    done = int(c['received']) if c.get('in_speech') == 'False' else -1
                if int(c['received']) < sent[spec.name] or done < int(c['received']) \
                        or n_tel < int(c['runs']):
                    return False
            return True

        # Quiet for two diagnostics periods: every received input has been processed.
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and not settled():
            if time.monotonic() - t_show >= 1.0:
                t_show = time.monotonic()
                say(progress_line(mon, plugins, sent, t_show - t_start))
            time.sleep(0.1)
        time.sleep(2.5 * DIAG_PERIOD_S)
        checks['all_inputs_processed'] = settled()
        say(progress_line(mon, plugins, sent, time.monotonic() - t_start))
        counters = {s.name: mon.host_counters(s.node_name) for s in plugins}
        trust = {s.name: mon.trust(s.node_name) for s in plugins}
        with mon.lock:
            grants = {k: dict(v) for k, v in mon.granted.items()}
        live_runs = {s.name: len(mon.runs_of(s.node_name)) for s in plugins}

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
        summaries = summarize(plugins, recorded, truth, sent, counters, max_steps, trust,
                              grants)
        for name, s in summaries.items():
            checks[f'{name}_all_answered_or_accounted'] = (
                s['unaccounted'] == 0 and s['answered'] > 0 and s['lost_in_transport'] == 0)
            checks[f'{name}_telemetry_recorded'] = s['runs'] == live_runs.get(name, 0)
        paths = [] if args.no_plots else plots(out_dir, plugins, recorded, truth, t_rec0)
        ok = all(checks.values())
        summary = {
            'bag': os.path.relpath(bag, ROOT), 'rate': args.rate,
            'mode': 'regression' if args.regression else 'config',
            'wall_s': round(time.monotonic() - t_start, 2), 'environment': env,
            'plugins': summaries, 'checks': checks, 'ok': ok,
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
        print('\n' + format_table(summaries), flush=True)
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


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (``--<name>-model`` for every registered demo plugin)."""
    ap = argparse.ArgumentParser(prog='python -m sage_irp_ros.demo',
                                 description='Replay the sample bag through the nodes, record '
                                             'and score the outputs.')
    ap.add_argument('--bag', default=None, help='bag to replay (default: data/sample_bag; '
                                                'its ground truth <bag>_truth.json/.npz)')
    ap.add_argument('--config', default=None, help='parameter file (config/sage_irp.yaml)')
    ap.add_argument('--out', default=os.path.join('out', 'demo'), help='output folder '
                                                                       '(replaced)')
    for spec in demo_specs():
        ap.add_argument(f'--{spec.name.replace("_", "-")}-model', default=None,
                        dest=_model_option(spec.name),
                        help=f'checkpoint for {spec.node_name} (its model_path parameter; '
                             'default: the shipped weights)')
    ap.add_argument('--rate', type=float, default=None,
                    help='replay speed factor (default 1.0; 0.5 with --regression, so that a '
                         'busy machine does not drop an input as stale and change the summary)')
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
