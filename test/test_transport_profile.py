"""The shipped Fast DDS profile (issue #15, Transport): what it holds, who sets it, and a
vision node under it that receives 640x480 frames and exits cleanly on SIGTERM."""

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import ROOT, wait_for
from sensor_msgs.msg import Image

from sage_irp_ros import transport
from sage_irp_ros.tools.procs import ChildProcess

PROFILE = os.path.join(ROOT, 'config', 'fastdds_camera.xml')
NS = '{http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles}'
FRAME_640x480 = 640 * 480 * 3


def test_profile_is_shared_memory_for_several_frames_plus_udp_and_no_tcp():
    root = ET.parse(PROFILE).getroot()
    kinds = {d.find(f'{NS}transport_id').text: d for d in root.iter(f'{NS}transport_descriptor')}
    types = {tid: d.find(f'{NS}type').text for tid, d in kinds.items()}
    assert sorted(types.values()) == ['SHM', 'UDPv4']  # no TCP (LARGE_DATA hung on SIGTERM)
    shm = next(d for d in kinds.values() if d.find(f'{NS}type').text == 'SHM')
    assert int(shm.find(f'{NS}segment_size').text) >= 4 * FRAME_640x480
    part = root.find(f'{NS}participant')
    assert part.get('is_default_profile') == 'true'
    used = [t.text for t in part.iter(f'{NS}transport_id')]
    assert sorted(used) == sorted(kinds)
    assert part.find(f'{NS}rtps/{NS}useBuiltinTransports').text == 'false'
    assert transport.camera_profile().endswith(os.path.join('config', 'fastdds_camera.xml'))


def test_the_users_own_profile_wins_and_only_one_variable_is_set():
    env = {}
    assert transport.apply_camera_profile(env) == transport.camera_profile()
    assert list(env) == ['FASTDDS_DEFAULT_PROFILES_FILE']
    env = {'ROS_DISTRO': 'humble'}
    transport.apply_camera_profile(env)
    assert env['FASTRTPS_DEFAULT_PROFILES_FILE'] == transport.camera_profile()
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' not in env
    env = {'FASTRTPS_DEFAULT_PROFILES_FILE': '/mine.xml'}
    assert transport.apply_camera_profile(env) == '/mine.xml'
    assert transport.camera_profile_env(env) == {} and len(env) == 1


def _env_sh(prefix=''):
    env = {k: v for k, v in os.environ.items() if k not in transport.PROFILE_VARS
           and k != 'ROS_DISTRO'}
    r = subprocess.run(['bash', '-c', f'{prefix} . tools/env.sh && env'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {k: v for k, v in (line.split('=', 1) for line in r.stdout.splitlines() if '=' in line)
            if k in transport.PROFILE_VARS}


def test_env_sh_points_fast_dds_at_the_profile_unless_one_is_set():
    assert _env_sh() == {'FASTDDS_DEFAULT_PROFILES_FILE': PROFILE}
    assert _env_sh('ROS_DISTRO=humble;') == {'FASTRTPS_DEFAULT_PROFILES_FILE': PROFILE}
    assert _env_sh('export FASTDDS_DEFAULT_PROFILES_FILE=/mine.xml;') == {
        'FASTDDS_DEFAULT_PROFILES_FILE': '/mine.xml'}


@pytest.fixture
def profile(monkeypatch):
    """The shipped profile for this process and its children (before ``ros`` starts)."""
    for var in transport.PROFILE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', PROFILE)
    monkeypatch.delenv('FASTDDS_BUILTIN_TRANSPORTS', raising=False)


def test_vision_node_under_the_profile_gets_640x480_frames_and_exits_on_sigterm(
        profile, ros, node_process, tmp_path):
    node = node_process('sage_irp_ros.plugins.vision.node', {
        'input_topic': '/bench/image_raw', 'output_topic': '/bench/mask', 'default_atp': 0.0,
        'overlay_topic': '/bench/overlay', 'confidence_topic': '/bench/confidence'})
    masks = ros.collect(Image, '/bench/mask')
    pub = ChildProcess('publisher', [sys.executable, os.path.join('bench', 'camera_bench.py'),
                                     '--publisher', '640x480', '--rate', '30', '--seconds', '30'],
                       log_dir=str(tmp_path), cwd=ROOT, env=os.environ)
    try:
        assert wait_for(lambda: len(masks) >= 10, 60), node.log() + pub.log()
        assert (masks[-1].width, masks[-1].height) == (640, 480)
        node.proc.send_signal(signal.SIGTERM)  # while frames keep coming
        try:
            code = node.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail('vision node hung for 15 s after SIGTERM under the profile:\n'
                        + node.tail(30))
        assert code == 0, node.log()
        assert 'Traceback' not in node.log()
    finally:
        pub.stop()
