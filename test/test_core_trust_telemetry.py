"""Trust metrics and telemetry records: known values, finiteness, schema acceptance/rejection."""

import copy
import json
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted import ScriptedPlugin

from sage_irp_ros.core import (
    Budget,
    HaltConfig,
    JsonlSink,
    RunInfo,
    TelemetryError,
    Trace,
    make_record,
    refine,
    trust_metrics,
    validate_record,
)

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
run_infos = st.builds(
    RunInfo, cycle=st.one_of(st.none(), st.integers(0, 2 ** 64 - 1)),
    trust_weight=st.one_of(st.none(), st.floats(0, 1e300)), atp_per_step=st.floats(0),
    atp_per_input=st.floats(0), dropped_inputs=st.integers(0, 2 ** 64 - 1),
    model_version=st.text(max_size=8).filter(lambda s: '\x00' not in s),
    device=st.just('cpu'), precision=st.just('fp32'))


def test_trust_known_values():
    t = trust_metrics([10.0, 6.0, 4.0, 5.0])  # dE = -4, -2, +1
    assert t.monotonicity_ratio == pytest.approx(2 / 3)
    assert t.dE_variance == pytest.approx(((-4 + 5 / 3) ** 2 + (-2 + 5 / 3) ** 2
                                           + (1 + 5 / 3) ** 2) / 3)
    assert t.convergence_rate == pytest.approx(5 / 3)
    assert t.contribution_to_H == pytest.approx(-0.5)


def test_trust_of_zero_and_one_step():
    assert trust_metrics([]).as_dict() == trust_metrics([3.0]).as_dict() == {
        'monotonicity_ratio': 1.0, 'dE_variance': 0.0, 'convergence_rate': 0.0,
        'contribution_to_H': 0.0}
    t = trust_metrics([3.0, 1.0])
    assert (t.monotonicity_ratio, t.dE_variance, t.convergence_rate) == (1.0, 0.0, 2.0)


def test_trust_flat_run_counts_as_monotone_and_zero_energy_is_safe():
    t = trust_metrics([0.0, 0.0, 0.0])
    assert t.monotonicity_ratio == 1.0 and t.contribution_to_H == 0.0


@given(st.lists(finite_floats, min_size=0, max_size=40))
@settings(max_examples=300, deadline=None)
def test_trust_is_always_finite(energies):
    t = trust_metrics(energies)
    for v in t.as_dict().values():
        assert math.isfinite(v)
    assert 0.0 <= t.monotonicity_ratio <= 1.0 and t.dE_variance >= 0.0


@given(energies=st.lists(finite_floats, min_size=1, max_size=30),
       max_steps=st.integers(0, 30), granted=st.one_of(st.none(), st.floats(0, 1e6)),
       kind=st.sampled_from(['vision', 'language', 'audio', 'control', 'memory', 'custom']),
       run=st.one_of(st.none(), run_infos))
@settings(max_examples=200, deadline=None)
def test_schema_accepts_every_record_the_code_makes(energies, max_steps, granted, kind, run):
    budget = Budget(granted) if granted is not None else None
    r = refine(ScriptedPlugin(energies), None, config=HaltConfig(eps=1e-3, K=2,
                                                                   max_steps=max_steps),
               budget=budget)
    rec = make_record(kind, r.trace, entity_id='/n', metadata={'q': 1.0},
                      lrc_context={'policy_id': 'p', 'L': 0.5, 'R': 1.0, 'C': 0.2},
                      memory_mb=12.5, gpu_util=None, run=run)
    json.loads(validate_record(rec))
    assert ('run' in rec) == (run is not None)


def test_run_info_becomes_the_typed_run_object():
    t = Trace(energies=[4.0, 2.0], halt_reason='slope<eps')
    info = RunInfo(cycle=1_700_000_000_123, trust_weight=2.5, atp_per_step=0.75,
                   atp_per_input=12.25, dropped_inputs=3, model_version='v2', device='cuda:0',
                   precision='fp16')
    rec = make_record('vision', t, metadata={'quality': 0.5}, run=info)
    assert rec['run'] == {'cycle': 1_700_000_000_123, 'trust_weight': 2.5,
                          'atp_per_step': 0.75, 'atp_per_input': 12.25, 'dropped_inputs': 3,
                          'model_version': 'v2', 'device': 'cuda:0', 'precision': 'fp16'}
    assert rec['metadata'] == {'quality': 0.5}  # metadata keeps the plugin's extras only
    validate_record(rec)
    # The default budget: no cycle, no trust weight; the other fields have defaults.
    rec = make_record('vision', t, run=RunInfo(cycle=None, trust_weight=None, atp_per_step=2))
    assert rec['run'] == {'cycle': None, 'trust_weight': None, 'atp_per_step': 2.0,
                          'atp_per_input': 0.0, 'dropped_inputs': 0, 'model_version': '',
                          'device': '', 'precision': ''}
    validate_record(rec)
    # An infinite price is clipped like every other number, so the record still serialises.
    rec = make_record('vision', t, run=RunInfo(cycle=None, trust_weight=math.inf,
                                               atp_per_step=math.inf,
                                               atp_per_input=math.inf))
    validate_record(rec)
    assert 'run' not in make_record('vision', t)
    with pytest.raises(TypeError):
        make_record('vision', t, run={'cycle': 1})
    with pytest.raises(AttributeError):
        info.cycle = 2  # frozen


