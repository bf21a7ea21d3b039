"""``sage_irp_record``: record topics into a rosbag2 bag (mcap), without ros2 bag.

Subscribes *raw* (serialized CDR, never deserialized) to the given topics and writes every
message with its receive time into a new mcap bag with ``rosbags``. Message definitions come
from ROS 2 Kilted's standard types plus this package's ``msg/*.msg`` (IRPTelemetry,
BudgetGrant, TrustMetrics), so ``ros2 bag`` and Foxglove can read the bag.

A topic's type is taken from ``topic:=pkg/msg/Type`` when given, else discovered from the ROS
graph (the recorder keeps looking until a publisher appears). The subscription's QoS adapts to
the publishers, like ``ros2 bag record``: reliable when every publisher offers reliable, best
effort otherwise. Stop with SIGINT (or ``--duration``); the bag is then closed and complete.

Usage::

    sage_irp_record out/run_bag /vision/mask /irp/telemetry /diagnostics
    python -m sage_irp_ros.tools.record OUT TOPIC[:=TYPE] ... [--duration S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Dict, Optional, Sequence

from rosbags.rosbag2 import StoragePlugin, Writer

from sage_irp_ros.tools.bagio import bag_qos, make_typestore, message_class

NODE_NAME = 'sage_irp_record'


class Recorder:
    """Raw subscriptions on ``node`` that append every message to an mcap bag at ``path``."""

    def __init__(self, node, path: str, topics: Sequence[str], depth: int = 100):
        """Open the bag (it must not exist); topics are ``/name`` or ``/name:=pkg/msg/Type``."""
        self.node = node
        self.path = path
        self.depth = depth
        self.store = make_typestore()
        self.wanted: Dict[str, Optional[str]] = {}
        for spec in topics:
            name, _, typ = spec.partition(':=')
            self.wanted[node.resolve_topic_name(name)] = typ or None
        self.counts: Dict[str, int] = {t: 0 for t in self.wanted}
        self.bytes: Dict[str, int] = {t: 0 for t in self.wanted}
        self._subs = {}
        self._conns = {}
        self._lock = threading.Lock()
        self._writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._closed = False
        self._timer = node.create_timer(0.1, self.poll)
        self.poll()

    @property
    def subscribed(self) -> Sequence[str]:
        """Topics subscribed so far."""
        return sorted(self._subs)

    def _offered(self, topic: str):
        """Return (all offered reliable?, rosbags QoS list) of the topic's publishers."""
        infos = self.node.get_publishers_info_by_topic(topic)
        if not infos:
            return None, []
        reliable = all(i.qos_profile.reliability.name == 'RELIABLE' for i in infos)
        offered = [bag_qos(i.qos_profile.reliability.name == 'RELIABLE',
                           max(1, i.qos_profile.depth),
                           i.qos_profile.durability.name == 'TRANSIENT_LOCAL') for i in infos]
        return reliable, offered

    def poll(self) -> None:
        """Subscribe to every wanted topic whose type is known and that has a publisher."""
        if self._closed or len(self._subs) == len(self.wanted):
            return
        graph = dict(self.node.get_topic_names_and_types())
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        for topic, typ in self.wanted.items():
            if topic in self._subs:
                continue
            reliable, offered = self._offered(topic)
            if reliable is None:
                continue  # no publisher yet: the QoS cannot be matched
            if typ is None:
                types = graph.get(topic, [])
                if len(types) != 1:
                    continue
                typ = types[0]
            try:
                cls = message_class(typ)
                conn = self._writer.add_connection(topic, typ, typestore=self.store,
                                                   offered_qos_profiles=offered[:1])
            except Exception as exc:  # noqa: BLE001 - unknown type: say so, record the rest
                self.node.get_logger().error(f'cannot record {topic} [{typ}]: {exc}')
                self.wanted[topic] = typ
                self._subs[topic] = None
                continue
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.depth,
                             reliability=(ReliabilityPolicy.RELIABLE if reliable
                                          else ReliabilityPolicy.BEST_EFFORT),
                             durability=DurabilityPolicy.VOLATILE)
            self._conns[topic] = conn
            self._subs[topic] = self.node.create_subscription(
                cls, topic, lambda data, t=topic: self._on_message(t, data), qos, raw=True)
            self.node.get_logger().info(
                f'recording {topic} [{typ}, {qos.reliability.name.lower()}]')

    def _on_message(self, topic: str, data: bytes) -> None:
        t = time.time_ns()
        with self._lock:
            if self._closed:
                return
            self._writer.write(self._conns[topic], t, data)
            self.counts[topic] += 1
            self.bytes[topic] += len(data)

    def close(self) -> dict:
        """Close the bag (writes its metadata); return what was recorded."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.close()
        return {'bag': self.path, 'messages': dict(self.counts), 'bytes': dict(self.bytes),
                'unsubscribed': sorted(t for t in self.wanted if self._subs.get(t) is None)}


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (ROS arguments are left to rclpy)."""
    ap = argparse.ArgumentParser(prog='sage_irp_record', description=__doc__.split('\n')[0])
    ap.add_argument('bag', help='bag folder to create (must not exist)')
    ap.add_argument('topics', nargs='+', help='topics, optionally with their type: '
                                              '/name:=pkg/msg/Type')
    ap.add_argument('--duration', type=float, default=0.0,
                    help='stop after this many seconds (0 = until SIGINT)')
    ap.add_argument('--depth', type=int, default=100, help='subscription history depth')
    ap.add_argument('--summary-json', default=None,
                    help='write what was recorded (messages, bytes per topic) to this file')
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """Record until SIGINT or ``--duration``; return 0 when the bag was closed cleanly."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.utilities import remove_ros_args
    args = parse_args(remove_ros_args(sys.argv if argv is None else ['record', *argv])[1:])
    if os.path.exists(args.bag):
        print(f'sage_irp_record: {args.bag} exists, not overwriting', file=sys.stderr)
        return 2
    rclpy.init(args=sys.argv if argv is None else None)
    node = rclpy.create_node(NODE_NAME)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    recorder = Recorder(node, args.bag, args.topics, depth=args.depth)
    end = time.monotonic() + args.duration if args.duration > 0 else None
    try:
        while rclpy.ok() and (end is None or time.monotonic() < end):
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        summary = recorder.close()
        if args.summary_json:
            with open(args.summary_json, 'w', encoding='utf-8') as f:
                json.dump(summary, f, indent=1)
        print(f'sage_irp_record: {json.dumps(summary)}', flush=True)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
