"""Memory plumbing in this process: the host's experience and warm-start hooks with the fixture,
the read-only store, the Experience message, the registry entry and the orchestrator's priority.
"""

import json
import time

import numpy as np
import pytest
from conftest import wait_for
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import Float32MultiArray, String

from sage_irp_ros import launch_plan, registry
from sage_irp_ros.core.allocator import CycleAllocator
from sage_irp_ros.core.mailbox import EXPERIENCE_CHANNEL, Mailbox
from sage_irp_ros.msg import Experience
from sage_irp_ros.plugins.fixture import SmoothingFixture
from sage_irp_ros.plugins.fixture.node import FixtureIRPNode
from sage_irp_ros.plugins.memory.node import MemoryIRPNode
from sage_irp_ros.plugins.memory.sleep import SleepInput, SleepIRP
from sage_irp_ros.plugins.memory.store import (
    ExperienceStore,
    StoreReadOnlyError,
    StoreUnavailableError,
)
from sage_irp_ros.ros.conversions import InputError, experience_from_msg, experience_to_msg

SIGNAL = (np.sin(np.linspace(0, 6, 128)) + 0.3 * np.cos(np.linspace(0, 230, 128))).tolist()


def make_node(ros, tmp_path, cls=FixtureIRPNode, **params):
    params.setdefault('memory_store', str(tmp_path / 'memory.db'))
    params.setdefault('input_topic', '/mem_in')
    params.setdefault('default_atp', 0.0)
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = ros.add_node(cls(context=ros.context, parameter_overrides=overrides))
    return node


def run_once(node, telem, signal=SIGNAL):
    n = node.counters.runs
    node._on_input('input', Float32MultiArray(data=signal))
    assert wait_for(lambda: node.counters.runs == n + 1 and len(telem) > n, 10)
    return json.loads(telem[n].data)


def test_mailbox_mode_posts_the_experience_by_reference_and_warm_starts(ros, tmp_path):
    node = make_node(ros, tmp_path, memory='mailbox', eps=1e-7)
    box = node.mailbox = Mailbox()
    telem = ros.collect(String, '/irp/telemetry_json')
    try:
        # no store yet: the run starts cold, the outage is counted, nothing breaks
        cold = run_once(node, telem)
        assert cold['metadata'].get('warm_start') is None  # recall found no store: no hint
        assert node.counters.memory_unavailable >= 1 and node.counters.recalls == 1
        (item,) = box.poll(EXPERIENCE_CHANNEL)
        assert item['plugin'] == 'fixture' and item['entity_id'] == node.entity_id
        assert item['steps'] == cold['steps'] > 8 and item['halt_reason'] == cold['halt_reason']
        assert item['energy'] == pytest.approx(cold['E'])
        assert item['latent'].dtype == np.float32 and item['key'].shape == (128,)
        assert node.counters.experiences_shared == 1
        # the memory node would store it; here the test does, through the same store class
        store = ExperienceStore(tmp_path / 'memory.db')
        store.add(item['plugin'], item['key'], item['latent'], item['summary'],
                  steps=item['steps'], energy=item['energy'], halt_reason=item['halt_reason'])
        node._reader_retry_at = 0.0  # do not wait the 5 s retry
        warm = run_once(node, telem)
        ws = warm['metadata']['warm_start']
        assert ws['used'] is True and ws['similarity'] > 0.999 and ws['source'] == 'experience'
        assert warm['steps'] < cold['steps'] / 2 and warm['E'] <= cold['E'] + 1e-6
        assert node.counters.warm_starts == 1 and node.counters.recall_hits == 1
        # a different input: the hint is not close enough, so it is not used
        other = run_once(node, telem, signal=list(np.cos(np.linspace(0, 9, 128))))
        assert other['metadata']['warm_start']['used'] is False
        # the store replaced by a damaged file under a running node: cold, counted, goes on
        store.close()
        (tmp_path / 'garbage').write_bytes(b'this is not a database' * 100)
        for suffix in ('-wal', '-shm'):
            (tmp_path / f'memory.db{suffix}').unlink(missing_ok=True)
        (tmp_path / 'garbage').replace(tmp_path / 'memory.db')
        before = node.counters.memory_unavailable
        again = run_once(node, telem)
        assert again['halt_reason'] == cold['halt_reason'] and again['steps'] == cold['steps']
        assert node.counters.memory_unavailable > before
    finally:
        node.destroy_node()


