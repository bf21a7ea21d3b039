"""Memory plugin core: the experience store, sleep (consolidation) and their failure modes."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from sage_irp_ros.core.loop import refine
from sage_irp_ros.core.plugin import HALT_MANUAL, HALT_SLOPE
from sage_irp_ros.plugins.memory import evaluate
from sage_irp_ros.plugins.memory.evaluate import fill, recurring_places, retrieval
from sage_irp_ros.plugins.memory.sleep import SleepInput, SleepIRP, consolidate
from sage_irp_ros.plugins.memory.store import (
    SCHEMA_VERSION,
    SOURCE_EXPERIENCE,
    SOURCE_PROTOTYPE,
    ExperienceStore,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY = os.path.join(ROOT, 'sage_irp_ros', 'plugins', 'memory')
BAD_NAME = re.compile(r'\.bad-\d{8}T\d{6}Z(-\d+)?$')


def _child(code: str) -> subprocess.Popen:
    """A Python process running ``code`` from the repository root (stdout: lines, unbuffered)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1',
               PYTHONUNBUFFERED='1')
    return subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            proc.wait(5)
            pytest.fail(f'child ended before {prefix!r}: {proc.stderr.read()}')
        if line.startswith(prefix):
            return line
    pytest.fail(f'no {prefix!r} from the child in {timeout} s')


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


def _state(store: ExperienceStore):
    """Everything a consolidation may change: rows of both tables and the totals."""
    exp = [(r.id, r.key.tobytes(), None if r.latent is None else r.latent.tobytes(),
            json.dumps(r.summary)) for r in store.records(source=SOURCE_EXPERIENCE)]
    pro = [(r.id, r.members) for r in store.records(source=SOURCE_PROTOTYPE)]
    st = store.stats()
    return exp, pro, st['rows'], st['payload_bytes'], st['consolidations']


def _filled(path, n_places=50, revisits=20, seed=0, **kw):
    data = recurring_places(n_places=n_places, revisits=revisits, seed=seed, **kw)
    store = ExperienceStore(path, max_rows=100_000)
    fill(store, data)
    return store, data


# --------------------------------------------------------------------------- store


def test_round_trip_and_restart(tmp_path):
    path = tmp_path / 'mem' / 'experience.db'
    rng = np.random.default_rng(0)
    lat32 = rng.standard_normal((3, 4, 5)).astype(np.float32)
    lat64 = rng.standard_normal(7)
    big = np.array([1e6, -2.0], np.float32)  # overflows float16: kept as float32
    ints = np.arange(6, dtype=np.int16).reshape(2, 3)
    keys = rng.standard_normal((5, 12)).astype(np.float32)
    with ExperienceStore(path, max_rows=100) as store:
        assert store.open_error is None and store.recovered_from is None
        ids = [store.add('vision', keys[0], lat32, {'miou': np.float32(0.5), 'cls': [1, 2]},
                         steps=4, energy=0.25, halt_reason='slope<eps', stamp=123.5),
               store.add('vision', keys[1], lat64, None),
               store.add('control', keys[2], big, {'path': np.arange(3)}),
               store.add('control', keys[3], ints, 'text'),
               store.add('control', keys[4], None, {})]
        for s in ('journal_mode', 'user_version'):
            assert store._conn().execute(f'PRAGMA {s}').fetchone()[0] in ('wal', SCHEMA_VERSION)
        assert store._conn().execute('PRAGMA synchronous').fetchone()[0] == 1  # NORMAL
    with ExperienceStore(path, max_rows=100) as store:  # reopened: everything is still there
        assert store.open_error is None
        r = store.get(ids[0])
        assert r.plugin == 'vision' and r.source == SOURCE_EXPERIENCE
        assert r.latent.dtype == np.float32 and r.latent.shape == (3, 4, 5)
        np.testing.assert_allclose(r.latent, lat32, rtol=1e-3, atol=1e-3)  # float16 bytes
        assert not np.array_equal(r.latent, lat32)  # (it was really stored as float16)
        np.testing.assert_array_equal(r.key, keys[0])
        assert r.summary == {'miou': 0.5, 'cls': [1, 2]}
        assert (r.steps, r.energy, r.halt_reason, r.stamp) == (4, 0.25, 'slope<eps', 123.5)
        np.testing.assert_array_equal(store.get(ids[1]).latent, lat64)
        assert store.get(ids[1]).latent.dtype == np.float64
        np.testing.assert_array_equal(store.get(ids[2]).latent, big)
        assert store.get(ids[2]).summary == {'path': [0, 1, 2]}
        np.testing.assert_array_equal(store.get(ids[3]).latent, ints)
        assert store.get(ids[3]).latent.dtype == np.int16 and store.get(ids[3]).summary == 'text'
        assert store.get(ids[4]).latent is None
        st = store.stats()
        assert st['rows'] == 5 and st['experiences'] == 5 and st['prototypes'] == 0
        assert st['per_plugin'] == {'vision': {'experiences': 2, 'prototypes': 0, 'members': 2},
                                    'control': {'experiences': 3, 'prototypes': 0,
                                                'members': 3}}
        assert st['bytes_used'] > st['payload_bytes'] > 0
        # nearest: cosine, per plugin, a hit counted
        hit = store.nearest('control', 3.0 * keys[3], k=2)
        assert [h.id for h in hit][0] == ids[3] and hit[0].similarity == pytest.approx(1.0)
        assert len(hit) == 2 and hit[0].similarity >= hit[1].similarity
        assert {h.plugin for h in hit} == {'control'}
        assert store.get(ids[3]).hits == 1
        assert store.nearest('vision', keys[3], k=5, touch=False)[0].id in ids[:2]
        assert store.nearest('audio', keys[0]) == []
        assert store.nearest('vision', np.ones(3)) == []  # another key length: no rows
    with ExperienceStore(path, latent_fp16=False) as store:
        rid = store.add('vision', keys[0], lat32)
        np.testing.assert_array_equal(store.get(rid).latent, lat32)


