"""The demo's own ROS node: live telemetry, grants and diagnostics, and the progress line.

rclpy is imported when a :class:`Monitor` is created, so importing this module leaves the DDS
environment (set by the demo before any node exists) untouched.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from typing import Dict, Optional, Sequence

from sage_irp_ros.registry import PluginSpec


class Monitor:
    """The demo's own node: live telemetry, grants and diagnostics for the progress line.

    ``runs`` maps a node (entity) to the telemetry records seen live, ``granted`` an entity (node)
    to ``{cycle: ATP granted}``, ``diag`` a diagnostics status name to its key/values; read
    them under ``lock``.
    """

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        from sage_irp_ros.msg import BudgetGrant
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('sage_irp_demo', context=self.context)
        self.lock = threading.Lock()
        self.runs = defaultdict(list)           # entity (node) -> telemetry records
        self.granted = defaultdict(dict)        # entity -> {cycle: atp}
        self.diag = {}                          # status name -> {key: value}
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(String, '/irp/telemetry_json', self._on_telemetry, qos)
        self.node.create_subscription(BudgetGrant, '/irp/budget', self._on_grant, qos)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - shutdown races end the thread
            pass

    def _on_telemetry(self, msg) -> None:
        try:
            rec = json.loads(msg.data)
        except ValueError:
            return
        with self.lock:
            self.runs[rec.get('entity_id')].append(rec)

    def _on_grant(self, msg) -> None:
        with self.lock:
            cycles = self.granted[msg.plugin]
            cycles[msg.cycle] = max(cycles.get(msg.cycle, 0.0), msg.atp_granted)

    def _on_diag(self, msg) -> None:
        with self.lock:
            for st in msg.status:
                self.diag[st.name] = {kv.key: kv.value for kv in st.values}

    def host_counters(self, node_name: str) -> Optional[dict]:
        """Return the newest ``/diagnostics`` counters of a plugin node (or None)."""
        with self.lock:
            return self.diag.get(f'/{node_name}: irp host')

    def trust(self, node_name: str) -> Optional[float]:
        """Return the orchestrator's newest trust of a plugin node (or None)."""
        with self.lock:
            d = self.diag.get(f'/{node_name}: allocation')
        return float(d['trust']) if d and 'trust' in d else None

    def runs_of(self, node_name: str) -> list:
        """Return a copy of the telemetry records of the node ``node_name`` seen so far."""
        with self.lock:
            return list(self.runs.get(f'/{node_name}', []))

    def subscribed_by(self, topic: str, node_name: str) -> bool:
        """Return True when ``node_name`` subscribes to ``topic``."""
        return any(i.node_name == node_name
                   for i in self.node.get_subscriptions_info_by_topic(topic))

    def get_int_parameter(self, node_name: str, name: str, timeout: float = 5.0):
        """Return an integer parameter of a node through its get_parameters service."""
        from rcl_interfaces.srv import GetParameters
        cli = self.node.create_client(GetParameters, f'/{node_name}/get_parameters')
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                return None
            fut = cli.call_async(GetParameters.Request(names=[name]))
            end = time.monotonic() + timeout
            while not fut.done() and time.monotonic() < end:
                time.sleep(0.02)
            if not fut.done() or not fut.result().values:
                return None
            return int(fut.result().values[0].integer_value)
        finally:
            self.node.destroy_client(cli)

    def close(self) -> None:
        """Shut the node down."""
        self.context.try_shutdown()
        self._thread.join(timeout=5)
        self.executor.shutdown()


def progress_line(mon: Monitor, plugins: Sequence[PluginSpec], sent: Dict[str, int],
                  t: float) -> str:
    """Return one progress line: per plugin, inputs done, dropped, halt reasons, ATP spent.

    ``sent`` maps a plugin's name to the inputs replayed (or expected) for it.
    """
    parts = []
    for spec in plugins:
        recs = mon.runs_of(spec.node_name)
        halts = Counter(r['halt_reason'] for r in recs)
        spent = sum(r['budget']['ATP_spent'] for r in recs)
        c = mon.host_counters(spec.node_name) or {}
        parts.append(f'{spec.name} {len(recs)}/{sent.get(spec.name, "?")} done'
                     f' (dropped {c.get("dropped_stale", "?")}; halts '
                     + (', '.join(f'{h} {n}' for h, n in halts.most_common()) or '-')
                     + f'; ATP spent {spent:.0f})')
    return f'[{t:5.1f} s] ' + ' | '.join(parts)
