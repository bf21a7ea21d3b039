"""The allocator and trust book: property-based and known-value tests."""

import json
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_irp_ros.core.allocator import (
    TRUST_MAX,
    TRUST_MIN,
    TrustBook,
    allocate,
    regrant,
    run_score,
    score_to_trust,
)

names = st.text(alphabet='abcdefgh/_', min_size=1, max_size=6)
trusts = st.floats(TRUST_MIN, TRUST_MAX)
demands = st.floats(0, 1e4)
plugin_maps = st.dictionaries(names, st.tuples(trusts, demands), max_size=8)


@given(total=st.floats(0, 1e4), plugins=plugin_maps, floor=st.floats(0, 1))
@settings(max_examples=400, deadline=None)
def test_allocate_never_over_allocates_and_respects_floor(total, plugins, floor):
    shares = allocate(total, plugins, floor)
    assert sum(shares.values()) <= total * (1 + 1e-9) + 1e-9
    active = [n for n, (_, d) in plugins.items() if d > 0]
    assert set(shares) == set(active)
    floor_each = min(floor * total, total / len(active)) if active else 0.0
    for n, s in shares.items():
        demand = plugins[n][1]
        assert s >= min(demand, floor_each) * (1 - 1e-9) - 1e-9
    # Everything is handed out; a surplus only once every demand is met.
    if active:
        assert sum(shares.values()) == pytest.approx(total, rel=1e-9, abs=1e-9)
        if total > sum(plugins[n][1] for n in active) * (1 + 1e-9):
            for n in active:
                assert shares[n] >= plugins[n][1] * (1 - 1e-9) - 1e-9


@given(total=st.floats(0, 1e4), plugins=plugin_maps, floor=st.floats(0, 1))
@settings(max_examples=100, deadline=None)
def test_allocate_is_deterministic_and_order_free(total, plugins, floor):
    a = allocate(total, plugins, floor)
    b = allocate(total, dict(reversed(list(plugins.items()))), floor)
    assert a == b


@given(freed=st.floats(0, 1e4), running=plugin_maps)
@settings(max_examples=300, deadline=None)
def test_regrant_conserves_atp(freed, running):
    ups = regrant(freed, running)
    assert sum(ups.values()) <= freed * (1 + 1e-9) + 1e-9
    for n, v in ups.items():
        assert 0 <= v <= running[n][1] * (1 + 1e-9) + 1e-9
    wanted = sum(w for _, w in running.values() if w > 0)
    # Everything freed is handed out unless the runners want less than that.
    assert sum(ups.values()) == pytest.approx(min(freed, wanted), rel=1e-6, abs=1e-6)


def test_allocate_known_values():
    # Trust x demand weights 3:1 after a 10 % floor each.
    shares = allocate(100.0, {'a': (3.0, 1000.0), 'b': (1.0, 1000.0)}, floor=0.1)
    assert shares['a'] == pytest.approx(10 + 80 * 0.75)
    assert shares['b'] == pytest.approx(10 + 80 * 0.25)
    # A capped plugin's unused share goes to the others.
    shares = allocate(100.0, {'a': (10.0, 5.0), 'b': (0.1, 1000.0)}, floor=0.0)
    assert shares == {'a': pytest.approx(5.0), 'b': pytest.approx(95.0)}
    # Demands met first, then the surplus by trust x demand (weights 2:1 here).
    shares = allocate(100.0, {'a': (2.0, 10.0), 'b': (2.0, 5.0)}, floor=0.0)
    assert shares == {'a': pytest.approx(10 + 85 * 2 / 3), 'b': pytest.approx(5 + 85 / 3)}
    assert allocate(100.0, {'a': (1.0, 0.0)}) == {}
    assert regrant(10.0, {'a': (1.0, 100.0), 'b': (3.0, 100.0)}) == {
        'a': pytest.approx(2.5), 'b': pytest.approx(7.5)}
    with pytest.raises(ValueError):
        allocate(math.inf, {})


