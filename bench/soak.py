"""Soak (issue #15): the sample bag replayed in a loop through all nodes for ``--minutes``.

Not in CI (``make soak``). Starts what ``make demo`` starts (the orchestrator and every plugin
node with a demo: vision, language, control) plus ``audio_irp_node`` on the bag's
``/audio/raw``, with ``config/sage_irp.yaml``, the demo's environment (private domain, the
shipped transport profile) and ``--params`` overrides; replays ``data/sample_bag`` at
``--rate`` in a loop until ``--minutes`` have passed; samples every node's RSS every
``--sample-s``; then reads every plugin node's counters from ``/diagnostics``.

Figures (merged into ``out/bench/reliability.json``, other keys kept):

- ``soak_minutes``, ``soak_loops`` (bag passes), ``soak_inputs_sent``;
- ``soak_rss_growth_mb``: the largest RSS growth of any node from ``--warmup-min`` into the
  soak to its end (floor < 20 MB), and ``soak_rss_mb`` per node (start, after warm-up, end);
- ``soak_lost_uncounted``: inputs sent to a node that it neither received nor counted as lost
  in transport (message-lost events), summed over the nodes (floor 0);
- ``soak_crashes``: node processes that exited before the end (floor 0);
- ``soak_counters``: each node's host counters at the end.

    OMP_NUM_THREADS=1 AMENT_PREFIX_PATH=$PWD/.venv .venv/bin/python bench/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, 'out', 'bench', 'reliability.json')
BAG_SECONDS = 6.4  # the sample bag's length (its truth file has it)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB (``VmRSS``); NaN when it is gone."""
    try:
        with open(f'/proc/{pid}/status', encoding='utf-8') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def main(argv=None) -> int:
    """Run the soak; merge its figures into reliability.json."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--minutes', type=float, default=30.0)
    ap.add_argument('--warmup-min', type=float, default=2.0,
                    help='RSS growth is measured from this far into the soak')
    ap.add_argument('--rate', type=float, default=1.0)
    ap.add_argument('--sample-s', type=float, default=15.0)
    ap.add_argument('--out', default=OUT)
    args = ap.parse_args(argv)
    from sage_irp_ros import registry
    from sage_irp_ros.demo.__main__ import ORCHESTRATOR, find_path, setup_environment
    from sage_irp_ros.demo.scoring import load_truth
    from sage_irp_ros.demo.selection import node_module, replay_topics, select_plugins
    from sage_irp_ros.tools.procs import ChildProcess, wait
    from sage_irp_ros.tools.replay import bag_topics
    work = tempfile.mkdtemp(prefix='sage_soak_')
    env_used = setup_environment(work)
    bag = find_path(os.path.join('data', 'sample_bag'))
    config = find_path(os.path.join('config', 'sage_irp.yaml'))
    bag_s = float(load_truth(bag).get('duration_s', BAG_SECONDS))
    specs = list(select_plugins(bag_topics(bag)))
    if 'audio' not in [s.name for s in specs]:  # the bag's /audio/raw through the audio node
        specs.append(registry.get('audio'))
    topics = replay_topics([s for s in specs if s.demo is not None])
    if '/audio/raw' not in topics:
        topics.append('/audio/raw')
    loops = max(1, int(math.ceil(args.minutes * 60.0 / (bag_s / max(args.rate, 1e-6)))))
    from sage_irp_ros.demo.monitor import Monitor
    mon = Monitor()
    procs = {}
    base = ['--ros-args', '--params-file', config]
    py = sys.executable
    res: dict = {}
    t0 = time.monotonic()
    try:
        procs[ORCHESTRATOR[1]] = ChildProcess(ORCHESTRATOR[1], [
            py, '-m', ORCHESTRATOR[0], *base, '-p', f'trust_file:={work}/trust.json'], work,
            cwd=ROOT)
        for s in specs:
            extra = [a for k, v in (s.demo.params if s.demo else ()) for a in ('-p', f'{k}:={v}')]
            procs[s.node_name] = ChildProcess(s.node_name, [py, '-m', node_module(s), *base,
                                                            *extra], work, cwd=ROOT)
        if not wait(lambda: all(mon.host_counters(s.node_name) for s in specs), 180,
                    list(procs.values())):
            raise SystemExit('soak: the nodes did not come up:\n' + '\n'.join(
                f'--- {p.name}\n{p.tail()}' for p in procs.values()))
        summary = os.path.join(work, 'replay.json')
        replay = ChildProcess('replay', [py, '-m', 'sage_irp_ros.tools.replay', bag, '--rate',
                                         str(args.rate), '--loop', str(loops), '--topics',
                                         *topics, '--quiet', '--summary-json', summary], work,
                              cwd=ROOT)
        t_start = time.monotonic()
        samples = []
        warm = None
        while replay.alive():
            time.sleep(min(args.sample_s, 1.0))
            now = time.monotonic() - t_start
            if not samples or now - samples[-1][0] >= args.sample_s:
                samples.append((now, {n: rss_mb(p.proc.pid) for n, p in procs.items()}))
                if warm is None and now >= args.warmup_min * 60.0:
                    warm = samples[-1][1]
                print(f'soak {now / 60:.1f} min: ' + ', '.join(
                    f'{n} {v:.0f} MB' for n, v in samples[-1][1].items()), flush=True)
        replay_code = replay.stop()
        time.sleep(5.0)  # let the last inputs finish and the diagnostics report them
        end = {n: rss_mb(p.proc.pid) for n, p in procs.items()}
        crashed = [n for n, p in procs.items() if not p.alive()]
        with open(summary, encoding='utf-8') as f:
            sent_by_topic = json.load(f)['messages']
        counters, lost = {}, {}
        for s in specs:
            c = mon.host_counters(s.node_name) or {}
            counters[s.node_name] = c
            ins = s.demo.input_topics if s.demo is not None else ('/audio/raw',)
            sent = sum(sent_by_topic.get(t, 0) for t in ins)
            got = int(c.get('received', 0)) + int(c.get('lost_in_transport', 0))
            lost[s.node_name] = max(0, sent - got)
        warm = warm or (samples[0][1] if samples else end)
        growth = {n: round(end[n] - warm[n], 1) for n in procs}
        res = {
            'soak_minutes': round((time.monotonic() - t_start) / 60.0, 2),
            'soak_loops': loops, 'soak_rate': args.rate, 'soak_replay_exit': replay_code,
            'soak_inputs_sent': sent_by_topic,
            'soak_rss_growth_mb': max(growth.values()),
            'soak_rss_growth_mb_per_node': growth,
            'soak_rss_mb': {n: {'start': round(samples[0][1][n], 1) if samples else None,
                                'after_warmup': round(warm[n], 1), 'end': round(end[n], 1)}
                            for n in procs},
            'soak_lost_uncounted': sum(lost.values()),
            'soak_lost_uncounted_per_node': lost,
            'soak_crashes': len(crashed), 'soak_crashed': crashed,
            'soak_counters': counters,
            'soak_how': {'nodes': list(procs), 'topics': topics, 'config': config,
                         'environment': env_used, 'warmup_min': args.warmup_min,
                         'seconds_total': round(time.monotonic() - t0, 1)},
        }
    finally:
        for p in procs.values():
            p.stop()
        mon.close()
        if res and not res['soak_crashes']:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f'soak: logs kept in {work}', file=sys.stderr)
    merged = {}
    if os.path.exists(args.out):
        with open(args.out, encoding='utf-8') as f:
            merged = json.load(f)
    merged.update(res)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(merged, f, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k not in ('soak_counters',)}, indent=1))
    return 0 if not res['soak_crashes'] else 1


if __name__ == '__main__':
    raise SystemExit(main())
