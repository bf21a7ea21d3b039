"""What the launch file starts: its plan, its executables, and its parameter file in the nodes.

``ros2 launch`` is not installable here (launch_ros is not on PyPI). The launch file is a thin
shell around :func:`sage_irp_ros.launch_plan.plan`, which is tested directly; the launch file
itself is executed with small recording stand-ins for the ``launch`` and ``launch_ros``
modules, so its own lines run too. config/sage_irp.yaml must load into the nodes it configures.
"""

import importlib.util
import os
import sys
import types

import pytest
import rclpy
import yaml

from sage_irp_ros import launch_plan, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch', 'sage_irp.launch.py')
CONFIG = os.path.join(ROOT, 'config', 'sage_irp.yaml')


def test_every_executable_the_launch_can_start_exists():
    exes = [s.executable for s in registry.specs()]
    exes += [launch_plan.ORCHESTRATOR[0], launch_plan.COMPOSED, launch_plan.MANAGER[0]]
    for exe in exes:
        path = os.path.join(ROOT, 'scripts', exe)
        assert os.access(path, os.X_OK), f'the launch can start {exe}, not in scripts/'


def test_plan_gives_each_plugin_its_own_device(tmp_path):
    ov = str(tmp_path / 'ov.yaml')
    p = launch_plan.plan('vision,control,fixture', config=CONFIG, device='cuda',
                         precision='fp16', overrides_path=ov)
    assert [a.executable for a in p.actions] == [
        'orchestrator_node', 'vision_irp_node', 'control_irp_node', 'fixture_irp_node']
    assert p.overrides['vision_irp_node'] == {'device': 'cuda', 'precision': 'fp16'}
    assert p.overrides['control_irp_node'] == {'device': 'cuda', 'precision': 'fp32'}
    assert p.overrides['fixture_irp_node'] == {'device': 'cpu', 'precision': 'fp32'}
    assert any('control' in n and 'fp16' in n for n in p.notes)
    assert any('fixture' in n and 'cpu only' in n for n in p.notes)
    written = yaml.safe_load(open(ov))
    assert written['/**/control_irp_node']['ros__parameters']['precision'] == 'fp32'
    assert all(a.parameters == [CONFIG, ov] for a in p.actions)
    # one plugin's own value wins over the common one
    p = launch_plan.plan('vision,language', config=CONFIG, device='cpu',
                         per_plugin={'vision': ('cuda:1', 'fp16')}, overrides_path=ov)
    assert p.overrides['vision_irp_node'] == {'device': 'cuda:1', 'precision': 'fp16'}
    assert p.overrides['language_irp_node'] == {'device': 'cpu', 'precision': 'fp32'}


def test_plan_composed_and_managed(tmp_path):
    ov = str(tmp_path / 'ov.yaml')
    p = launch_plan.plan('language', config=CONFIG, composed=True, managed=True,
                         overrides_path=ov)
    assert [a.executable for a in p.actions] == ['sage_irp_all', 'sage_irp_lifecycle_manager']
    assert p.actions[0].arguments == ['--plugins', 'language']
    assert p.actions[1].parameters == [{'node_names': ['orchestrator_node',
                                                       'language_irp_node']}]
    assert all(v['autostart'] is False for v in p.overrides.values())
    p = launch_plan.plan('vision', config=CONFIG, orchestrator=False, overrides_path=ov)
    assert [a.executable for a in p.actions] == ['vision_irp_node']
    with pytest.raises(KeyError, match='unknown plugin'):
        launch_plan.plan('vision,sonar', config=CONFIG, overrides_path=ov)
    with pytest.raises(ValueError, match='device'):
        launch_plan.plan('vision', config=CONFIG, device='tpu', overrides_path=ov)


class _Recorder:
    """Stand-in for a launch action: keeps its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _fake_launch_modules():
    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    mods = {name: types.ModuleType(name) for name in (
        'launch', 'launch.actions', 'launch.substitutions', 'launch_ros',
        'launch_ros.actions')}
    mods['launch'].LaunchDescription = _Recorder
    for cls in ('DeclareLaunchArgument', 'LogInfo', 'OpaqueFunction'):
        setattr(mods['launch.actions'], cls, type(cls, (_Recorder,), {}))
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    mods['launch_ros.actions'].Node = type('Node', (_Recorder,), {})
    return mods


def test_launch_file_runs_the_plan(monkeypatch):
    for name, mod in _fake_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location('sage_irp_launch', LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    desc = module.generate_launch_description()
    actions = desc.args[0]
    declared = {a.args[0]: a.kwargs['default_value'] for a in actions
                if type(a).__name__ == 'DeclareLaunchArgument'}
    for arg in ('plugins', 'namespace', 'config', 'device', 'precision', 'composed',
                'orchestrator', 'managed', 'rviz', 'vision_device', 'language_precision'):
        assert arg in declared, arg
    context = dict(declared, plugins='vision,language', device='cuda', config=CONFIG,
                   namespace='robot1')
    opaque = next(a for a in actions if type(a).__name__ == 'OpaqueFunction')
    nodes = opaque.kwargs['function'](context)
    started = [(n.kwargs['executable'], n.kwargs['namespace']) for n in nodes
               if type(n).__name__ == 'Node']
    assert started == [('orchestrator_node', 'robot1'), ('vision_irp_node', 'robot1'),
                       ('language_irp_node', 'robot1')]
    ov = yaml.safe_load(open(nodes[-1].kwargs['parameters'][1]))
    assert ov['/**/vision_irp_node']['ros__parameters']['device'] == 'cuda'


def load_config():
    """Return config/sage_irp.yaml by node name (its keys are ``/**/<node>``: any namespace)."""
    raw = yaml.safe_load(open(CONFIG))
    assert all(k.startswith('/**/') for k in raw), 'sections must match in any namespace'
    return {k[len('/**/'):]: v for k, v in raw.items()}


def test_config_sections_match_node_names_and_declared_parameters():
    cfg = load_config()
    classes = {s.node_name: s.node for s in registry.specs()}
    classes[launch_plan.ORCHESTRATOR[1]] = 'sage_irp_ros.ros.orchestrator_node:OrchestratorNode'
    assert set(cfg) <= set(classes), set(cfg) - set(classes)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=['--ros-args', '--params-file', CONFIG])
    try:
        for name in cfg:
            node = registry.load(classes[name])(context=ctx)
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


def test_config_applies_in_a_namespace():
    """``namespace:=robot1`` (launch) or ``__ns:=/robot1``: the config's values still apply."""
    from rclpy.parameter import Parameter

    from sage_irp_ros.plugins.vision.node import VisionIRPNode
    cfg = load_config()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=['--ros-args', '--params-file', CONFIG])
    try:
        node = VisionIRPNode(context=ctx, namespace='robot1',
                             parameter_overrides=[Parameter('autostart', value=False)])
        try:
            assert node.get_fully_qualified_name() == '/robot1/vision_irp_node'
            want = cfg['vision_irp_node']['ros__parameters']['input_topic']
            assert want != registry.get('vision').port('input').topic  # not the default
            assert node.get_parameter('input_topic').value == want
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def test_rviz_config_shows_topics_the_nodes_publish():
    rviz = yaml.safe_load(open(os.path.join(ROOT, 'config', 'sage_irp.rviz')))
    displays = rviz['Visualization Manager']['Displays']
    cfg = load_config()
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
