"""Launch the orchestrator and the plugin nodes of sage_irp_ros.

Arguments:
  plugins       comma-separated plugins of the registry (sage_irp_ros/registry.py), e.g.
                vision,language (default: vision)
  namespace     namespace of every node (default: none)
  config        parameter file (default: the package's config/sage_irp.yaml)
  device        torch device of every plugin that can use it: cpu, cuda, cuda:N (default: cpu)
  precision     fp32 or fp16, for every plugin that supports it (default: fp32)
  <plugin>_device, <plugin>_precision
                one plugin's own device / precision (default: the common value), e.g.
                vision_precision:=fp16
  composed      true: every node in one process (sage_irp_all, a multi-threaded executor)
  orchestrator  false: plugins run on their default budgets (default: true)
  managed       true: lifecycle nodes brought to active by sage_irp_lifecycle_manager
                (configure, then activate); false: each node starts itself (default: false)
  rviz          true: also start rviz2 with the package's config/sage_irp.rviz (default: false)

A plugin that cannot use the device or precision asked for gets cpu / fp32 (a line in the launch
log says so); a node on a machine without CUDA falls back to cpu with a warning.

Example: ros2 launch sage_irp_ros sage_irp.launch.py plugins:=vision,language device:=cuda
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from sage_irp_ros import launch_plan, registry, transport

ARGUMENTS = ('plugins', 'namespace', 'config', 'device', 'precision', 'composed',
             'orchestrator', 'managed', 'rviz')


def _nodes(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    per_plugin = {s.name: (LaunchConfiguration(f'{s.name}_device').perform(context),
                           LaunchConfiguration(f'{s.name}_precision').perform(context))
                  for s in registry.specs()}
    plan = launch_plan.plan(
        arg['plugins'], config=arg['config'], device=arg['device'],
        precision=arg['precision'], per_plugin=per_plugin,
        composed=arg['composed'].lower() == 'true',
        orchestrator=arg['orchestrator'].lower() == 'true',
        managed=arg['managed'].lower() == 'true')
    actions = [LogInfo(msg=f'sage_irp: {note}') for note in plan.notes]
    # camera-size images between processes (issue #15): the shipped Fast DDS profile, unless
    # the environment names one of its own
    profile_env = transport.camera_profile_env()
    for var, path in profile_env.items():
        actions.append(LogInfo(msg=f'sage_irp: {var}={path}'))
    if arg['rviz'].lower() == 'true':
        rviz_config = os.path.join(get_package_share_directory(launch_plan.PACKAGE), 'config',
                                   'sage_irp.rviz')
        actions.append(Node(package='rviz2', executable='rviz2', arguments=['-d', rviz_config],
                            namespace=arg['namespace'], output='screen'))
    for a in plan.actions:
        actions.append(Node(package=launch_plan.PACKAGE, executable=a.executable, name=a.name,
                            namespace=arg['namespace'], parameters=a.parameters,
                            arguments=a.arguments, output='screen', emulate_tty=True,
                            additional_env=profile_env or None))
    return actions


def generate_launch_description():
    """Declare the arguments (one device and precision pair per plugin); nodes follow."""
    default_config = os.path.join(get_package_share_directory(launch_plan.PACKAGE), 'config',
                                  'sage_irp.yaml')
    names = ', '.join(registry.names())
    args = [
        DeclareLaunchArgument('plugins', default_value='vision',
                              description=f'comma-separated plugins: {names}'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of all nodes'),
        DeclareLaunchArgument('config', default_value=default_config,
                              description='parameter file'),
        DeclareLaunchArgument('device', default_value='cpu',
                              description='torch device of every plugin: cpu, cuda, cuda:N'),
        DeclareLaunchArgument('precision', default_value='fp32', description='fp32 or fp16'),
        DeclareLaunchArgument('composed', default_value='false',
                              description='true: all nodes in one process (sage_irp_all)'),
        DeclareLaunchArgument('orchestrator', default_value='true',
                              description='false: plugins run on their default budgets'),
        DeclareLaunchArgument('managed', default_value='false',
                              description='true: lifecycle nodes brought up by '
                                          'sage_irp_lifecycle_manager'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='true: also start rviz2 with config/sage_irp.rviz'),
    ]
    for s in registry.specs():
        args += [
            DeclareLaunchArgument(f'{s.name}_device', default_value='',
                                  description=f'device of the {s.name} plugin (default: device;'
                                              f' supports {", ".join(s.devices)})'),
            DeclareLaunchArgument(f'{s.name}_precision', default_value='',
                                  description=f'precision of the {s.name} plugin (default: '
                                              f'precision; supports {", ".join(s.precisions)})'),
        ]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
