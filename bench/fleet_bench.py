"""Fleet on one ROS domain (issue #15): robots in network namespaces, DDS across a bridge.

Needs root (``ip netns``, veth pairs, a bridge); not in CI. Each robot is a network namespace
(its own interfaces, joined to the others by a veth pair on one bridge, as hosts on one LAN
segment), and runs its own stack under its own ROS namespace: ``orchestrator_node`` and a
plugin node (the ``fixture`` plugin: a real refinement, cheap enough for this CPU) in
``/robot1`` and ``/robot2``. A third network namespace, the **server**, runs a second plugin
node of ``/robot1`` (a GPU server serving that robot: its grants cross the link) and this
benchmark's probe (it sends the plugins an input every 100 ms and listens to grants and
``/diagnostics``). DDS: Fast DDS over UDPv4 only (shared memory would bypass the network
namespaces), discovery by multicast on the bridge, one private ``ROS_DOMAIN_ID``. Delay and
loss: ``tc netem`` on every robot's link when the kernel has it (``--delay-ms``,
``--loss-pct``); where it does not, the figures say so (``netem``: false) and are measured
without.

What happens, with the times the probe sees (one clock: one machine):

1. **Discovery**: all nodes start; ``discovery_s`` per plugin node: from its start to its
   first diagnostics with a current grant (``grant: cycle N``).
2. **Steady state** (``--steady-s``): ``grant_latency_p50_ms`` / ``p99``: from a grant's
   stamp (the orchestrator's publication) to its arrival at the server (across the link),
   over robot1's grants; each robot's grants name only that robot's plugins
   (``isolation_ok``).
3. **Orchestrator killed** on robot1 (SIGKILL): ``fallback_ms``: from the kill to the first
   diagnostics of each robot1 plugin that says its grant is stale (the bounded
   ``default_atp`` applies; ``grant_timeout_s`` 0.3 s plus up to one diagnostics period,
   0.1 s here); robot2's plugin must see no gap (``robot2_undisturbed``: its grants keep
   coming, no stale diagnostics).
4. **Orchestrator back** on robot1: ``rejoin_ms``: from its restart to the first diagnostics
   of each robot1 plugin with a grant of the new orchestrator (process start, discovery and
   the first cycle included).

Writes ``out/bench/fleet.json``: ``grant_latency_p50_ms``, ``grant_latency_p99_ms``,
``fallback_ms`` (worst robot1 plugin), ``rejoin_ms`` (worst), ``discovery_s``, the per-plugin
figures, ``isolation_ok``, ``robot2_undisturbed``, ``netem`` and how it was measured.

    sudo OMP_NUM_THREADS=1 AMENT_PREFIX_PATH=$PWD/.venv .venv/bin/python bench/fleet_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'out', 'bench', 'fleet.json')
sys.path.insert(0, ROOT)
from sage_irp_ros.ros.host import HOST_STATUS_SUFFIX as HOST_SUFFIX  # noqa: E402

BRIDGE = 'sagefleet0'
SUBNET = '10.77.0'
HOSTS = {'robot1': 1, 'robot2': 2, 'server': 10}
NETNS = {h: f'sagefleet_{h}' for h in HOSTS}
PLUGIN_MODULE = 'sage_irp_ros.plugins.fixture.node'
ORCH_MODULE = 'sage_irp_ros.ros.orchestrator_node'


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; raise with its output when it fails and ``check``."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)}: {r.stderr.strip() or r.stdout.strip()}')
    return r


def teardown_network() -> None:
    """Remove the namespaces and the bridge (their veth pairs go with them)."""
    for ns in NETNS.values():
        sh('ip', 'netns', 'del', ns, check=False)
    sh('ip', 'link', 'del', BRIDGE, check=False)


def setup_network(delay_ms: float, loss_pct: float) -> dict:
    """One bridge, one network namespace per host on it; netem where the kernel has it."""
    teardown_network()
    sh('ip', 'link', 'add', BRIDGE, 'type', 'bridge')
    sh('ip', 'link', 'set', BRIDGE, 'type', 'bridge', 'mcast_snooping', '0', check=False)
    sh('ip', 'link', 'set', BRIDGE, 'up')
    netem, why = True, ''
    for host, n in HOSTS.items():
        ns, outer, inner = NETNS[host], f'sf{n}o', f'sf{n}i'
        sh('ip', 'netns', 'add', ns)
        sh('ip', 'link', 'add', outer, 'type', 'veth', 'peer', 'name', inner)
        sh('ip', 'link', 'set', inner, 'netns', ns)
        sh('ip', 'link', 'set', outer, 'master', BRIDGE)
        sh('ip', 'link', 'set', outer, 'up')
        sh('ip', '-n', ns, 'addr', 'add', f'{SUBNET}.{n}/24', 'dev', inner)
        sh('ip', '-n', ns, 'link', 'set', inner, 'up')
        sh('ip', '-n', ns, 'link', 'set', 'lo', 'up')
        sh('ip', '-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', inner)
        if host != 'server' and (delay_ms > 0 or loss_pct > 0):
            r = sh('ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', inner, 'root',
                   'netem', 'delay', f'{delay_ms}ms', 'loss', f'{loss_pct}%', check=False)
            if r.returncode != 0:
                netem, why = False, (r.stderr.strip() or 'tc failed')
    return {'netem': netem, 'netem_error': why or None,
            'delay_ms': delay_ms if netem else 0.0, 'loss_pct': loss_pct if netem else 0.0}


class Proc:
    """A node in a network namespace, its output in a log file."""

    def __init__(self, name: str, host: str, argv: List[str], env: dict, log_dir: str):
        """Start it."""
        self.name, self.host = name, host
        self.log = open(os.path.join(log_dir, f'{name}.log'), 'w', encoding='utf-8')
        self.started = time.time()
        self.p = subprocess.Popen(['ip', 'netns', 'exec', NETNS[host], *argv], env=env,
                                  stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node (its whole process group)."""
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)

    def stop(self) -> None:
        """SIGINT, then SIGKILL after 10 s."""
        if self.p.poll() is None:
            self.kill(signal.SIGINT)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
                self.p.wait(5)
        self.log.close()