def test_bad_inputs_are_refused_and_change_nothing(tmp_path):
    with ExperienceStore(tmp_path / 'e.db') as store:
        store.add('vision', np.ones(4))
        before = _state(store)
        for bad in (dict(key=np.zeros(4)), dict(key=np.array([1.0, np.nan])),
                    dict(key=np.ones((2, 2))), dict(key=np.ones(4), summary={'x': np.nan}),
                    dict(key=np.ones(4), latent=np.array([object()]))):
            with pytest.raises(ValueError):
                store.add_many([dict(plugin='vision', key=np.ones(4)), dict(plugin='vision',
                                                                            **bad)])
        with pytest.raises(ValueError):
            store.add('', np.ones(4))
        assert _state(store) == before
    with ExperienceStore(tmp_path / 'small.db', max_bytes=1000) as store, \
            pytest.raises(ValueError, match='exceeds max_bytes'):
        store.add('vision', np.ones(4), np.zeros(1000, np.float64))


def test_eviction_bound_holds_least_recently_used_first(tmp_path):
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((140, 16)).astype(np.float32)
    with ExperienceStore(tmp_path / 'e.db', max_rows=30) as store:
        ids = []
        for i in range(30):
            ids.append(store.add('vision', keys[i], np.zeros(8, np.float32), {'i': i}))
            time.sleep(0.001)  # distinct insert times: LRU order is the insert order
        hit = store.nearest('vision', keys[0])  # a hit makes row 0 the most recently used
        assert hit[0].id == ids[0]
        for i in range(30, 40):
            ids.append(store.add('vision', keys[i], np.zeros(8, np.float32), {'i': i}))
            assert store.count() == 30
        kept = {r.id for r in store.records()}
        assert ids[0] in kept  # used recently: kept
        assert not kept & set(ids[1:11])  # the ten least recently used went
        assert set(ids[11:40]) <= kept
        assert store.stats()['evicted'] == 10
        # the key cache of nearest() followed the inserts and evictions
        for i in (0, 11, 25, 39):
            assert store.nearest('vision', keys[i], touch=False)[0].id == ids[i]
        for i in (1, 5, 10):
            assert store.nearest('vision', keys[i], k=30, touch=False)[0].id != ids[i]
            assert ids[i] not in {r.id for r in store.nearest('vision', keys[i], k=30)}
        # a batch larger than the bound keeps its last rows
        batch = store.add_many(dict(plugin='control', key=keys[40 + i]) for i in range(50))
        assert store.count() == 30 and {r.id for r in store.records()} == set(batch[-30:])
    with ExperienceStore(tmp_path / 'b.db', max_bytes=20_000) as store:
        for i in range(100):
            store.add('vision', keys[i], np.ones(300, np.float32), {'i': i})
            st = store.stats()
            assert st['payload_bytes'] <= 20_000
            assert st['payload_bytes'] == sum(64 + 600 + len('{"i":%d}' % r.summary['i'])
                                              for r in store.records())
        assert 20_000 - st['payload_bytes'] < 1000  # (filled up to the bound)