def record(energies, reason, quality=None):
    import numpy as np

    from sage_irp_ros.core import Trace, make_record
    t = Trace(energies=list(energies), halt_reason=reason)
    rec = make_record('custom', t, metadata={'quality': quality} if quality is not None else None)
    assert np.isfinite(rec['E'])
    return rec


def test_run_score_ranks_good_runs_above_erratic_ones():
    good = run_score(record([100, 50, 25, 13, 12.5], 'slope<eps'))
    erratic = run_score(record([100, 180, 40, 300, 90, 250], 'max_steps'))
    broken = run_score(record([100, 90], 'error'))
    assert good > 0.8 and erratic < 0.4 and broken < good
    assert run_score(record([5.0], 'stable')) == 1.0  # nothing to do, done at once
    assert run_score(record([5.0], 'budget')) is None  # not allowed to start: no evidence
    # Stopped from outside after some steps: judged by those steps, not by the stop.
    assert run_score(record([100, 50, 25], 'budget')) > 0.8
    assert run_score(record([100, 50], 'slope<eps', quality=0.0)) < run_score(
        record([100, 50], 'slope<eps', quality=1.0))


def test_score_to_trust_range():
    assert score_to_trust(0.5) == pytest.approx(1.0)
    assert score_to_trust(0.0) == TRUST_MIN and score_to_trust(1.0) == TRUST_MAX


def test_trust_book_ema_and_persistence(tmp_path):
    path = str(tmp_path / 'trust.json')
    book = TrustBook(alpha=0.5, path=path)
    assert book.trust('/x') == 1.0
    book.update('/x', 1.0)
    assert book.entries['/x'].score == pytest.approx(0.75)
    for _ in range(30):
        book.update('/bad', 0.0)
    assert book.trust('/bad') == pytest.approx(TRUST_MIN, rel=1e-3)
    book.save()
    again = TrustBook(path=path)
    assert again.trust('/x') == pytest.approx(book.trust('/x'))
    assert again.entries['/bad'].runs == 30
    json.loads(open(path).read())
    (tmp_path / 'broken.json').write_text('{not json')
    with pytest.raises(ValueError, match='broken.json'):
        TrustBook(path=str(tmp_path / 'broken.json'))


def _rec(spent, reason, cycle, energies=(10.0, 5.0, 4.0), price=None, dropped=0,
         metadata=None, per_input=0.0):
    """A run's record; ``price`` None: a host that reports no run info (no ``run``)."""
    from sage_irp_ros.core import RunInfo, Trace, make_record
    t = Trace(energies=list(energies), halt_reason=reason, atp_spent=spent)
    run = None if price is None else RunInfo(cycle=cycle, trust_weight=None,
                                             atp_per_step=price, atp_per_input=per_input,
                                             dropped_inputs=dropped)
    return make_record('custom', t, run=run, metadata=metadata)


def test_cycle_allocator_regrants_spare_within_the_cycle_and_conserves_total():
    from sage_irp_ros.core.allocator import CycleAllocator
    a = CycleAllocator(total=10.0, floor=0.1, liveness_timeout=1.0)
    a.observe('/a', 'vision', _rec(4.0, 'slope<eps', None), now=0.0)
    a.observe('/b', 'language', _rec(4.0, 'budget', None), now=0.0)
    g = a.start_cycle(now=0.1)
    assert set(g) == {'/a', '/b'} and sum(g.values()) <= 10.0
    # /b runs out of budget (wants more); /a then halts early with ATP to spare.
    assert a.observe('/b', 'language', _rec(g['/b'], 'budget', 1, price=0.1), now=0.2) == {}
    changes = a.observe('/a', 'vision', _rec(1.0, 'slope<eps', 1, price=0.1), now=0.3)
    assert list(changes)[0] == '/a' and changes['/a'] < g['/a'] and changes['/b'] > g['/b']
    assert sum(p.granted for p in a.plugins.values()) <= 10.0 + 1e-9
    assert a.regranted_total == pytest.approx(g['/a'] - changes['/a'])
    # The cycle that ends taught /b that it needs more.
    need_b = a.plugins['/b'].need
    a.start_cycle(now=0.4)
    assert a.plugins['/b'].need > need_b and a.overallocations == 0
    # Liveness: /a stops reporting and leaves; it rejoins when it reports again.
    a.observe('/b', 'language', _rec(1.0, 'slope<eps', 2, price=0.1), now=1.3)
    assert set(a.start_cycle(now=1.35)) == {'/b'} and a.left == ['/a']
    a.observe('/a', 'vision', _rec(1.0, 'slope<eps', None), now=1.4)
    assert set(a.start_cycle(now=1.45)) == {'/a', '/b'}