def node_argv(module: str, ns: str, name: Optional[str] = None, **params) -> List[str]:
    """``python -m module`` under the ROS namespace ``ns`` with parameters."""
    argv = [sys.executable, '-m', module, '--ros-args', '-r', f'__ns:=/{ns}']
    if name:
        argv += ['-r', f'__node:={name}']
    for k, v in params.items():
        argv += ['-p', f'{k}:={v}']
    return argv


def probe(args) -> int:
    """The probe (runs in the server namespace): inputs out, grants and diagnostics in.

    Writes one JSON line per event to stdout: ``grant`` (robot, plugin, cycle, stamp and
    receive time, ns) and ``diag`` (plugin, receive time, the ``grant`` value).
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Float32MultiArray

    from sage_irp_ros.msg import BudgetGrant
    rclpy.init()
    node = rclpy.create_node('fleet_probe')
    lock = threading.Lock()

    def emit(rec):
        with lock:
            sys.stdout.write(json.dumps(rec) + '\n')
            sys.stdout.flush()

    def on_grant(robot):
        def cb(m):
            emit({'ev': 'grant', 'robot': robot, 'plugin': m.plugin, 'cycle': m.cycle,
                  'stamp': m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec,
                  't': time.time_ns()})
        return cb

    def on_diag(m):
        for st in m.status:
            if st.name.endswith(HOST_SUFFIX):
                v = {kv.key: kv.value for kv in st.values}
                emit({'ev': 'diag', 'plugin': st.name[:-len(HOST_SUFFIX)],
                      'grant': v.get('grant'), 'level': int.from_bytes(st.level, 'little')
                      if isinstance(st.level, bytes) else int(st.level), 't': time.time_ns()})
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    for r in ('robot1', 'robot2'):
        node.create_subscription(BudgetGrant, f'/{r}/irp/budget', on_grant(r), qos)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, QoSProfile(depth=100))
    pubs = [node.create_publisher(Float32MultiArray, f'/{r}/input', 10)
            for r in ('robot1', 'robot2')]
    msg = Float32MultiArray(data=[0.0, 2.0, 1.0, 3.0])
    node.create_timer(0.1, lambda: [p.publish(msg) for p in pubs])
    emit({'ev': 'probe_up', 't': time.time_ns()})
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:  # SIGINT ends the probe
        pass
    return 0


class Events:
    """Reads the probe's JSON lines in a thread."""

    def __init__(self, proc: subprocess.Popen):
        """Start reading."""
        self.items: List[dict] = []
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.t.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.items.append(rec)

    def since(self, t_ns: int, ev: Optional[str] = None) -> List[dict]:
        """Events received at or after ``t_ns`` (of one kind)."""
        with self.lock:
            return [e for e in self.items if e['t'] >= t_ns and (ev is None or e['ev'] == ev)]


