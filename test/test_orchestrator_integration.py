"""The orchestrator and two plugin nodes in separate processes, observed over DDS."""

import json
import time
from collections import defaultdict

import numpy as np
from conftest import wait_for
from std_msgs.msg import Float32MultiArray
from visualization_msgs.msg import MarkerArray

from sage_irp_ros.msg import BudgetGrant

FIXTURE = 'sage_irp_ros.plugins.fixture.node'
ORCH = 'sage_irp_ros.ros.orchestrator_node'
GOOD, HARD, NOISY = '/good_fixture', '/hard_fixture', '/noisy_fixture'


def signal(seed, noise=0.4, n=256):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 6, n)
    return (np.sin(t) + noise * rng.standard_normal(n)).astype(np.float32).tolist()


def test_grants_regrants_trust_liveness_and_restart(ros, node_process, tmp_path):
    trust_file = str(tmp_path / 'trust.json')
    orch_params = {'period_s': 0.25, 'total_atp': 3.0, 'floor': 0.1, 'trust_file': trust_file,
                   'liveness_timeout_s': 1.5, 'trust_alpha': 0.3, 'diagnostics_period_s': 0.5}
    orch = node_process(ORCH, orch_params)
    common = {'grant_timeout_s': 5.0, 'diagnostics_period_s': 0.0}
    # good: alternating easy (little noise, halts early) and hard inputs; hard: always hard,
    # so it runs out of budget and wants more; noisy: the misbehaving fixture.
    good = node_process(FIXTURE, dict(common, input_topic='/good/in'), name='good_fixture')
    hard = node_process(FIXTURE, dict(common, input_topic='/hard/in'), name='hard_fixture')
    noisy = node_process(FIXTURE, dict(common, input_topic='/noisy/in', noise=2.0),
                         name='noisy_fixture')
    grants = ros.collect(BudgetGrant, '/irp/budget', 100)
    markers = ros.collect(MarkerArray, '/irp/markers')
    pubs = {k: ros.node.create_publisher(Float32MultiArray, f'/{k}/in', 10)
            for k in ('good', 'hard', 'noisy')}
    assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 15)

    def feed(seconds, names, until=None):
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end and not (until and until()):
            for k in names:
                noise = {'good': 0.05 if i % 2 else 1.0, 'hard': 1.0, 'noisy': 0.4}[k]
                pubs[k].publish(Float32MultiArray(data=signal(i, noise)))
            i += 1
            time.sleep(0.12)

    feed(6.0, ['good', 'hard', 'noisy'])
    by_plugin = defaultdict(list)
    for g in list(grants):
        by_plugin[g.plugin].append(g)
    assert by_plugin[GOOD] and by_plugin[HARD] and by_plugin[NOISY], orch.log()
    # Never more than total_atp per cycle: the last grant of each plugin in a cycle counts.
    per_cycle = defaultdict(dict)
    for g in grants:
        per_cycle[g.cycle][g.plugin] = g.atp_granted
    for cycle, shares in per_cycle.items():
        assert sum(shares.values()) <= 3.0 + 1e-9, (cycle, shares)
    # Early halts were re-granted: some plugin's grant rose within a cycle.
    rises = [(g.cycle, g.plugin) for gs in by_plugin.values()
             for a, g in zip(gs[:-1], gs[1:], strict=True)
             if a.cycle == g.cycle and g.atp_granted > a.atp_granted]
    assert rises, orch.log()
    # The misbehaving fixture lost trust and ends with the lowest; the good one gained.
    last = {k: by_plugin[k][-1].trust_weight for k in (GOOD, HARD, NOISY)}
    assert last[NOISY] < 1.0 < last[GOOD] and min(last, key=last.get) == NOISY, last
    # rviz text: one line per plugin with its trust and share.
    assert markers and len(markers[-1].markers) == 4  # DELETEALL + 3 plugins
    assert markers[-1].markers[3].text.startswith(NOISY + ': trust 0.')

    # Liveness: a plugin that stops reporting leaves the allocation.
    assert noisy.stop() == 0
    feed(2.5, ['good', 'hard'])
    # (over the last cycles: a cycle's grants arrive one by one, and on a loaded machine two
    # plugins whose least useful grants do not both fit may take turns)
    recent = sorted({g.cycle for g in grants})[-5:]
    assert {g.plugin for g in grants if g.cycle in recent} == {GOOD, HARD}, orch.log()
    last_cycle = recent[-1]
    assert 'left the allocation' in orch.log()

    # Restart: trust survives.
    assert orch.stop() == 0, orch.log()
    saved = json.load(open(trust_file))['plugins']
    assert saved[NOISY]['trust'] < 1.0 < saved[GOOD]['trust']
    orch2 = node_process(ORCH, orch_params)
    n = len(grants)
    assert wait_for(lambda: 'trust loaded' in orch2.log(), 15), orch2.log()
    loaded = orch2.log().split('trust loaded from ')[1].splitlines()[0]
    for name in (GOOD, HARD, NOISY):
        assert f'{name}={saved[name]["trust"]:.2f}' in loaded, loaded
    # The restarted orchestrator's cycles continue upwards, so the plugin takes its grants.
    feed(15.0, ['good'], until=lambda: any(g.plugin == GOOD for g in grants[n:]))
    assert any(g.plugin == GOOD for g in grants[n:]), orch2.log()
    assert min(g.cycle for g in grants[n:]) > last_cycle
    assert orch2.stop() == 0 and good.stop() == 0 and hard.stop() == 0
