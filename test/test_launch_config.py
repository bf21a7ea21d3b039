"""What the launch file starts: its executables exist and its parameter file loads into nodes.

``ros2 launch`` is not installable here (launch_ros is not on PyPI), so the launch file is read
as Python source: the executables it names must be in scripts/ (installed to lib/sage_irp_ros),
and config/sage_irp.yaml must load into the nodes it configures.
"""

import ast
import os

import pytest
import rclpy
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch', 'sage_irp.launch.py')
CONFIG = os.path.join(ROOT, 'config', 'sage_irp.yaml')


def _launch_constants():
    tree = ast.parse(open(LAUNCH).read())
    consts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return consts


def test_launch_file_names_only_executables_that_exist():
    c = _launch_constants()
    executables = [e for e, _ in c['PLUGIN_NODES'].values()]
    executables += [c['ORCHESTRATOR'][0], c['COMPOSED']]
    for exe in executables:
        path = os.path.join(ROOT, 'scripts', exe)
        assert os.access(path, os.X_OK), f'launch file names {exe}, not in scripts/'
    src = open(LAUNCH).read()
    for arg in ('plugins', 'namespace', 'config', 'device', 'precision', 'composed', 'rviz'):
        assert f"DeclareLaunchArgument('{arg}'" in src


def test_config_sections_match_node_names_and_declared_parameters():
    from sage_irp_ros.plugins.language.node import LanguageIRPNode
    from sage_irp_ros.ros.orchestrator_node import OrchestratorNode
    from sage_irp_ros.plugins.vision.node import VisionIRPNode
    cfg = yaml.safe_load(open(CONFIG))
    c = _launch_constants()
    names = {n for _, n in c['PLUGIN_NODES'].values()} | {c['ORCHESTRATOR'][1]}
    assert set(cfg) <= names
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=['--ros-args', '--params-file', CONFIG])
    try:
        assert set(cfg) == {'orchestrator_node', 'vision_irp_node', 'language_irp_node'}
        for cls in (OrchestratorNode, VisionIRPNode, LanguageIRPNode):
            node = cls(context=ctx)
            try:
                section = cfg[node.get_name()]['ros__parameters']
                for key, value in section.items():
                    assert node.has_parameter(key), f'{node.get_name()} has no {key}'
                    assert node.get_parameter(key).value == pytest.approx(value) \
                        if isinstance(value, float) else node.get_parameter(key).value == value
            finally:
                node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def test_rviz_config_shows_topics_the_nodes_publish():
    rviz = yaml.safe_load(open(os.path.join(ROOT, 'config', 'sage_irp.rviz')))
    displays = rviz['Visualization Manager']['Displays']
    cfg = yaml.safe_load(open(CONFIG))
    vision = cfg['vision_irp_node']['ros__parameters']
    published = {'/' + vision['output_topic'], '/' + vision['overlay_topic'],
                 '/' + vision['input_topic'], '/irp/markers'}
    topics = {d['Topic']['Value'] for d in displays}
    assert topics <= published, topics - published
    assert {'/vision/overlay', '/irp/markers', '/camera/image_raw'} <= topics
    classes = {d['Class'] for d in displays}
    assert classes <= {'rviz_default_plugins/Image', 'rviz_default_plugins/MarkerArray'}
    camera = next(d for d in displays if d['Topic']['Value'] == '/camera/image_raw')
    assert camera['Topic']['Reliability Policy'] == 'Best Effort'  # sensor-data publishers
