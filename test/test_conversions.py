"""Message conversions: images in every accepted encoding, bad images, telemetry round trip."""

import math

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, Header, String

from sage_irp_ros.core import HaltConfig, make_record, refine
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


def test_budget_grant_message():
    g = BudgetGrant(plugin='/vision', cycle=3, atp_granted=12.5, step_cap=4, trust_weight=2.0)
    back = deserialize_message(serialize_message(g), BudgetGrant)
    assert (back.plugin, back.cycle, back.atp_granted, back.step_cap) == ('/vision', 3, 12.5, 4)