def test_cycle_allocator_reads_the_typed_run_fields_not_metadata():
    from sage_irp_ros.core.allocator import CycleAllocator
    a = CycleAllocator(total=10.0, floor=0.1)
    a.observe('/a', 'vision', _rec(1.0, 'slope<eps', None, price=0.5, dropped=3), now=0.0)
    assert a.plugins['/a'].dropped == 3
    # The price of one step is the least a run needs.
    a.observe('/a', 'vision', _rec(0.2, 'slope<eps', None, price=3.0, dropped=5), now=0.1)
    assert a.plugins['/a'].need == pytest.approx(3.0) and a.plugins['/a'].dropped == 5
    a.start_cycle(now=0.2)
    # Facts in metadata are plugin extras, not read: this run names no cycle, frees nothing.
    legacy = _rec(0.1, 'slope<eps', None, metadata={
        'cycle': a.cycle, 'atp_per_step': 9.0, 'dropped_total': 99})
    assert a.observe('/a', 'vision', legacy, now=0.3) == {}
    assert a.plugins['/a'].dropped == 5 and a.plugins['/a'].need < 9.0
    assert a.plugins['/a'].runs_cycle == 0
    # The same run with its cycle in run.cycle counts towards the cycle.
    a.observe('/a', 'vision', _rec(0.1, 'slope<eps', a.cycle, price=0.05), now=0.4)
    assert a.plugins['/a'].runs_cycle == 1 and a.plugins['/a'].spent == pytest.approx(0.1)


def test_least_need_is_the_per_input_price_plus_one_step():
    from sage_irp_ros.core.allocator import CycleAllocator
    a = CycleAllocator(total=100.0, floor=0.1)
    # A run that halted at once spent little; the least a run needs is the input and one step.
    a.observe('/lm', 'language', _rec(0.5, 'stable', None, price=5.0, per_input=20.0), now=0.0)
    assert a.plugins['/lm'].need == pytest.approx(25.0)
    assert a.start_cycle(now=0.1)['/lm'] >= 25.0
    # A run that spent more than that raises the need as before (EMA of what runs spend).
    a.observe('/lm', 'language', _rec(45.0, 'stable', a.cycle, price=5.0, per_input=20.0),
              now=0.2)
    assert a.plugins['/lm'].need == pytest.approx(25.0 + 0.3 * (45.0 - 25.0))


def test_cycle_allocator_takes_records_without_run_info():
    # A host that reports no run info: priced by what it spends, its runs on default budgets.
    from sage_irp_ros.core.allocator import CycleAllocator
    a = CycleAllocator(total=10.0, floor=0.1)
    a.observe('/x', 'custom', _rec(2.0, 'slope<eps', None), now=0.0)
    assert a.plugins['/x'].need == pytest.approx(2.0) and a.plugins['/x'].dropped == 0
    g = a.start_cycle(now=0.1)
    assert g == {'/x': pytest.approx(10.0)}
    assert a.observe('/x', 'custom', _rec(1.0, 'slope<eps', None), now=0.2) == {}
    assert a.plugins['/x'].runs_cycle == 0  # no cycle named: not counted as this cycle's
    # With the cycle passed explicitly (the benchmark's way), it counts.
    a.observe('/x', 'custom', _rec(1.0, 'slope<eps', None), now=0.3, cycle=a.cycle)
    assert a.plugins['/x'].runs_cycle == 1


def test_allocate_with_denormal_demand_hands_out_everything():
    # Found by hypothesis: amount * w / total underflowed for w ~ 1e-323.
    assert allocate(1.625, {'_': (2.0, 5e-324)}, floor=0.0) == {'_': 1.625}