class FailingMemoryFixture(SmoothingFixture):
    """Test fixture: experience() raises."""

    def experience(self, state, output):
        raise RuntimeError('experience bug')


class FailingMemoryNode(FixtureIRPNode):
    """Test fixture node around :class:`FailingMemoryFixture`."""

    def create_plugin(self):
        return FailingMemoryFixture()


class CtxSpy(SmoothingFixture):
    """Test fixture: records the ctx of each run."""

    seen = []

    def init_state(self, x0, ctx=None):
        CtxSpy.seen.append(dict(ctx or {}))
        return super().init_state(x0, ctx)


class CtxSpyNode(FixtureIRPNode):
    """Test fixture node around :class:`CtxSpy`."""

    def create_plugin(self):
        return CtxSpy()


def test_memory_off_gives_no_recall_and_shares_nothing(ros, tmp_path):
    node = make_node(ros, tmp_path, CtxSpyNode)
    box = node.mailbox = Mailbox()
    telem = ros.collect(String, '/irp/telemetry_json')
    try:
        CtxSpy.seen.clear()
        run_once(node, telem)
        assert CtxSpy.seen and all('recall' not in c for c in CtxSpy.seen)
        assert box.stats() == {} and node.counters.experiences_shared == 0
    finally:
        node.destroy_node()


def test_a_failing_experience_is_counted_and_the_node_goes_on(ros, tmp_path):
    node = make_node(ros, tmp_path, FailingMemoryNode, memory='mailbox')
    node.mailbox = Mailbox()
    telem = ros.collect(String, '/irp/telemetry_json')
    try:
        run_once(node, telem)
        run_once(node, telem)
        assert node.counters.experience_errors == 2 and node.counters.experiences_shared == 0
        assert node.counters.plugin_errors == 0
    finally:
        node.destroy_node()


def test_a_bad_memory_mode_fails_configure(ros, tmp_path):
    from sage_irp_ros.ros.lifecycle import StartError
    with pytest.raises(StartError, match='memory must be one of'):
        make_node(ros, tmp_path, memory='sometimes')


def test_topic_mode_publishes_an_experience_message(ros, tmp_path):
    node = make_node(ros, tmp_path, memory='topic')
    msgs = ros.collect(Experience, '/irp/experience')
    telem = ros.collect(String, '/irp/telemetry_json')
    try:
        pub_ready = wait_for(lambda: node._experience_pub.get_subscription_count() > 0, 10)
        assert pub_ready
        rec = run_once(node, telem)
        assert wait_for(lambda: msgs, 10)
        m = msgs[0]
        assert (m.plugin, m.entity_id, m.steps, m.halt_reason) == (
            'fixture', node.entity_id, rec['steps'], rec['halt_reason'])
        assert list(m.latent_shape) == [128] and m.latent_dtype == 'float32'
        assert json.loads(m.summary_json) == {'n': 128, 'lam': 4.0}
        exp = experience_from_msg(m)
        assert exp['latent'].shape == (128,) and exp['key'].dtype == np.float32
    finally:
        node.destroy_node()