def test_store_survives_kill_9_mid_write(tmp_path):
    path = tmp_path / 'e.db'
    code = f"""
import numpy as np
from sage_irp_ros.plugins.memory.store import ExperienceStore
store = ExperienceStore({str(path)!r}, max_rows=100000)
rng = np.random.default_rng(0)
n = 0
while True:
    ids = store.add_many(dict(plugin='vision', key=rng.standard_normal(64),
                              latent=rng.standard_normal((8, 16, 16)).astype(np.float32),
                              summary={{'batch': n}}, steps=3) for _ in range(25))
    n += 1
    print('committed', n, flush=True)
"""
    proc = _child(code)
    line = ''
    for _ in range(12):
        line = _wait_for_line(proc, 'committed')
    time.sleep(0.05)  # kill wherever it is now: most likely inside a batch
    _kill(proc)
    committed = int(line.split()[1])
    with ExperienceStore(path) as store:
        assert store.open_error is None and store.recovered_from is None
        assert store.quick_check() == 'ok'
        n = store.count()
        assert n >= 25 * committed and n % 25 == 0  # whole batches only, none lost
        recs = store.records()
        assert len(recs) == n and all(r.latent.shape == (8, 16, 16) for r in recs)
        assert store.stats()['rows'] == n  # the totals moved with the rows
        assert len(store.nearest('vision', recs[-1].key)) == 1
        store.add('vision', np.ones(64))  # and it takes writes
        assert store.count() == n + 1