def test_no_grant_too_small_for_one_input_and_one_step():
    # 10 ATP among three: the floors (0.5 each) would pay nobody's input (3) and step (1)
    plugins = {'a': (1.0, 8.0), 'b': (5.0, 8.0), 'c': (0.5, 8.0)}
    least = {'a': 4.0, 'b': 4.0, 'c': 4.0}
    g = allocate(10.0, plugins, floor=0.05, least=least)
    assert sum(g.values()) <= 10.0 + 1e-9
    assert all(v == 0.0 or v >= 4.0 - 1e-9 for v in g.values()), g
    assert g['b'] >= 4.0 and g['a'] >= 4.0 and g['c'] == 0.0  # most trusted first
    # without least the old rule holds: everyone gets at least the floor
    g = allocate(10.0, plugins, floor=0.05)
    assert all(v >= 0.5 - 1e-9 for v in g.values())


@given(st.dictionaries(st.sampled_from('abcdef'), st.tuples(
    st.floats(0.1, 10), st.floats(0.01, 100), st.floats(0, 50)), min_size=1),
    st.floats(0, 200))
def test_least_grants_never_overallocate_and_are_useful(plugins, total):
    g = allocate(total, {n: (t, d) for n, (t, d, _) in plugins.items()}, 0.05,
                 {n: lo for n, (_, _, lo) in plugins.items()})
    assert sum(g.values()) <= total * (1 + 1e-9) + 1e-9
    for n, v in g.items():
        assert v >= -1e-12
        assert v <= 1e-9 or v >= min(plugins[n][2], plugins[n][1]) - 1e-6 or \
            v >= plugins[n][2] - 1e-6


@pytest.mark.parametrize('entry', [{'score': float('nan'), 'runs': 3},
                                   {'score': -0.2, 'runs': 3}, {'score': 1.5, 'runs': 1},
                                   {'score': 0.5, 'runs': -1}, {'score': 'high', 'runs': 1}])
def test_a_damaged_trust_file_is_refused_clearly(tmp_path, entry):
    path = tmp_path / 'trust.json'
    path.write_text(json.dumps({'version': 1, 'plugins': {'/a': entry}}))
    with pytest.raises(ValueError, match=f'cannot read trust file {path}.*/a'):
        TrustBook(path=str(path))


def test_saving_leaves_no_temp_file_behind(tmp_path):
    book = TrustBook(path=str(tmp_path / 'trust.json'))
    book.update('/a', 0.9)
    book.save()
    book.entries['/a'].score = float('nan')  # cannot be written as JSON
    with pytest.raises(ValueError):
        book.save()
    assert sorted(os.listdir(tmp_path)) == ['trust.json']


def test_heartbeats_keep_an_idle_plugin_allocated():
    from sage_irp_ros.core.allocator import CycleAllocator
    a = CycleAllocator(total=10.0, liveness_timeout=1.0)
    a.heartbeat('/p', 'custom', now=0.0, least=3.0)
    assert a.start_cycle(0.1)['/p'] >= 3.0          # joined before any run
    for t in (0.9, 1.8, 2.7):                        # silent but alive
        a.heartbeat('/p', 'custom', now=t)
        assert '/p' in a.start_cycle(t + 0.05)
    assert '/p' not in a.start_cycle(4.0)            # no heartbeat for 1.3 s: left


def test_scarce_atp_goes_round_instead_of_starving_one_plugin():
    from sage_irp_ros.core.allocator import CycleAllocator
    a = CycleAllocator(total=10.0, liveness_timeout=100.0)
    for name in ('/a', '/b'):  # equal trust; each needs 7 for an input and a step: one fits
        a.heartbeat(name, 'custom', now=0.0, least=7.0)
    granted = {'/a': 0, '/b': 0}
    for c in range(6):
        g = a.start_cycle(0.1 * c)
        assert sum(g.values()) <= 10.0 + 1e-9
        for n, v in g.items():
            assert v == 0.0 or v >= 7.0 - 1e-9
            granted[n] += v > 0
    assert granted == {'/a': 3, '/b': 3}  # they take turns
