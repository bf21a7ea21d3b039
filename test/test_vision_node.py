"""vision_irp_node over DDS: camera frames in, class masks, overlays, confidence and telemetry
out; what an unknown frame publishes."""

import json
import time

import numpy as np
from conftest import diag_value, wait_for
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from sage_irp_ros.core import validate_record
from sage_irp_ros.msg import FrameConfidence, IRPTelemetry
from sage_irp_ros.plugins.vision.scenes import held_out, photo_crop
from sage_irp_ros.ros.conversions import rgb_to_image

MODULE = 'sage_irp_ros.plugins.vision.node'


def vision_task() -> str:
    """Return the scene task of the committed vision weights (from their JSON record)."""
    import json
    import os

    from sage_irp_ros.plugins.vision.plugin import DEFAULT_WEIGHTS
    with open(os.path.splitext(DEFAULT_WEIGHTS)[0] + '.json', encoding='utf-8') as f:
        return json.load(f)['config'].get('task', 'shapes')


def test_vision_node_segments_camera_frames(ros, node_process):
    node = node_process(MODULE, {'input_topic': '/camera/image_raw', 'output_topic': '/mask',
                                 'default_atp': 0.0,  # no orchestrator: unlimited runs
                                 'overlay_topic': '/overlay', 'confidence_topic': '/confidence',
                                 'diagnostics_period_s': 0.2})
    masks = ros.collect(Image, '/mask')
    confs = ros.collect(FrameConfidence, '/confidence')
    overlays = ros.collect(Image, '/overlay')
    telem = ros.collect(IRPTelemetry, '/irp/telemetry')
    telem_json = ros.collect(String, '/irp/telemetry_json')
    diags = ros.collect(DiagnosticArray, '/diagnostics')
    pub = ros.node.create_publisher(Image, '/camera/image_raw', qos_profile_sensor_data)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 30), node.log()
    assert wait_for(lambda: ros.node.count_subscribers('/overlay') >= 1, 5)
    time.sleep(1.0)  # let the node see the overlay subscriber

    images, gts = held_out('easy', 3, vision_task())
    correct = total = 0
    for k, (img, gt) in enumerate(zip(images, gts, strict=True)):
        # Send 2x upscaled frames as bgr8: the node must resize and answer at the input size.
        big = np.kron(img, np.ones((2, 2, 1), np.uint8))[:, :, ::-1].copy()
        msg = rgb_to_image(big, Header(frame_id='camera_optical'), encoding='bgr8')
        msg.header.stamp.sec = 100 + k
        n = len(masks)
        for _ in range(20):  # best effort: resend until answered
            pub.publish(msg)
            if wait_for(lambda n=n: len(masks) > n, 1.0):
                break
        assert len(masks) > n, node.log()
        m = masks[-1]
        assert (m.encoding, m.height, m.width) == ('mono8', 128, 128)
        assert m.header.frame_id == 'camera_optical' and m.header.stamp.sec == 100 + k
        mask = np.frombuffer(bytes(m.data), np.uint8).reshape(128, 128)
        correct += int((mask[::2, ::2] == gt).sum())
        total += gt.size
        assert wait_for(lambda k=k: any(c.header.stamp.sec == 100 + k for c in confs), 5)
        c = next(c for c in confs if c.header.stamp.sec == 100 + k)
        assert c.header.frame_id == 'camera_optical' and 0.25 <= c.confidence <= 1.0
        # unknown_output defaults to 'mask': the mask goes out whatever the flag says (the
        # first of these held-out frames is one of the ~3 % in-distribution false alarms)
        assert c.mask_action == 'mask' and c.unknown == (c.unknown_score > c.unknown_threshold)
    assert correct / total > 0.85
    assert wait_for(lambda: overlays and telem and telem_json, 10), node.log()
    assert (overlays[-1].encoding, overlays[-1].width) == ('rgb8', 128)
    rec = json.loads(telem_json[-1].data)
    validate_record(rec)
    assert rec['plugin'] == 'vision' and rec['entity_id'] == '/vision_irp_node'
    assert rec['run']['device'] == 'cpu' and 0 <= rec['metadata']['uncertain_frac'] <= 1
    meta = rec['metadata']
    assert 0.25 <= meta['confidence'] <= 1 and meta['unknown'] in (True, False)
    assert rec['metadata']['mask_action'] == 'mask'
    assert telem[-1].halt_reason in ('confident', 'slope<eps', 'max_steps')

    # A frame it cannot read: clear error, counted, and the node goes on.
    bad = Image(height=4, width=4, encoding='32FC1', step=16, data=bytes(64))
    for _ in range(10):
        pub.publish(bad)
        if wait_for(lambda: diag_value(diags, 'bad_input') not in (None, '0'), 1.0):
            break
    assert "unsupported image encoding '32FC1'" in node.log()
    n = len(masks)
    for _ in range(20):
        pub.publish(msg)
        if wait_for(lambda: len(masks) > n, 1.0):
            break
    assert len(masks) > n

    # A photo: flagged unknown. unknown_output 'unknown' publishes an all-unknown (255) mask,
    # 'none' no mask at all (the confidence message still says why).
    photo, _ = photo_crop(7_000_000)
    cli = ros.node.create_client(SetParameters, '/vision_irp_node/set_parameters')
    assert cli.wait_for_service(timeout_sec=10)
    for sec, mode in ((200, 'unknown'), (201, 'none')):
        fut = cli.call_async(SetParameters.Request(parameters=[Parameter(
            name='unknown_output', value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                        string_value=mode))]))
        assert wait_for(fut.done, 10) and fut.result().results[0].successful
        pmsg = rgb_to_image(photo, Header(frame_id='camera_optical'))
        pmsg.header.stamp.sec = sec
        n = len(masks)
        for _ in range(20):
            pub.publish(pmsg)
            if wait_for(lambda sec=sec: any(c.header.stamp.sec == sec for c in confs), 1.0):
                break
        c = next(c for c in confs if c.header.stamp.sec == sec)
        assert c.unknown and c.unknown_score > c.unknown_threshold and c.mask_action == mode
        if mode == 'unknown':
            assert wait_for(lambda n=n: len(masks) > n, 5)
            m = masks[-1]
            assert m.header.stamp.sec == sec and set(bytes(m.data)) == {255}
        else:
            time.sleep(0.5)
            assert all(m.header.stamp.sec != sec for m in masks)
    assert node.stop() == 0, node.log()


