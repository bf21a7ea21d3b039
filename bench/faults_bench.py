"""Faults (issue #15): each fault the issue lists, injected into real node processes.

Not in CI (``make soak`` runs it). Every fault runs in fresh processes on a private
``ROS_DOMAIN_ID`` with the demo's environment, observed over DDS (``/diagnostics``,
``irp/budget``); each gets an outcome (``pass``) and, where something must recover, the time
it took (``recovery_s``). Merged into ``out/bench/reliability.json`` as ``faults`` (other keys
kept) with ``faults_passed`` / ``faults_total``:

- ``sigint``: a plugin node gets SIGINT twice 50 ms apart (what ``ros2 launch`` delivers on
  Ctrl-C): it must exit 0; ``recovery_s``: until it exited.
- ``sigterm``: the same with SIGTERM once.
- ``orchestrator_killed``: the orchestrator SIGKILLed: the plugin must report a stale grant
  (its bounded default budget applies) within 0.5 s; ``recovery_s``: kill to that report.
- ``orchestrator_back``: then a new orchestrator: the plugin holds its grants again;
  ``recovery_s``: start to the first current grant.
- ``two_orchestrators``: a second orchestrator on the same topic is reported
  (``orchestrators_granting`` 2); it is killed; ``recovery_s``: until the plugin holds the
  survivor's grant again.
- ``trust_file_nan``: a trust file with a NaN score: the orchestrator sets it aside (``.bad``)
  and grants; ``recovery_s``: start to the first grant the plugin holds.
- ``bad_parameter``: a plugin node started with ``eps:=-1``: it exits non-zero with one error
  line naming ``eps`` and no traceback; ``recovery_s``: until it exited.
- ``garbage_inputs``: empty and NaN inputs: counted as bad input, and the next valid input is
  answered; ``recovery_s``: valid input to its answer.
- ``long_text``: a 300-word utterance with masks to the language node: repaired (not
  refused); ``recovery_s``: until the answer came.

    OMP_NUM_THREADS=1 AMENT_PREFIX_PATH=$PWD/.venv .venv/bin/python bench/faults_bench.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, 'out', 'bench', 'reliability.json')
FIXTURE = 'sage_irp_ros.plugins.fixture.node'
LANGUAGE = 'sage_irp_ros.plugins.language.node'
ORCH = 'sage_irp_ros.ros.orchestrator_node'


class Bench:
    """Processes, a monitor node, and helpers to wait on what it sees."""

    def __init__(self, work: str):
        """Start the monitor (its own rclpy context) and a publisher node."""
        from std_msgs.msg import Float32MultiArray, String

        from sage_irp_ros.demo.monitor import Monitor
        self.work = work
        self.mon = Monitor()
        self.node = self.mon.node
        self.floats = self.node.create_publisher(Float32MultiArray, '/faults/in', 10)
        self.text = self.node.create_publisher(String, '/faults/text', 10)
        self.answers, self.repaired = [], []
        self.node.create_subscription(Float32MultiArray, '/faults/out',
                                      lambda m: self.answers.append(time.monotonic()), 10)
        self.node.create_subscription(String, '/faults/text_out',
                                      lambda m: self.repaired.append((time.monotonic(),
                                                                      m.data)), 10)
        self.n = 0

    def start(self, name: str, module: str, **params):
        """Start ``python -m module`` with parameters; a ChildProcess."""
        from sage_irp_ros.tools.procs import ChildProcess
        self.n += 1
        argv = [sys.executable, '-m', module, '--ros-args', '-r', f'__node:={name}']
        for k, v in params.items():
            argv += ['-p', f'{k}:={v}']
        return ChildProcess(f'{self.n:02d}_{name}', argv, self.work, cwd=ROOT)

    def fixture(self, name='fx', **params):
        """A fixture plugin node on /faults/in -> /faults/out, diagnostics every 0.1 s."""
        return self.start(name, FIXTURE, input_topic='/faults/in', output_topic='/faults/out',
                          diagnostics_period_s=0.1, **params)

    def orchestrator(self, name='orch', trust=None, **params):
        """An orchestrator (0.1 s cycles), its trust file in the work folder."""
        trust = trust or os.path.join(self.work, f'{name}_{self.n}_trust.json')
        return self.start(name, ORCH, trust_file=trust, diagnostics_period_s=0.2, **params)

    def diag(self, node: str) -> dict:
        """The newest host counters of a plugin node (empty when none yet)."""
        return self.mon.host_counters(node) or {}

    def grant_state(self, node: str) -> str:
        """``cycle N``, ``stale`` or ``none yet`` (the node's own report)."""
        return str(self.diag(node).get('grant', ''))

    def orchestrator_values(self) -> list:
        """The newest values of every orchestrator status."""
        with self.mon.lock:
            return [v for k, v in self.mon.diag.items() if k.endswith(': orchestrator')]

    def close(self):
        """Stop the monitor."""
        self.mon.close()


def waited(pred, timeout: float, step: float = 0.01):
    """Return the seconds until ``pred()`` held, or None after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def up(b: Bench, proc, node: str, timeout: float = 60.0) -> bool:
    """Wait until a plugin node reports on /diagnostics."""
    return waited(lambda: bool(b.diag(node)) or not proc.alive(), timeout) is not None \
        and proc.alive()


def stop_signal(b: Bench, sig: int, twice: bool) -> dict:
    name = f'fx_sig{int(sig)}'  # a name of its own: the monitor keeps old nodes' reports
    p = b.fixture(name)
    if not up(b, p, name):
        p.stop()
        return {'pass': False, 'detail': 'node did not come up: ' + p.tail()}
    t0 = time.monotonic()
    p.proc.send_signal(sig)
    if twice:
        time.sleep(0.05)
        if p.alive():
            p.proc.send_signal(sig)
    try:
        rc = p.proc.wait(15)
    except Exception:  # noqa: BLE001 - a hang is the failure being looked for
        p.proc.kill()
        rc = None
    dt = time.monotonic() - t0
    p.stop()
    ok = rc == 0 and 'Traceback' not in p.log()
    return {'pass': ok, 'recovery_s': round(dt, 3), 'exit_code': rc,
            'detail': 'exited 0, no traceback' if ok else p.tail()}


def orchestrator_killed_and_back(b: Bench) -> dict:
    p = b.fixture('fx_orch')
    o = b.orchestrator('orch_k')
    out = {}
    try:
        if not up(b, p, 'fx_orch') or waited(
                lambda: b.grant_state('fx_orch').startswith('cycle'), 30) is None:
            return {'orchestrator_killed': {'pass': False, 'detail': 'no grant: ' + o.tail()}}
        time.sleep(1.0)
        os.kill(o.proc.pid, signal.SIGKILL)
        dt = waited(lambda: b.grant_state('fx_orch') == 'stale', 5)
        out['orchestrator_killed'] = {
            'pass': dt is not None and dt <= 0.5, 'recovery_s': None if dt is None
            else round(dt, 3), 'detail': 'plugin reported a stale grant (default budget)'
            if dt is not None else 'never reported stale'}
        o.stop()
        o2 = b.orchestrator('orch_k2')
        dt = waited(lambda: b.grant_state('fx_orch').startswith('cycle'), 60)
        out['orchestrator_back'] = {'pass': dt is not None,
                                    'recovery_s': None if dt is None else round(dt, 3),
                                    'detail': 'plugin holds the new orchestrator\'s grants'
                                    if dt is not None else o2.tail()}
        o2.stop()
    finally:
        p.stop()
        o.stop()
    return out


def two_orchestrators(b: Bench) -> dict:
    p = b.fixture('fx_two')
    a = b.orchestrator('orch_a')
    try:
        if not up(b, p, 'fx_two') or waited(
                lambda: b.grant_state('fx_two').startswith('cycle'), 30) is None:
            return {'pass': False, 'detail': 'no grant from the first orchestrator'}
        def cycle():
            g = b.grant_state('fx_two')
            return int(g.split()[1]) if g.startswith('cycle') else None
        a_cycle = cycle()
        time.sleep(1.0)  # cycles number from the start time in ms: the second's are ~1e3 higher
        second = b.orchestrator('orch_b')
        seen = waited(lambda: any(str(v.get('orchestrators_granting')) == '2'
                                  for v in b.orchestrator_values()), 30)
        b_started = waited(lambda: (cycle() or 0) > a_cycle + 500, 30)
        time.sleep(0.5)
        b_cycle = cycle() or 0
        os.kill(second.proc.pid, signal.SIGKILL)
        # the survivor numbers its cycles lower: followed once the other's grant is stale
        dt = waited(lambda: (cycle() or b_cycle) < b_cycle - 500, 10)
        second.stop()
        ok = seen is not None and dt is not None
        return {'pass': ok, 'recovery_s': None if dt is None else round(dt, 3),
                'detail': (f'second orchestrator reported after {seen:.2f} s'
                           if seen is not None else 'second orchestrator never reported')
                + ('' if b_started is not None else '; its grants were not seen held')
                + ('' if dt is not None else '; the survivor was not followed')}
    finally:
        p.stop()
        a.stop()


def trust_file_nan(b: Bench) -> dict:
    path = os.path.join(b.work, 'nan_trust.json')
    with open(path, 'w') as f:
        f.write('{"version": 1, "plugins": {"/fx_nan": {"score": NaN, "runs": 2}}}')
    p = b.fixture('fx_nan')
    t0 = time.monotonic()
    o = b.orchestrator('orch_nan', trust=path)
    try:
        dt = waited(lambda: b.grant_state('fx_nan').startswith('cycle'), 60)
        time.sleep(2.5)  # the old crash came 2 s after start
        ok = dt is not None and o.alive() and os.path.exists(path + '.bad')
        return {'pass': ok, 'recovery_s': None if dt is None else round(
            time.monotonic() - t0 - 2.5, 3),
            'detail': 'set aside as .bad, fresh trust, granting, still running' if ok
            else o.tail()}
    finally:
        p.stop()
        o.stop()


def bad_parameter(b: Bench) -> dict:
    t0 = time.monotonic()
    p = b.fixture('fx_bad', eps=-1.0)
    try:
        rc = p.proc.wait(60)
    except Exception:  # noqa: BLE001
        p.proc.kill()
        rc = None
    dt = time.monotonic() - t0
    p.stop()
    log = p.log()
    errors = [ln for ln in log.splitlines() if 'ERROR' in ln or '[FATAL]' in ln]
    ok = rc not in (0, None) and 'Traceback' not in log and any('eps' in ln for ln in errors)
    return {'pass': ok, 'recovery_s': round(dt, 3), 'exit_code': rc,
            'detail': errors[0][:200] if errors else log[-300:]}


def garbage_inputs(b: Bench) -> dict:
    from std_msgs.msg import Float32MultiArray
    p = b.fixture('fx_garbage', default_atp=0.0)
    try:
        if not up(b, p, 'fx_garbage'):
            return {'pass': False, 'detail': 'node did not come up'}
        waited(lambda: b.floats.get_subscription_count() > 0, 10)
        for data in ([], [math.nan] * 64):
            b.floats.publish(Float32MultiArray(data=data))
            time.sleep(0.2)
        def counted():
            d = b.diag('fx_garbage')
            return int(d.get('bad_input', 0)) + int(d.get('plugin_errors', 0))
        ok_bad = waited(lambda: counted() >= 2, 5)
        n = len(b.answers)
        b.floats.publish(Float32MultiArray(data=[0.0, 1.0, 0.5, 2.0] * 16))
        dt = waited(lambda: len(b.answers) > n, 10)
        ok = ok_bad is not None and dt is not None and p.alive()
        d = b.diag('fx_garbage')
        return {'pass': ok, 'recovery_s': None if dt is None else round(dt, 3),
                'detail': f"bad_input {d.get('bad_input')}, plugin_errors "
                          f"{d.get('plugin_errors')}, then the valid input answered"}
    finally:
        p.stop()


def long_text(b: Bench) -> dict:
    from std_msgs.msg import String
    p = b.start('lang_long', LANGUAGE, input_topic='/faults/text',
                output_topic='/faults/text_out', default_atp=0.0, diagnostics_period_s=0.2)
    try:
        if not up(b, p, 'lang_long', 120):
            return {'pass': False, 'detail': 'node did not come up: ' + p.tail()}
        waited(lambda: b.text.get_subscription_count() > 0, 10)
        words = ('the robot moves to the kitchen and picks up the red cup from the table '
                 'then it goes back to the hall ').split()
        text = ' '.join((words * 20)[:300])
        toks = text.split()
        for i in (10, 150, 290):
            toks[i] = '[MASK]'
        b.text.publish(String(data=' '.join(toks)))
        dt = waited(lambda: bool(b.repaired), 30)
        out = b.repaired[-1][1] if b.repaired else ''
        ok = dt is not None and '[MASK]' not in out and len(out.split()) == 300
        return {'pass': ok, 'recovery_s': None if dt is None else round(dt, 3),
                'detail': f'{len(out.split())} words back, no [MASK] left' if ok else p.tail()}
    finally:
        p.stop()


def main(argv=None) -> int:
    """Run every fault; merge the outcomes into reliability.json."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=OUT)
    args = ap.parse_args(argv)
    from sage_irp_ros.demo.__main__ import setup_environment
    work = tempfile.mkdtemp(prefix='sage_faults_')
    env = setup_environment(work)
    b = Bench(work)
    res = {}
    t_all = time.monotonic()
    try:
        res['sigint'] = stop_signal(b, signal.SIGINT, twice=True)
        res['sigterm'] = stop_signal(b, signal.SIGTERM, twice=False)
        res.update(orchestrator_killed_and_back(b))
        res['two_orchestrators'] = two_orchestrators(b)
        res['trust_file_nan'] = trust_file_nan(b)
        res['bad_parameter'] = bad_parameter(b)
        res['garbage_inputs'] = garbage_inputs(b)
        res['long_text'] = long_text(b)
    finally:
        b.close()
    for name, r in res.items():
        print(f"{name:22s} {'pass' if r.get('pass') else 'FAIL'}  recovery "
              f"{r.get('recovery_s')} s  {str(r.get('detail', ''))[:100]}")
    merged = {}
    if os.path.exists(args.out):
        with open(args.out, encoding='utf-8') as f:
            merged = json.load(f)
    merged['faults'] = res
    merged['faults_passed'] = sum(bool(r.get('pass')) for r in res.values())
    merged['faults_total'] = len(res)
    merged['faults_how'] = {'environment': env, 'seconds': round(time.monotonic() - t_all, 1),
                            'command': 'python bench/faults_bench.py'}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(merged, f, indent=1)
    if all(r.get('pass') for r in res.values()):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f'logs kept in {work}', file=sys.stderr)
    print(f"{merged['faults_passed']} of {merged['faults_total']} faults passed; wrote {args.out}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
