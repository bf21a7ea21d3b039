"""Launch the orchestrator and the plugin nodes of sage_irp_ros.

Arguments:
  plugins       comma-separated plugin nodes: vision, language, fixture (default: vision)
  namespace     namespace of every node (default: none)
  config        parameter file (default: the package's config/sage_irp.yaml)
  device        torch device of the model plugins: cpu, cuda, cuda:N (default: cpu)
  precision     fp32 or fp16 (default: fp32)
  composed      true: every node in one process (sage_irp_all, a multi-threaded executor)
  orchestrator  false: plugins run on their default budgets (default: true)
  rviz          true: also start rviz2 with the package's config/sage_irp.rviz (default: false)

Example: ros2 launch sage_irp_ros sage_irp.launch.py plugins:=vision device:=cuda precision:=fp16
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'sage_irp_ros'
# Plugin name -> (executable, node name); the node name selects its section of the config.
PLUGIN_NODES = {
    'vision': ('vision_irp_node', 'vision_irp_node'),
    'language': ('language_irp_node', 'language_irp_node'),
    'fixture': ('fixture_irp_node', 'fixture_irp_node'),
}
ORCHESTRATOR = ('orchestrator_node', 'orchestrator_node')
COMPOSED = 'sage_irp_all'


def _nodes(context):
    arg = {name: LaunchConfiguration(name).perform(context)
           for name in ('plugins', 'namespace', 'config', 'device', 'precision', 'composed',
                        'orchestrator', 'rviz')}
    plugins = [p.strip() for p in arg['plugins'].split(',') if p.strip()]
    unknown = [p for p in plugins if p not in PLUGIN_NODES]
    if unknown:
        raise RuntimeError(f'unknown plugins {unknown}; available: {sorted(PLUGIN_NODES)}')
    with_orchestrator = arg['orchestrator'].lower() == 'true'
    model_params = {'device': arg['device'], 'precision': arg['precision']}
    viewer = []
    if arg['rviz'].lower() == 'true':
        rviz_config = os.path.join(get_package_share_directory(PACKAGE), 'config',
                                   'sage_irp.rviz')
        viewer.append(Node(package='rviz2', executable='rviz2', arguments=['-d', rviz_config],
                           namespace=arg['namespace'], output='screen'))
    if arg['composed'].lower() == 'true':
        extra = ['--plugins', ','.join(plugins)]
        if not with_orchestrator:
            extra.append('--no-orchestrator')
        return viewer + [Node(package=PACKAGE, executable=COMPOSED, namespace=arg['namespace'],
                              arguments=extra, parameters=[arg['config'], model_params],
                              output='screen', emulate_tty=True)]
    nodes = []
    if with_orchestrator:
        nodes.append(Node(package=PACKAGE, executable=ORCHESTRATOR[0], name=ORCHESTRATOR[1],
                          namespace=arg['namespace'], parameters=[arg['config']],
                          output='screen', emulate_tty=True))
    for p in plugins:
        executable, name = PLUGIN_NODES[p]
        nodes.append(Node(package=PACKAGE, executable=executable, name=name,
                          namespace=arg['namespace'], parameters=[arg['config'], model_params],
                          output='screen', emulate_tty=True))
    return viewer + nodes


def generate_launch_description():
    """Declare the arguments; the nodes follow from them."""
    default_config = os.path.join(get_package_share_directory(PACKAGE), 'config',
                                  'sage_irp.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('plugins', default_value='vision',
                              description='comma-separated plugin nodes: vision, language, '
                                          'fixture'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of all nodes'),
        DeclareLaunchArgument('config', default_value=default_config,
                              description='parameter file'),
        DeclareLaunchArgument('device', default_value='cpu',
                              description='torch device: cpu, cuda, cuda:N'),
        DeclareLaunchArgument('precision', default_value='fp32', description='fp32 or fp16'),
        DeclareLaunchArgument('composed', default_value='false',
                              description='true: all nodes in one process (sage_irp_all)'),
        DeclareLaunchArgument('orchestrator', default_value='true',
                              description='false: plugins run on their default budgets'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='true: also start rviz2 with config/sage_irp.rviz'),
        OpaqueFunction(function=_nodes),
    ])