@pytest.mark.parametrize('kwargs', [
    {'cycle': -1}, {'cycle': 2 ** 64}, {'cycle': 1.0}, {'cycle': True},
    {'trust_weight': -0.5}, {'trust_weight': math.nan}, {'trust_weight': '1'},
    {'atp_per_step': -1.0}, {'atp_per_step': math.nan}, {'atp_per_step': None},
    {'atp_per_input': -1.0}, {'atp_per_input': math.nan}, {'atp_per_input': None},
    {'atp_per_input': True},
    {'dropped_inputs': -1}, {'dropped_inputs': 0.5}, {'dropped_inputs': None},
    {'model_version': 3}, {'device': None}, {'precision': b'fp32'}, {'device': 'cpu\x00'},
])
def test_run_info_refuses_values_no_record_can_carry(kwargs):
    base = {'cycle': 1, 'trust_weight': 1.0, 'atp_per_step': 1.0}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RunInfo(**{**base, **kwargs})


def _good():
    r = refine(ScriptedPlugin([4.0, 2.0, 1.0]), None, config=HaltConfig(max_steps=5))
    return make_record('vision', r.trace, entity_id='/cam',
                       run=RunInfo(cycle=7, trust_weight=1.0, atp_per_step=0.5,
                                   atp_per_input=3.0))


@pytest.mark.parametrize('mutate, where', [
    (lambda r: r.pop('plugin'), 'plugin'),
    (lambda r: r.update(extra=1), 'extra'),
    (lambda r: r.update(plugin='radar'), 'plugin'),
    (lambda r: r.update(halt_reason='bored'), 'halt_reason'),
    (lambda r: r.update(steps=-1), 'steps'),
    (lambda r: r.update(step_idx=1.5), 'step_idx'),
    (lambda r: r.update(E=math.nan), 'inf/NaN'),
    (lambda r: r['trust'].update(dE_variance=math.inf), 'inf/NaN'),
    (lambda r: r['trust'].update(monotonicity_ratio=1.5), 'monotonicity_ratio'),
    (lambda r: r['trust'].pop('convergence_rate'), 'convergence_rate'),
    (lambda r: r['budget'].update(ATP_spent=-1.0), 'ATP_spent'),
    (lambda r: r['budget'].update(gpu_util=101), 'gpu_util'),
    (lambda r: r.update(LRC_context={'L': 2.0}), 'L'),
    (lambda r: r.update(metadata='text'), 'metadata'),
    (lambda r: r['run'].update(extra=1), 'extra'),
    (lambda r: r['run'].pop('device'), 'device'),
    (lambda r: r['run'].update(cycle=-1), 'cycle'),
    (lambda r: r['run'].update(cycle=1.5), 'cycle'),
    (lambda r: r['run'].update(trust_weight=-1.0), 'trust_weight'),
    (lambda r: r['run'].update(atp_per_step=None), 'atp_per_step'),
    (lambda r: r['run'].update(atp_per_input=-0.5), 'atp_per_input'),
    (lambda r: r['run'].pop('atp_per_input'), 'atp_per_input'),
    (lambda r: r['run'].update(dropped_inputs=-3), 'dropped_inputs'),
    (lambda r: r['run'].update(precision=16), 'precision'),
    (lambda r: r.update(run=None), 'run'),
])
def test_schema_rejects_malformed_records(mutate, where):
    rec = copy.deepcopy(_good())
    validate_record(rec)
    mutate(rec)
    with pytest.raises(TelemetryError) as excinfo:
        validate_record(rec)
    assert where in str(excinfo.value)


def test_make_record_refuses_unknown_kind():
    with pytest.raises(ValueError):
        make_record('radar', Trace(energies=[1.0], halt_reason='max_steps'))


def test_jsonl_sink_writes_valid_and_counts_rejects(tmp_path):
    rejects = []
    path = tmp_path / 'sub' / 'telemetry.jsonl'
    with JsonlSink(str(path), on_reject=lambda why, rec: rejects.append(why)) as sink:
        assert sink.write(_good())
        bad = _good()
        bad['E'] = math.inf
        assert not sink.write(bad)
        assert (sink.written, sink.rejected) == (1, 1)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and rejects and 'NaN' in rejects[0]
    validate_record(json.loads(lines[0]))


def test_core_never_imports_rclpy():
    import subprocess
    code = ('import sys, sage_irp_ros.core, sage_irp_ros.plugins.fixture; '
            'bad = [m for m in sys.modules if m.startswith(("rclpy", "rosidl", "std_msgs"))]; '
            'print(bad); sys.exit(1 if bad else 0)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
