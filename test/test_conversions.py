"""Message conversions: images in every accepted encoding, bad images, telemetry round trip."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, Header, String

from sage_irp_ros.core import HaltConfig, RunInfo, Trace, make_record, refine, validate_record
from sage_irp_ros.msg import BudgetGrant, IRPTelemetry, TrustMetrics
from sage_irp_ros.plugins.fixture import SmoothingFixture
from sage_irp_ros.ros import conversions as cv

RGB = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


def image(arr, encoding, pad=0):
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    rows = arr.reshape(h, w * ch)
    rows = np.concatenate([rows, np.full((h, pad), 255, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=w * ch + pad, data=rows.tobytes())


@pytest.mark.parametrize('pad', [0, 3])
def test_all_encodings_decode_to_rgb(pad):
    assert np.array_equal(cv.image_to_rgb(image(RGB, 'rgb8', pad)), RGB)
    assert np.array_equal(cv.image_to_rgb(image(RGB[:, :, ::-1].copy(), 'bgr8', pad)), RGB)
    alpha = np.full((4, 5, 1), 7, np.uint8)
    assert np.array_equal(cv.image_to_rgb(image(np.concatenate([RGB, alpha], 2), 'rgba8',
                                                pad)), RGB)
    assert np.array_equal(cv.image_to_rgb(
        image(np.concatenate([RGB[:, :, ::-1], alpha], 2), 'bgra8', pad)), RGB)
    mono = RGB[:, :, 0].copy()
    out = cv.image_to_rgb(image(mono, 'mono8', pad))
    assert out.shape == (4, 5, 3) and np.array_equal(out[:, :, 2], mono)


@pytest.mark.parametrize('msg, why', [
    (Image(height=2, width=2, encoding='16UC1', step=4, data=bytes(8)), 'unsupported'),
    (Image(height=0, width=0, encoding='rgb8', step=0, data=b''), 'empty'),
    (Image(height=2, width=2, encoding='rgb8', step=5, data=bytes(12)), 'step'),
    (Image(height=2, width=2, encoding='rgb8', step=6, data=bytes(7)), 'needs'),
    (Image(height=5000, width=5000, encoding='mono8', step=5000, data=b''), 'limit'),
])
def test_bad_images_raise_clear_input_errors(msg, why):
    with pytest.raises(cv.InputError, match=why):
        cv.image_to_rgb(msg)


def test_rgb_to_image_round_trips():
    msg = cv.rgb_to_image(RGB, Header(frame_id='cam'))
    assert (msg.encoding, msg.step, msg.header.frame_id) == ('rgb8', 15, 'cam')
    assert np.array_equal(cv.image_to_rgb(msg), RGB)
    mono = cv.rgb_to_image(RGB[:, :, 0], Header(), encoding='mono8')
    assert np.array_equal(cv.image_to_rgb(mono)[:, :, 0], RGB[:, :, 0])
    with pytest.raises(ValueError):
        cv.rgb_to_image(RGB, Header(), encoding='mono8')


def test_float_array_and_text_checks():
    assert cv.float_array(Float32MultiArray(data=[1.0, 2.0]), 4).tolist() == [1.0, 2.0]
    with pytest.raises(cv.InputError, match='empty'):
        cv.float_array(Float32MultiArray(data=[]), 4)
    with pytest.raises(cv.InputError, match='exceeds'):
        cv.float_array(Float32MultiArray(data=[0.0] * 5), 4)
    with pytest.raises(cv.InputError, match='non-finite'):
        cv.float_array(Float32MultiArray(data=[math.inf]), 4)
    assert cv.text(String(data='hi there'), 10) == 'hi there'
    with pytest.raises(cv.InputError, match='empty'):
        cv.text(String(data='  \n'), 10)
    with pytest.raises(cv.InputError, match='exceeds'):
        cv.text(String(data='x' * 11), 10)


def test_telemetry_message_mirrors_the_record_and_serialises():
    r = refine(SmoothingFixture(), np.sin(np.arange(64.0)), config=HaltConfig(max_steps=5))
    rec = make_record('custom', r.trace, entity_id='/n', metadata={'quality': 0.5},
                      lrc_context={'policy_id': 'p', 'L': 0.1, 'R': 2.0, 'C': 0.3},
                      memory_mb=10.0)
    msg = cv.record_to_msg(rec, Header(frame_id='f'))
    back = deserialize_message(serialize_message(msg), IRPTelemetry)
    assert cv.msg_to_record(back) == rec
    assert back.halt_reason == IRPTelemetry.HALT_MAX_STEPS == 'max_steps'
    assert isinstance(back.trust, TrustMetrics) and back.header.frame_id == 'f'
    assert 'run' not in rec and not back.has_run  # no run info: has_run false, no "run"


def _round_trip(rec):
    validate_record(rec)
    back = deserialize_message(serialize_message(cv.record_to_msg(rec)), IRPTelemetry)
    assert cv.msg_to_record(back) == rec
    return back


@pytest.mark.parametrize('info', [
    RunInfo(cycle=1_761_000_000_123, trust_weight=2.5, atp_per_step=0.75, atp_per_input=21.5,
            dropped_inputs=4, model_version='lm-v3', device='cuda:0', precision='fp16'),
    RunInfo(cycle=None, trust_weight=None, atp_per_step=3.0),  # a default budget
    RunInfo(cycle=0, trust_weight=0.0, atp_per_step=0.0, dropped_inputs=2 ** 64 - 1),
])
def test_run_info_travels_in_typed_fields(info):
    t = Trace(energies=[5.0, 3.0, 2.5], halt_reason='slope<eps', atp_spent=1.5,
              atp_granted=4.0)
    rec = make_record('language', t, entity_id='/lm', run=info,
                      metadata={'quality': 0.9, 'input_stamp': 12.5})
    back = _round_trip(rec)
    assert back.has_run and back.has_cycle == (info.cycle is not None)
    assert back.cycle == (info.cycle or 0) and back.dropped_inputs == info.dropped_inputs
    assert back.trust_weight == (-1.0 if info.trust_weight is None else info.trust_weight)
    assert (back.atp_per_step, back.atp_per_input, back.model_version, back.device,
            back.precision) == (info.atp_per_step, info.atp_per_input, info.model_version,
                                info.device, info.precision)
    assert 'cycle' not in back.metadata_json  # the typed fields, not metadata


_ros_text = st.text(max_size=6).filter(lambda s: '\x00' not in s)  # RunInfo refuses NUL


@given(energies=st.lists(st.floats(allow_nan=False), max_size=6),
       granted=st.one_of(st.none(), st.floats(0, 1e9)),
       info=st.one_of(st.none(), st.builds(
           RunInfo, cycle=st.one_of(st.none(), st.integers(0, 2 ** 64 - 1)),
           trust_weight=st.one_of(st.none(), st.floats(0)), atp_per_step=st.floats(0),
           atp_per_input=st.floats(0), dropped_inputs=st.integers(0, 2 ** 64 - 1),
           model_version=_ros_text, device=_ros_text, precision=_ros_text)))
@settings(max_examples=150, deadline=None)
def test_record_and_message_are_exact_inverses(energies, granted, info):
    t = Trace(energies=energies, halt_reason='max_steps', atp_granted=granted)
    _round_trip(make_record('control', t, entity_id='/c', run=info))


def test_record_without_run_leaves_the_run_fields_at_their_defaults():
    t = Trace(energies=[1.0], halt_reason='budget')
    back = _round_trip(make_record('custom', t))
    assert (back.has_run, back.has_cycle, back.cycle, back.atp_per_step, back.atp_per_input,
            back.dropped_inputs, back.model_version, back.device, back.precision) == (
        False, False, 0, 0.0, 0.0, 0, '', '', '')
    assert 'run' not in cv.msg_to_record(back)


def test_budget_grant_message():
    g = BudgetGrant(plugin='/vision', cycle=3, atp_granted=12.5, step_cap=4, trust_weight=2.0)
    back = deserialize_message(serialize_message(g), BudgetGrant)
    assert (back.plugin, back.cycle, back.atp_granted, back.step_cap) == ('/vision', 3, 12.5, 4)