def test_experience_messages_round_trip_and_garbage_is_refused():
    from std_msgs.msg import Header
    lat = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    m = experience_to_msg({'plugin': 'vision', 'key': np.ones(4), 'latent': lat,
                           'summary': {'a': np.float32(1.5)}, 'steps': 3, 'energy': 0.5,
                           'halt_reason': 'slope<eps'}, Header(frame_id='cam'))
    back = experience_from_msg(m)
    assert back['latent'].dtype == np.float16 and np.array_equal(back['latent'], lat)
    assert back['summary'] == {'a': 1.5} and back['frame_id'] == 'cam' and back['steps'] == 3
    bad = experience_to_msg({'plugin': 'vision', 'key': np.ones(4)}, Header())
    bad.latent = [1.0, 2.0, 3.0]
    bad.latent_shape = [2, 2]
    with pytest.raises(InputError, match='3 values but its shape'):
        experience_from_msg(bad)
    bad.latent_shape = [3]
    bad.key = [float('nan'), 1.0]
    with pytest.raises(InputError, match='non-finite'):
        experience_from_msg(bad)
    with pytest.raises(ValueError, match='all zeros'):
        experience_to_msg({'plugin': 'vision', 'key': np.zeros(3)}, Header())
    with pytest.raises(ValueError, match='JSON'):
        experience_to_msg({'plugin': 'v', 'key': np.ones(2), 'summary': {'x': float('nan')}},
                          Header())


def test_a_read_only_store_never_creates_writes_or_sets_aside(tmp_path):
    path = tmp_path / 'm.db'
    with pytest.raises(StoreUnavailableError, match='no such file'):
        ExperienceStore(path, readonly=True)
    assert not path.exists()
    (tmp_path / 'empty.db').write_bytes(b'')
    with pytest.raises(StoreUnavailableError, match='no experience store there yet'):
        ExperienceStore(tmp_path / 'empty.db', readonly=True)
    writer = ExperienceStore(path)
    writer.add('vision', [1.0, 0.0], np.ones(3, np.float32), {'k': 1})
    reader = ExperienceStore(path, readonly=True, check=False)
    hit = reader.nearest('vision', [1.0, 0.1])[0]
    assert hit.hits == 0 and writer.get(hit.id).hits == 0  # a read-only look-up counts no hit
    writer.add('vision', [0.0, 1.0], None, {})
    assert reader.nearest('vision', [0.0, 1.0])[0].key[1] == 1.0  # sees the writer's new row
    with pytest.raises(StoreReadOnlyError):
        reader.add('vision', [1.0, 1.0])
    reader.close()
    writer.close()
    (tmp_path / 'bad.db').write_bytes(b'garbage' * 1000)
    with pytest.raises(StoreUnavailableError, match='cannot be read'):
        ExperienceStore(tmp_path / 'bad.db', readonly=True)
    assert (tmp_path / 'bad.db').read_bytes() == b'garbage' * 1000  # left alone


def test_memory_is_registered_with_a_low_priority_the_orchestrator_applies():
    spec = registry.get('memory')
    assert (spec.kind, spec.executable, spec.node_name) == ('memory', 'memory_irp_node',
                                                            'memory_irp_node')
    assert spec.priority < 1 and registry.kind_priorities() == {'memory': spec.priority}
    plain = CycleAllocator(total=100.0, floor=0.05)
    ranked = CycleAllocator(total=100.0, floor=0.05, priorities=registry.kind_priorities())
    for alloc in (plain, ranked):
        for name, kind in (('/vision', 'vision'), ('/memory', 'memory')):
            alloc.heartbeat(name, kind, 0.0, least=1.0)
            alloc.plugins[name].need = 400.0  # both want more than there is
    eq, low = plain.start_cycle(0.0), ranked.start_cycle(0.0)
    assert eq['/vision'] == pytest.approx(eq['/memory'])
    assert low['/memory'] < low['/vision'] and low['/memory'] >= 5.0  # the floor holds
    assert sum(low.values()) == pytest.approx(100.0)
    with pytest.raises(ValueError, match='priorities'):
        CycleAllocator(total=1.0, priorities={'memory': 0.0})