def test_threads_one_writer_and_readers(tmp_path):
    rng = np.random.default_rng(2)
    keys = rng.standard_normal((400, 32)).astype(np.float32)
    errors = []
    with ExperienceStore(tmp_path / 'e.db') as store:
        store.add('vision', keys[0])

        def writer():
            try:
                for i in range(1, 400):
                    store.add('vision', keys[i], keys[i], {'i': i})
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        def reader():
            try:
                for i in range(150):
                    hit = store.nearest('vision', keys[i % 50], touch=i % 2 == 0)
                    assert hit and hit[0].similarity <= 1.0 + 1e-6
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=f) for f in (writer, reader, reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert store.count() == 400
        assert store.nearest('vision', keys[399], touch=False)[0].summary == {'i': 399}


# --------------------------------------------------------------------------- damaged files


def _garbage(path):
    path.write_bytes(np.random.default_rng(3).bytes(8192))
    (tmp := path.with_name(path.name + '-wal')).write_bytes(b'\x00junk' * 100)
    return tmp


def _truncated(path):
    store, _ = _filled(path, n_places=10, revisits=30)
    store.close()
    assert not os.path.exists(str(path) + '-wal')  # checkpointed into the file at close
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(size // 2)


def _text(path):
    path.write_text(json.dumps({'not': 'a database'}) * 200)


def _future(path):
    ExperienceStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f'PRAGMA user_version={SCHEMA_VERSION + 1}')
    conn.commit()
    conn.close()


def _foreign(path):
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE songs (title TEXT)')
    conn.commit()
    conn.close()


def _torn_page(path):
    store, _ = _filled(path, n_places=10, revisits=30)
    store.close()
    with open(path, 'r+b') as f:  # overwrite one interior b-tree page with garbage
        f.seek(4096 * 3)
        f.write(b'\xff' * 4096)


@pytest.mark.parametrize('damage,why', [
    (_garbage, 'not a database'), (_truncated, ''), (_text, 'not a database'),
    (_future, 'newer than this code'), (_foreign, 'not an experience store'),
    (_torn_page, ''),
])
def test_damaged_file_is_set_aside_and_a_fresh_store_started(tmp_path, damage, why):
    path = tmp_path / 'experience.db'
    damage(path)
    had_wal = os.path.exists(str(path) + '-wal')
    original = path.read_bytes()
    store = ExperienceStore(path)  # must not raise
    try:
        assert store.open_error is not None and store.recovered_from is not None
        msg = store.open_error
        assert '\n' not in msg and str(path) in msg and store.recovered_from in msg
        assert 'damaged' in msg and why in msg
        assert BAD_NAME.search(store.recovered_from), store.recovered_from
        assert os.path.dirname(store.recovered_from) == str(tmp_path)
        with open(store.recovered_from, 'rb') as f:
            assert f.read() == original  # set aside untouched, for a post-mortem
        if had_wal:  # its WAL went with it (SQLite may also have made an empty one at open)
            assert os.path.exists(store.recovered_from + '-wal')
        # a fresh working store in its place
        assert store.count() == 0 and store.quick_check() == 'ok'
        rid = store.add('vision', np.ones(8), np.ones(4, np.float32), {'fresh': True})
        assert store.nearest('vision', np.ones(8))[0].id == rid
        assert store.stats()['open_error'] == msg
    finally:
        store.close()
    with ExperienceStore(path) as again:  # the fresh store opens cleanly afterwards
        assert again.open_error is None and again.count() == 1


def test_empty_file_is_a_new_store_not_damage(tmp_path):
    path = tmp_path / 'e.db'
    path.write_bytes(b'')
    with ExperienceStore(path) as store:
        assert store.open_error is None and store.count() == 0
        store.add('vision', np.ones(3))
    assert [p for p in os.listdir(tmp_path) if '.bad-' in p] == []


def test_a_locked_store_is_not_damage(tmp_path):
    path = tmp_path / 'e.db'
    ExperienceStore(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute('BEGIN EXCLUSIVE')
    try:
        with pytest.raises(sqlite3.OperationalError, match='locked'):
            ExperienceStore(path, busy_timeout=0.2)
    finally:
        other.execute('ROLLBACK')
        other.close()
    assert [p for p in os.listdir(tmp_path) if '.bad-' in p] == []


# --------------------------------------------------------------------------- sleep


def test_sleep_refinement_energy_falls_and_halts_by_slope():
    data = recurring_places(seed=4)
    for m0 in (None, 1, 200):  # default seeding; must split up; must merge down
        plugin = SleepIRP(init_prototypes=m0)
        res = refine(plugin, SleepInput(keys=data.keys))
        e = np.array(res.trace.energies)
        assert res.trace.halt_reason == HALT_SLOPE, (m0, res.trace.halt_reason)
        assert res.trace.steps < plugin.halt_config().max_steps
        assert np.all(np.diff(e) <= 1e-9), e  # never rises (each move lowers it)
        assert e[-1] < e[0]
        protos = res.output
        assert 45 <= len(protos) <= 60, (m0, len(protos))
        assert sum(p.members for p in protos) == pytest.approx(len(data.places))
        members = np.concatenate([p.member_indices for p in protos])
        assert sorted(members.tolist()) == list(range(len(data.places)))
        purity = sum((data.places[p.member_indices] == data.places[p.medoid_index]).sum()
                     for p in protos) / len(data.places)
        assert purity > 0.98
        for p in protos[:5]:
            assert p.medoid_index == p.member_indices[0]
            d = ((data.keys[p.member_indices] - p.centroid) ** 2).sum(1)
            assert d[0] == pytest.approx(d.min(), abs=1e-5)  # the medoid is the closest
    # the energy is the documented one: distortion / scatter + lambda * M / W
    st = SleepIRP().init_state(SleepInput(keys=data.keys))
    x, w = st.meta['x'], st.meta['w']
    c = st.payload.centroids
    sse = (w * ((x - c[st.payload.assign]) ** 2).sum(1)).sum()
    s0 = (w * ((x - x.mean(0)) ** 2).sum(1)).sum()
    assert SleepIRP().energy(st) == pytest.approx(sse / s0 + 0.5 * len(c) / len(x))


def test_sleep_without_recurrence_does_not_merge_places():
    data = recurring_places(n_places=400, revisits=1, seed=5)
    res = refine(SleepIRP(), data.keys)
    assert len(res.output) >= 390  # distinct places stay apart


def test_consolidate_compresses_with_recall_and_real_medoids(tmp_path):
    store, data = _filled(tmp_path / 'e.db', seed=6)
    with store:
        qk, _, qp = data.visits(4, seed=99)
        before = store.stats()
        r0 = retrieval(store, data, qk, qp)
        originals = {r.id: r for r in store.records()}
        rep = consolidate(store, evaluate.PLUGIN)
        after = store.stats()
        assert rep.committed and rep.reason == 'committed'
        assert rep.halt_reason == HALT_SLOPE and rep.steps < SleepIRP().halt_config().max_steps
        assert np.all(np.diff(rep.energies) <= 1e-9)
        assert after['per_plugin'][evaluate.PLUGIN]['members'] == len(data.places)
        assert after['prototypes'] == rep.prototypes and rep.prototypes <= 60
        assert after['consolidations'] == 1
        ratio = before['bytes_used'] / after['bytes_used']
        assert ratio >= 10, ratio
        assert after['bytes_on_disk'] < before['bytes_on_disk'] / 5  # the file shrank too
        r1 = retrieval(store, data, qk, qp)
        assert r1['recall_at_1'] / r0['recall_at_1'] >= 0.95
        assert r1['hit_prototype_frac'] > 0.9
        # every prototype's medoid is a real stored experience: its key and its latent
        for p in store.records(source=SOURCE_PROTOTYPE):
            row = store._conn().execute('SELECT medoid_source, medoid_id FROM prototypes '
                                        'WHERE id = ?', (p.id,)).fetchone()
            assert row[0] == SOURCE_EXPERIENCE
            orig = originals[row[1]]
            np.testing.assert_array_equal(p.key, orig.key)
            np.testing.assert_array_equal(p.latent, orig.latent)
            assert p.summary == orig.summary and p.steps == orig.steps
            assert p.members >= 2 and 1 <= p.mean_steps <= 9
            assert np.linalg.norm(p.centroid) == pytest.approx(1.0, abs=1e-5)
        hit = store.nearest(evaluate.PLUGIN, qk[0])[0]
        assert hit.source == SOURCE_PROTOTYPE and hit.summary['place'] == qp[0]


def test_second_sleep_folds_new_visits_into_the_prototypes(tmp_path):
    store, data = _filled(tmp_path / 'e.db', seed=7)
    with store:
        assert consolidate(store, evaluate.PLUGIN).committed
        n_proto = store.count(source=SOURCE_PROTOTYPE)
        keys, latents, places = data.visits(3, seed=123)
        store.add_many(dict(plugin=evaluate.PLUGIN, key=k, latent=v, summary={'place': int(p)})
                       for k, v, p in zip(keys, latents, places, strict=True))
        rep = consolidate(store, evaluate.PLUGIN)
        assert rep.committed and rep.inputs == n_proto + len(places)
        st = store.stats()
        assert st['per_plugin'][evaluate.PLUGIN]['members'] == len(data.places) + len(places)
        assert st['prototypes'] <= n_proto + 5  # the same places, not a second set
        assert st['experiences'] <= 10


def test_rows_added_during_sleep_are_kept(tmp_path):
    store, data = _filled(tmp_path / 'e.db', n_places=20, revisits=10, seed=8)
    with store:
        added = []

        def progress(phase, info):
            if phase == 'refined':  # outside the transaction: a plugin stores a new run
                added.append(store.add(evaluate.PLUGIN, data.keys[0], summary={'place': -1}))

        rep = consolidate(store, evaluate.PLUGIN, progress=progress)
        assert rep.committed and added
        assert store.get(added[0]) is not None
        assert store.count(source=SOURCE_EXPERIENCE) >= 1


def test_should_stop_after_two_steps_leaves_the_store_as_it_was(tmp_path):
    store, _ = _filled(tmp_path / 'e.db', seed=9)
    with store:
        before = _state(store)
        calls = []

        def should_stop():
            calls.append(1)
            return len(calls) > 2  # checked before every step: steps 0 and 1 run

        rep = consolidate(store, evaluate.PLUGIN, should_stop=should_stop)
        assert not rep.committed and rep.halt_reason == HALT_MANUAL and rep.steps == 2
        assert 'left as it was' in rep.reason
        assert _state(store) == before
        cancel = threading.Event()
        cancel.set()
        rep = consolidate(store, evaluate.PLUGIN, cancel=cancel)
        assert not rep.committed and rep.steps == 0 and _state(store) == before
        assert consolidate(store, evaluate.PLUGIN).committed  # and it still works
        rep = consolidate(store, 'nobody')  # no rows: nothing to do
        assert not rep.committed and 'fewer than min_rows' in rep.reason


def test_keyboard_interrupt_in_sleep_or_commit_rolls_back(tmp_path):
    store, _ = _filled(tmp_path / 'e.db', n_places=30, seed=10)
    with store:
        before = _state(store)
        calls = []

        def should_stop():
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return False

        with pytest.raises(KeyboardInterrupt):
            consolidate(store, evaluate.PLUGIN, should_stop=should_stop)
        assert _state(store) == before

        def progress(phase, info):
            if phase == 'commit':  # inside the transaction: rows already swapped, not committed
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            consolidate(store, evaluate.PLUGIN, progress=progress)
        assert _state(store) == before
        assert store.quick_check() == 'ok'
        assert consolidate(store, evaluate.PLUGIN).committed


_SLEEP_CHILD = """
import sys, time
from sage_irp_ros.plugins.memory.sleep import consolidate
from sage_irp_ros.plugins.memory.store import ExperienceStore
store = ExperienceStore({path!r})
mode = {mode!r}
calls = []

def should_stop():
    calls.append(1)
    if mode == 'step' and len(calls) == 3:
        print('in step', flush=True)
        time.sleep(60)
    return False

def progress(phase, info):
    print('phase', phase, flush=True)
    if mode == 'commit' and phase == 'commit':
        time.sleep(60)

print('start', flush=True)
consolidate(store, 'synthetic', should_stop=should_stop, progress=progress)
print('done', flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize('mode', ['step', 'commit', 'any'])
def test_sleep_killed_mid_way_leaves_store_intact_or_consolidated(tmp_path, mode):
    path = tmp_path / 'e.db'
    store, data = _filled(path, seed=11)
    before = _state(store)
    store.close()
    proc = _child(_SLEEP_CHILD.format(path=str(path), mode=mode))
    if mode == 'step':
        _wait_for_line(proc, 'in step')
    elif mode == 'commit':
        _wait_for_line(proc, 'phase commit')
    else:
        _wait_for_line(proc, 'start')
        time.sleep(np.random.default_rng().uniform(0.0, 0.3))
    _kill(proc)
    with ExperienceStore(path) as store:
        assert store.open_error is None and store.quick_check() == 'ok'
        st = store.stats()
        if mode != 'any' or st['prototypes'] == 0:
            assert _state(store) == before  # exactly as before: raw rows intact
        else:  # fully consolidated: no raw row of the snapshot, every visit in a prototype
            assert st['per_plugin']['synthetic']['members'] == len(data.places)
            assert st['experiences'] <= 5
        assert consolidate(store, 'synthetic').committed or st['prototypes'] > 0


# --------------------------------------------------------------------------- evaluation, ROS


def test_evaluate_entry_prints_the_figures(tmp_path, capsys):
    assert evaluate.main(['--quick', '--dir', str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['compression_ratio'] >= 10 and out['recall_ratio'] >= 0.95
    assert out['halt_reason'] == HALT_SLOPE and out['steps'] >= 1
    assert out['sleep_seconds_10k'] is None  # --quick
    assert out['norecur']['compression_ratio'] < 1.2
    assert out['norecur']['recall_ratio'] >= 0.95


def test_memory_modules_import_no_ros():
    pattern = re.compile(r'^\s*(from|import)\s+(rclpy|rosidl|std_msgs|sensor_msgs|'
                         r'sage_irp_ros\.msg|sage_irp_ros\.ros)\b', re.M)
    # node.py is the folder's one ROS module (the thin node), as test_lint.py allows
    files = [f for f in os.listdir(MEMORY) if f.endswith('.py') and f != 'node.py']
    assert {'store.py', 'sleep.py', 'evaluate.py', 'experience.py'} <= set(files)
    for fn in files:
        with open(os.path.join(MEMORY, fn)) as f:
            assert not pattern.search(f.read()), fn
    code = ('import sys\n'
            'import sage_irp_ros.plugins.memory.store, sage_irp_ros.plugins.memory.sleep\n'
            'import sage_irp_ros.plugins.memory.evaluate, sage_irp_ros.plugins.memory.experience\n'
            'import sage_irp_ros.core.mailbox\n'
            'bad = [m for m in sys.modules if m.startswith(("rclpy", "rosidl", "std_msgs"))]\n'
            'print(bad); sys.exit(1 if bad else 0)\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stdout + out.stderr


def test_nearest_does_not_read_rows_under_min_similarity(tmp_path):
    keys = np.eye(4, dtype=np.float32)
    with ExperienceStore(str(tmp_path / 'm.db')) as store:
        rid = store.add('vision', keys[0], latent=np.ones((2, 3), np.float32),
                        summary={'a': 1}, steps=3)
        near = store.nearest('vision', keys[0] + 0.1 * keys[1], min_similarity=0.9)[0]
        assert near.id == rid and near.latent is not None and near.summary == {'a': 1}
        far = store.nearest('vision', keys[1] + 0.2 * keys[0], min_similarity=0.9)[0]
        assert far.id == rid and 0 < far.similarity < 0.9
        assert far.latent is None and far.key is None and far.summary is None
        assert store.get(rid).hits == 1  # the far record was not touched, the near one was


def test_nearest_reuses_decoded_records_until_the_store_changes(tmp_path):
    keys = np.eye(4, dtype=np.float32)
    with ExperienceStore(str(tmp_path / 'm.db')) as store:
        rid = store.add('vision', keys[0], latent=np.arange(6, dtype=np.float32).reshape(2, 3))
        a = store.nearest('vision', keys[0], touch=False)[0]
        b = store.nearest('vision', keys[0] + 0.5 * keys[1], touch=False)[0]
        assert a.id == b.id == rid and a is not b
        assert a.latent is b.latent                   # decoded once, shared
        assert a.similarity == pytest.approx(1.0) and b.similarity < 0.95  # per query
        b.similarity = 0.0                            # a caller's record is its own
        assert store.nearest('vision', keys[0], touch=False)[0].similarity == pytest.approx(1.0)
        # an insert (a sleep, an eviction: any row added or deleted) empties the cache
        store.add('vision', keys[2], latent=np.zeros((2, 3), np.float32))
        c = store.nearest('vision', keys[0], touch=False)[0]
        assert c.id == rid and c.latent is not a.latent
        np.testing.assert_array_equal(c.latent, a.latent)
        # another process (the memory node's sleep) changes the file: a reader sees it
        reader = ExperienceStore(str(tmp_path / 'm.db'), readonly=True)
        r0 = reader.nearest('vision', keys[0], touch=False)[0]
        assert reader.nearest('vision', keys[0], touch=False)[0].latent is r0.latent
        store.add('vision', keys[3], latent=np.ones((2, 3), np.float32))
        assert reader.nearest('vision', keys[0], touch=False)[0].latent is not r0.latent
        reader.close()


def test_recall_gate_backs_off_without_warm_starts_and_comes_back_with_one():
    from sage_irp_ros.plugins.memory.experience import RecallGate
    g = RecallGate(patience=3, max_interval=8)
    pattern = []
    for _ in range(40):  # a robot in places it has never seen: every look-up misses
        a = g.ask()
        pattern.append(a)
        if a:
            g.observe({'used': False, 'why': 'not similar enough'})
    assert pattern[:3] == [True] * 3          # every input while patience lasts
    assert sum(pattern[-16:]) == 2            # then one input in 8
    assert g.skipped == pattern.count(False) and g.asked == pattern.count(True)
    waited = 0
    while not g.ask():                        # back at a known place: asked within 8 inputs
        waited += 1
    assert waited < 8
    g.observe({'used': True, 'similarity': 0.97})
    assert all(g.ask() for _ in range(5))     # a warm start: every input again
    with pytest.raises(ValueError):
        RecallGate(patience=0)
