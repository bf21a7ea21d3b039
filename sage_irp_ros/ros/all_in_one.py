"""``sage_irp_all``: the orchestrator and plugin nodes in one process.

A multi-threaded executor serves every node, so the models share one process (one GPU context)
and each node's worker thread refines on its own. Parameters come from the usual ROS arguments
(``--ros-args --params-file config/sage_irp.yaml``); each node reads the section of its own name.

Usage: ``sage_irp_all [--plugins vision,language] [--no-orchestrator] [--ros-args ...]``
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node


def _factories() -> Dict[str, Callable[[], Node]]:
    """Return the node constructors by plugin name (imported lazily: models are heavy)."""
    def vision():
        from sage_irp_ros.plugins.vision.node import VisionIRPNode
        return VisionIRPNode()

    def fixture():
        from sage_irp_ros.plugins.fixture.node import FixtureIRPNode
        return FixtureIRPNode()

    def language():
        from sage_irp_ros.plugins.language.node import LanguageIRPNode
        return LanguageIRPNode()

    table = {'vision': vision, 'language': language, 'fixture': fixture}
    return table


def main(argv: Optional[List[str]] = None) -> int:
    """Run the selected nodes in one process until SIGINT."""
    argv = list(sys.argv if argv is None else argv)
    ros_args = rclpy.utilities.remove_ros_args(argv)
    parser = argparse.ArgumentParser(prog='sage_irp_all', description=__doc__.splitlines()[0])
    parser.add_argument('--plugins', default='vision',
                        help='comma-separated plugin nodes to run (vision, language, fixture)')
    parser.add_argument('--no-orchestrator', action='store_true',
                        help='run the plugin nodes on their default budgets')
    parser.add_argument('--threads', type=int, default=0,
                        help='executor threads (0 = one per node plus one)')
    opts = parser.parse_args(ros_args[1:])
    table = _factories()
    names = [p.strip() for p in opts.plugins.split(',') if p.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f'unknown plugins {unknown}; available: {sorted(table)}')
    rclpy.init(args=argv)
    nodes: List[Node] = []
    try:
        if not opts.no_orchestrator:
            from sage_irp_ros.ros.orchestrator_node import OrchestratorNode
            nodes.append(OrchestratorNode())
        nodes += [table[n]() for n in names]
        executor = MultiThreadedExecutor(num_threads=opts.threads or len(nodes) + 1)
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