def test_launching_memory_turns_the_others_memory_on(tmp_path):
    ov = str(tmp_path / 'ov.yaml')
    p = launch_plan.plan('vision,memory', config='cfg.yaml', overrides_path=ov)
    assert p.overrides['vision_irp_node']['memory'] == 'topic'
    assert 'memory' not in p.overrides['memory_irp_node']
    p = launch_plan.plan('vision,memory', config='cfg.yaml', composed=True, overrides_path=ov)
    assert p.overrides['vision_irp_node']['memory'] == 'mailbox'
    p = launch_plan.plan('vision', config='cfg.yaml', overrides_path=ov)
    assert 'memory' not in p.overrides['vision_irp_node']


class SlowSleep(SleepIRP):
    """Test fixture: each sleep step takes 0.2 s (time to deactivate the node under it)."""

    def step(self, state, schedule):
        time.sleep(0.2)
        return super().step(state, schedule)


class SlowMemoryNode(MemoryIRPNode):
    """Test fixture node around :class:`SlowSleep`."""

    def create_plugin(self):
        return SlowSleep(eps=0.0, max_steps=50)

    def example_input(self):
        return SleepInput(keys=np.eye(4)[[0, 1, 2, 3] * 5] + 0.01), None


def fill(store, n_places=5, visits=8, seed=0):
    rng = np.random.default_rng(seed)
    places = rng.standard_normal((n_places, 16))
    for i in range(n_places * visits):
        store.add('vision', places[i % n_places] + 0.05 * rng.standard_normal(16),
                  np.full(8, i % n_places, np.float32), {'p': i % n_places})


def test_a_sleep_interrupted_by_deactivate_or_budget_leaves_the_store(ros, tmp_path):
    db = tmp_path / 'memory.db'
    with ExperienceStore(db) as store:
        fill(store)
    node = make_node(ros, tmp_path, SlowMemoryNode, idle_sleep_s=0.0)
    try:
        job = node.request_sleep()
        assert wait_for(lambda: node._busy, 10)
        time.sleep(0.3)  # a step or two under way
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert job.done.wait(10) and job.cut_short and not job.committed
        assert job.reports[0].halt_reason == 'manual' and 'nothing written' in job.summary()
        assert node.memory_counters.sleeps_interrupted == 1
        with ExperienceStore(db, readonly=True) as store:
            assert store.count() == 40 and store.count(source='prototype') == 0
        # a budget too small for the sleep: halted by budget, nothing written
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        node.set_parameters([Parameter('default_atp', value=1e-3)])
        job = node.request_sleep()
        assert job.done.wait(20) and job.reports[0].halt_reason == 'budget'
        assert not job.committed and job.cut_short
        with ExperienceStore(db, readonly=True) as store:
            assert store.count() == 40
        # with the default budget again it completes
        node.set_parameters([Parameter('default_atp', value=0.0)])
        node.set_parameters([Parameter('max_steps', value=3)])
        job = node.request_sleep()
        assert job.done.wait(20) and job.committed, job.summary()
        with ExperienceStore(db, readonly=True) as store:
            assert store.count(source='prototype') == 5
    finally:
        node.destroy_node()


def test_the_host_backs_off_lookups_that_give_no_warm_start(ros, tmp_path):
    """RecallGate in the node host: in places memory does not know, recall is offered to fewer
    runs (counted as recalls_skipped); a warm start brings it back to every run."""
    node = make_node(ros, tmp_path, CtxSpyNode, memory='mailbox', recall_max_interval=4)
    node.mailbox = Mailbox()
    telem = ros.collect(String, '/irp/telemetry_json')
    try:
        CtxSpy.seen.clear()
        for i in range(12):  # no store: every look-up misses
            run_once(node, telem, signal=list(np.sin(np.linspace(0, 3 + i, 128))))
        offered = ['recall' in c for c in CtxSpy.seen]
        assert offered[:3] == [True] * 3 and sum(offered) < 9, offered
        assert node.counters.recalls_skipped == offered.count(False) > 0
    finally:
        node.destroy_node()
