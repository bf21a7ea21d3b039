"""``sage_irp_all``: the orchestrator and plugin nodes in one process.

A multi-threaded executor serves every node, so the models share one process (one GPU context)
and each node's worker thread refines on its own. Parameters come from the usual ROS arguments
(``--ros-args --params-file config/sage_irp.yaml``); each node reads the section of its own name.
The plugins are the registry's (:mod:`sage_irp_ros.registry`). A node that cannot start (its
model does not load, a bad parameter) is logged and left out; the others run on. The process
exits with 1 only when no node could start.

With the memory plugin among them, the other plugin nodes hand their experiences to it through
the in-process mailbox (by reference: tensors stay where they are) and read their warm starts
from its store: ``--memory`` (default ``auto``: ``mailbox`` when the memory plugin runs here,
else the nodes' own ``memory`` parameter) overrides the ``memory`` parameter of every plugin
node in the process.

Usage: ``sage_irp_all [--plugins vision,language,memory] [--no-orchestrator]
[--memory auto|off|mailbox|topic] [--ros-args ...]``
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from sage_irp_ros import registry
from sage_irp_ros.ros.host import StopOnSignal, init_without_signal_handlers
from sage_irp_ros.transport import apply_camera_profile


def main(argv: Optional[List[str]] = None) -> int:
    """Run the selected nodes in one process until SIGINT."""
    argv = list(sys.argv if argv is None else argv)
    ros_args = rclpy.utilities.remove_ros_args(argv)
    parser = argparse.ArgumentParser(prog='sage_irp_all', description=__doc__.splitlines()[0])
    parser.add_argument('--plugins', default='vision',
                        help=f'comma-separated plugins ({", ".join(registry.names())})')
    parser.add_argument('--no-orchestrator', action='store_true',
                        help='run the plugin nodes on their default budgets')
    parser.add_argument('--threads', type=int, default=0,
                        help='executor threads (0 = one per node plus one)')
    parser.add_argument('--memory', default='auto', choices=('auto', 'off', 'mailbox', 'topic'),
                        help="the plugin nodes' memory parameter (auto: mailbox when the "
                             'memory plugin runs in this process, else as configured)')
    opts = parser.parse_args(ros_args[1:])
    try:
        names = registry.parse_list(opts.plugins)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    apply_camera_profile()  # camera-size images from other processes (issue #15)
    init_without_signal_handlers(argv)
    stop = StopOnSignal()
    log = rclpy.logging.get_logger('sage_irp_all')
    factories = [] if opts.no_orchestrator else [
        ('orchestrator', 'sage_irp_ros.ros.orchestrator_node:OrchestratorNode')]
    factories += [(n, registry.get(n).node) for n in names]
    memory = opts.memory
    if memory == 'auto':
        memory = 'mailbox' if 'memory' in names else ''
    nodes: List[Node] = []
    try:
        for name, target in factories:
            kwargs = {}
            if memory and name not in ('orchestrator', 'memory'):
                kwargs['parameter_overrides'] = [Parameter('memory', value=memory)]
            try:
                nodes.append(registry.load(target)(**kwargs))
            except Exception as exc:  # noqa: BLE001 - one node's failure must not stop the rest
                log.error(f'{name}: could not start ({exc}); the other nodes run on')
        if not nodes:
            log.error('no node could start')
            return 1
        # one thread per node and one spare (and one for memory's ~/sleep call: it waits)
        spare = 2 if 'memory' in names else 1
        executor = MultiThreadedExecutor(num_threads=opts.threads or len(nodes) + spare)
        for node in nodes:
            executor.add_node(node)
        stop.spin(executor, rclpy.get_default_context())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.ignore_further()
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