def wait_until(pred, timeout: float, step: float = 0.02):
    """Poll ``pred`` until it returns a truthy value or ``timeout`` s pass; return that."""
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def pct(xs: List[float], q: float) -> Optional[float]:
    """The ``q`` percentile (nearest rank), or None."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100.0 * len(xs) + 0.5)) - 1))]


def run(args) -> dict:
    """Set up the fleet, run the four phases, return the figures."""
    log_dir = tempfile.mkdtemp(prefix='sage_fleet_')
    net = setup_network(args.delay_ms, args.loss_pct)
    env = dict(os.environ)
    for var in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE'):
        env.pop(var, None)  # the camera profile uses shared memory: across namespaces, UDP only
    env.update({'ROS_DOMAIN_ID': str(args.domain), 'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4',
                'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET',
                'RMW_IMPLEMENTATION': env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp'),
                'AMENT_PREFIX_PATH': env.get('AMENT_PREFIX_PATH', os.path.join(ROOT, '.venv')),
                'PYTHONPATH': ROOT + os.pathsep + env.get('PYTHONPATH', ''),
                'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'})
    procs: Dict[str, Proc] = {}
    probe_p = ev = None
    plug = {'diagnostics_period_s': 0.1}
    orch = {'period_s': 0.1, 'diagnostics_period_s': 0.5}
    res: dict = {'network': net, 'log_dir': log_dir}
    try:
        probe_p = subprocess.Popen(
            ['ip', 'netns', 'exec', NETNS['server'], sys.executable,
             os.path.abspath(__file__), '--probe'], env=env, stdout=subprocess.PIPE,
            stderr=open(os.path.join(log_dir, 'probe.err'), 'w'), text=True, cwd=ROOT)
        ev = Events(probe_p)
        if not wait_until(lambda: ev.since(0, 'probe_up'), 60):
            raise RuntimeError('the probe did not start')
        plugins = {'/robot1/fx': 'robot1', '/robot2/fx': 'robot2',
                   '/robot1/server_fx': 'server'}
        for r in ('robot1', 'robot2'):
            procs[f'{r}_orch'] = Proc(f'{r}_orch', r, node_argv(
                ORCH_MODULE, r, trust_file=os.path.join(log_dir, f'{r}_trust.json'), **orch),
                env, log_dir)
        for name, host in plugins.items():
            ns, node = name.strip('/').split('/')
            procs[name] = Proc(f'{ns}_{node}', host, node_argv(PLUGIN_MODULE, ns, node, **plug),
                               env, log_dir)

        def current(name, t0):
            return next((e for e in ev.since(t0, 'diag') if e['plugin'] == name
                         and str(e.get('grant', '')).startswith('cycle')), None)
        disc = {}
        for name in plugins:
            e = wait_until(lambda n=name: current(n, procs[n].started * 1e9), args.timeout)
            disc[name] = None if e is None else round(e['t'] / 1e9 - procs[name].started, 3)
        res['discovery_s_per_plugin'] = disc
        if any(v is None for v in disc.values()):
            raise RuntimeError(f'not every plugin got a grant within {args.timeout} s: {disc}')
        res['discovery_s'] = max(disc.values())

        # --- steady state
        t0 = time.time_ns()
        time.sleep(args.steady_s)
        grants = ev.since(t0, 'grant')
        lat = [(g['t'] - g['stamp']) / 1e6 for g in grants if g['robot'] == 'robot1']
        res['grants_steady'] = len(grants)
        res['grant_latency_p50_ms'] = None if not lat else round(pct(lat, 50), 3)
        res['grant_latency_p99_ms'] = None if not lat else round(pct(lat, 99), 3)
        res['grant_latency_max_ms'] = None if not lat else round(max(lat), 3)
        named = {r: sorted({g['plugin'] for g in grants if g['robot'] == r})
                 for r in ('robot1', 'robot2')}
        res['granted_plugins'] = named
        res['isolation_ok'] = (named['robot1'] == ['/robot1/fx', '/robot1/server_fx']
                               and named['robot2'] == ['/robot2/fx'])

        # --- robot1's orchestrator killed
        t_kill = time.time_ns()
        procs['robot1_orch'].kill()
        fb = {}
        for name in ('/robot1/fx', '/robot1/server_fx'):
            e = wait_until(lambda n=name: next(
                (x for x in ev.since(t_kill, 'diag') if x['plugin'] == n
                 and x.get('grant') == 'stale'), None), 10)
            fb[name] = None if e is None else round((e['t'] - t_kill) / 1e6, 1)
        res['fallback_ms_per_plugin'] = fb
        res['fallback_ms'] = None if None in fb.values() else max(fb.values())
        time.sleep(args.down_s)
        t_restart = time.time_ns()
        down = ev.since(t_kill)
        r2 = sorted(g['t'] for g in down if g['ev'] == 'grant' and g['robot'] == 'robot2')
        gaps = [(b - a) / 1e6 for a, b in zip(r2, r2[1:], strict=False)]
        r2_stale = [d for d in down if d['ev'] == 'diag' and d['plugin'] == '/robot2/fx'
                    and d.get('grant') == 'stale']
        r1_grants = [g for g in down if g['ev'] == 'grant' and g['robot'] == 'robot1']
        res['robot2_max_grant_gap_ms'] = round(max(gaps), 1) if gaps else None
        res['robot2_undisturbed'] = bool(r2) and not r2_stale and max(gaps or [1e9]) < 300
        res['robot1_grants_while_down'] = len(r1_grants)

        # --- robot1's orchestrator back
        procs['robot1_orch'].stop()
        procs['robot1_orch'] = Proc('robot1_orch_2', 'robot1', node_argv(
            ORCH_MODULE, 'robot1', trust_file=os.path.join(log_dir, 'robot1_trust.json'),
            **orch), env, log_dir)
        rj = {}
        for name in ('/robot1/fx', '/robot1/server_fx'):
            e = wait_until(lambda n=name: current(n, t_restart), args.timeout)
            rj[name] = None if e is None else round((e['t'] - t_restart) / 1e6, 1)
        res['rejoin_ms_per_plugin'] = rj
        res['rejoin_ms'] = None if None in rj.values() else max(rj.values())
        first = wait_until(lambda: next((g for g in ev.since(t_restart, 'grant')
                                         if g['robot'] == 'robot1'), None), 5)
        res['orchestrator_first_grant_ms'] = (None if first is None
                                              else round((first['t'] - t_restart) / 1e6, 1))
    finally:
        if ev is not None:
            with open(os.path.join(log_dir, 'events.jsonl'), 'w', encoding='utf-8') as f:
                for e in ev.since(0):
                    f.write(json.dumps(e) + '\n')
        for p in procs.values():
            p.stop()
        if probe_p is not None and probe_p.poll() is None:
            probe_p.send_signal(signal.SIGINT)
            try:
                probe_p.wait(10)
            except subprocess.TimeoutExpired:
                probe_p.kill()
        teardown_network()
    return res


def main(argv=None) -> int:
    """Command line: the benchmark, or ``--probe`` (its listener, run inside a namespace)."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--probe', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--delay-ms', type=float, default=20.0)
    ap.add_argument('--loss-pct', type=float, default=2.0)
    ap.add_argument('--steady-s', type=float, default=20.0)
    ap.add_argument('--down-s', type=float, default=3.0, help='robot1 without orchestrator')
    ap.add_argument('--timeout', type=float, default=60.0)
    ap.add_argument('--domain', type=int, default=77)
    ap.add_argument('--keep-logs', action='store_true')
    ap.add_argument('--out', default=OUT)
    args = ap.parse_args(argv)
    if args.probe:
        return probe(args)
    if os.geteuid() != 0 or shutil.which('ip') is None:
        print('fleet_bench: needs root and iproute2 (network namespaces); skipped',
              file=sys.stderr)
        return 2
    t = time.time()
    res = run(args)
    if not args.keep_logs:
        shutil.rmtree(res.pop('log_dir'), ignore_errors=True)
    res.update({'seconds': round(time.time() - t, 1), 'robots': 2,
                'plugin_nodes': {'robot1': 2, 'robot2': 1},
                'how': 'network namespaces on one bridge, Fast DDS UDPv4, multicast discovery; '
                       'fixture plugin nodes, orchestrator period 0.1 s, plugin diagnostics '
                       '0.1 s, grant_timeout_s default'})
    floors = {'fallback_ms<=500': res.get('fallback_ms') is not None
              and res['fallback_ms'] <= 500,
              'isolation_ok': res.get('isolation_ok'),
              'robot2_undisturbed': res.get('robot2_undisturbed')}
    res['floors'] = floors
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