def test_one_vision_node_serves_several_cameras_on_their_own_topics(ros, node_process):
    """``streams`` cam0, cam1 with ``batch_max`` 2: each camera's masks on its own topic."""
    node = node_process(MODULE, {'streams': ['cam0', 'cam1'], 'batch_max': 2,
                                 'input_topic': 'image_raw', 'output_topic': 'mask',
                                 'default_atp': 0.0})
    cams = ('cam0', 'cam1')
    masks = {c: ros.collect(Image, f'/{c}/mask') for c in cams}
    telem = ros.collect(String, '/irp/telemetry_json')
    pubs = {c: ros.node.create_publisher(Image, f'/{c}/image_raw', qos_profile_sensor_data)
            for c in cams}
    assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 30), \
        node.log()
    images, gts = held_out('hard', 2, vision_task())
    for k, cam in enumerate(cams):
        msg = rgb_to_image(images[k], Header(frame_id=cam))
        msg.header.stamp.sec = 300 + k
        for _ in range(20):  # best effort: resend until answered
            pubs[cam].publish(msg)
            if wait_for(lambda cam=cam: masks[cam], 1.0):
                break
    for k, cam in enumerate(cams):
        assert masks[cam], node.log()
        m = masks[cam][-1]
        assert m.header.frame_id == cam and m.header.stamp.sec == 300 + k
        mask = np.frombuffer(bytes(m.data), np.uint8).reshape(gts[k].shape)
        assert (mask == gts[k]).mean() > 0.8
    assert wait_for(lambda: {json.loads(t.data)['metadata'].get('stream') for t in telem}
                    >= set(cams), 5)
    assert node.stop() == 0, node.log()
