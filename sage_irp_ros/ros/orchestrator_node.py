"""``orchestrator_node``: shares a compute budget (ATP) among plugin nodes by trust.

Every ``period_s`` it grants ``total_atp`` among the plugins that reported recently, by trust
times demand with a floor (:func:`sage_irp_ros.core.allocator.allocate`), as ``BudgetGrant``
messages on ``irp/budget``. It reads every plugin's ``irp/telemetry``: each run updates the
plugin's trust (:class:`~sage_irp_ros.core.allocator.TrustBook`, persisted to ``trust_file``)
and its demand estimate; a run that halts early frees the rest of its grant, which is re-granted
in the same cycle to plugins that still want more (:func:`~sage_irp_ros.core.allocator.regrant`),
by raising their grant for the cycle (a top-up their loop sees at its next step). Plugins silent
for ``liveness_timeout_s`` leave the allocation and rejoin when they report again. Health goes
to ``/diagnostics``.

The arithmetic is in the ROS-free core; this node is plumbing.
"""

from __future__ import annotations

import math
import os
import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import QoSProfile, ReliabilityPolicy
from visualization_msgs.msg import Marker, MarkerArray

from sage_irp_ros import registry
from sage_irp_ros.core.allocator import CycleAllocator, TrustBook
from sage_irp_ros.core.thermal import DEFAULT_ROOT as DEFAULT_THERMAL_ROOT
from sage_irp_ros.core.thermal import ThermalMonitor
from sage_irp_ros.msg import BudgetGrant, IRPTelemetry
from sage_irp_ros.ros.conversions import msg_to_record
from sage_irp_ros.ros.host import (
    BUDGET_TOPIC,
    DIAGNOSTICS_TOPIC,
    HOST_STATUS_SUFFIX,
    TELEMETRY_TOPIC,
    descriptor,
    run_node,
)
from sage_irp_ros.ros.lifecycle import ManagedNode

MARKERS_TOPIC = 'irp/markers'


def default_trust_file(namespace: str = '/') -> str:
    """Return ``$ROS_HOME/sage_irp[/<namespace>]/trust.json`` (``~/.ros`` if ROS_HOME is unset).

    Each namespace (each robot of a fleet that shares a file system or a home directory) keeps
    its own trust; the root namespace keeps ``sage_irp/trust.json``.
    """
    home = os.environ.get('ROS_HOME') or os.path.join(os.path.expanduser('~'), '.ros')
    parts = [p for p in namespace.split('/') if p]
    return os.path.join(home, 'sage_irp', *parts, 'trust.json')


def in_namespace(node_name: str, namespace: str) -> bool:
    """Return True when the fully qualified ``node_name`` is in ``namespace`` or below it.

    ``/robot1/vision_irp_node`` is in ``/robot1`` and in ``/``; not in ``/robot2`` (nor in
    ``/robot``).
    """
    ns = namespace.rstrip('/')
    return node_name.startswith(ns + '/')


class OrchestratorNode(ManagedNode):
    """Grants ATP to plugin nodes each cycle by trust and demand; re-grants early-halt savings.

    A managed node: ``configure`` loads the trust file and creates the publishers, ``activate``
    starts the cycle timer and reads telemetry, ``deactivate`` stops them (plugins then fall
    back to their default budgets) and saves trust, ``cleanup`` drops the allocator.
    """

    def __init__(self, node_name: str = 'orchestrator_node', **kwargs):
        """Declare parameters; configure and activate at once unless ``autostart`` is false."""
        super().__init__(node_name, **kwargs)
        self.alloc = None
        # before anything can fail: tidying up reads them
        self._pubs, self._subs, self._timers_active = [], [], []
        p = self.declare_parameter
        p('period_s', 0.1, descriptor('Allocation cycle period, s', read_only=True,
                                       float_range=(0.001, 3600.0)))
        p('total_atp', 100.0, descriptor(
            'ATP shared per cycle (1 ATP = 1 ms of a plugin\'s measured step cost)',
            float_range=(0.0, 1e9)))
        p('floor', 0.05, descriptor('Fraction of total_atp each active plugin is guaranteed',
                                     float_range=(0.0, 1.0)))
        p('liveness_timeout_s', 2.0, descriptor(
            'A plugin silent this long leaves the allocation', float_range=(0.01, 3600.0)))
        p('trust_alpha', 0.2, descriptor('EMA weight of a run\'s score in trust',
                                          read_only=True, float_range=(0.001, 1.0)))
        p('trust_file', default_trust_file(self.get_namespace()), descriptor(
            'JSON file trust is loaded from at start and saved to; empty = not persisted '
            '(default: one per namespace)', read_only=True))
        p('demand_headroom', 1.5, descriptor(
            'Demand growth factor after a run that ran out of budget',
            float_range=(1.0, 100.0)))
        p('diagnostics_period_s', 1.0, descriptor(
            'Period of /diagnostics status and the irp/markers text, s', read_only=True,
            float_range=(0.01, 3600.0)))
        p('thermal_root', DEFAULT_THERMAL_ROOT, descriptor(
            'Where the device\'s thermal zones are read (a Jetson\'s /sys/class/thermal); '
            'none there: no thermal limit', read_only=True))
        p('throttle_budget_scale', 0.5, descriptor(
            'total_atp is multiplied by this while a thermal zone is at its throttling trip '
            'point (1 = not shrunk)', float_range=(0.0, 1.0)))
        p('marker_frame', 'base_link', descriptor(
            'Frame of the irp/markers text (per-plugin trust, share, steps) for rviz',
            read_only=True))
        self.autostart()

    # ---------------------------------------------------------------------- lifecycle

    def configure_node(self) -> None:
        """Load trust, build the allocator, create the publishers."""
        path = self.get_parameter('trust_file').value or None
        try:
            self.trust = TrustBook(alpha=self.get_parameter('trust_alpha').value, path=path)
        except ValueError as exc:
            aside = f'{path}.bad'
            try:
                os.replace(path, aside)
            except OSError:
                aside = None
            self.get_logger().error(
                f'{exc}; starting with fresh trust' + (f' (the file is kept as {aside})'
                                                       if aside else ''))
            self.trust = TrustBook(alpha=self.get_parameter('trust_alpha').value)
            self.trust.path = path
        if self.trust.entries:
            self.get_logger().info(
                f'trust loaded from {path}: ' + ', '.join(
                    f'{n}={e.trust:.2f}' for n, e in sorted(self.trust.entries.items())))
        self.alloc = CycleAllocator(
            total=self.get_parameter('total_atp').value, floor=self.get_parameter('floor').value,
            headroom=self.get_parameter('demand_headroom').value,
            liveness_timeout=self.get_parameter('liveness_timeout_s').value, trust=self.trust,
            first_cycle=time.time_ns() // 10 ** 6, priorities=registry.kind_priorities())
        self.overhead_ms = 0.0  # EMA of the CPU time of a cycle (allocation + publishing)
        self._thermal = ThermalMonitor(self.get_parameter('thermal_root').value)
        self._dirty = False
        self._last_save = 0.0
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._grant_pub = self.create_publisher(BudgetGrant, BUDGET_TOPIC, qos)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._marker_pub = self.create_publisher(MarkerArray, MARKERS_TOPIC, 10)
        self._pubs = [self._grant_pub, self._diag_pub, self._marker_pub]
        self._warned_rivals = False

    def activate_node(self) -> None:
        """Read telemetry, start the cycle and diagnostics timers."""
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = [
            self.create_subscription(IRPTelemetry, TELEMETRY_TOPIC, self._on_telemetry, qos),
            self.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_heartbeat,
                                     QoSProfile(depth=50))]
        self._timers_active = [
            self.create_timer(self.get_parameter('period_s').value, self._on_cycle),
            self.create_timer(self.get_parameter('diagnostics_period_s').value,
                              self._publish_diagnostics)]
        self.get_logger().info(
            f'orchestrating {self.get_parameter("total_atp").value} ATP every '
            f'{self.get_parameter("period_s").value} s on '
            f'{self.resolve_topic_name(BUDGET_TOPIC)}, reading '
            f'{self.resolve_topic_name(TELEMETRY_TOPIC)}')

    def deactivate_node(self) -> None:
        """Stop the timers and the subscriptions (telemetry, heartbeats); save trust."""
        for timer in self._timers_active:
            self.destroy_timer(timer)
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._timers_active, self._subs = [], []
        if self.alloc is not None:
            self._maybe_save(time.monotonic(), force=True)

    def cleanup_node(self) -> None:
        """Destroy the publishers and drop the allocator."""
        for pub in self._pubs:
            self.destroy_publisher(pub)
        self._pubs = []
        self.alloc = None

    # ------------------------------------------------------------------------- cycles

    def _publish_grants(self, grants) -> None:
        stamp = self.get_clock().now().to_msg()
        for name, atp in grants.items():
            g = BudgetGrant(plugin=name, cycle=self.alloc.cycle, atp_granted=float(atp),
                            step_cap=0, trust_weight=float(self.trust.trust(name)))
            g.header.stamp = stamp
            self._grant_pub.publish(g)

    def _on_cycle(self) -> None:
        t_cpu = time.thread_time()
        now = time.monotonic()
        a = self.alloc
        a.total = float(self.get_parameter('total_atp').value) * self._thermal_scale()
        a.floor = float(self.get_parameter('floor').value)
        a.headroom = float(self.get_parameter('demand_headroom').value)
        a.liveness_timeout = float(self.get_parameter('liveness_timeout_s').value)
        grants = a.start_cycle(now)
        for name in a.left:
            self.get_logger().warning(
                f'{name} silent for {a.liveness_timeout} s: left the allocation')
        self._publish_grants(grants)
        self._maybe_save(now)
        dt = (time.thread_time() - t_cpu) * 1e3
        self.overhead_ms = dt if not self.overhead_ms else self.overhead_ms + 0.1 * (
            dt - self.overhead_ms)

    def _on_telemetry(self, msg: IRPTelemetry) -> None:
        name = msg.entity_id
        if not name or not in_namespace(name, self.get_namespace()):
            return  # another robot's plugin (a fleet on one domain): not ours to budget
        try:
            record = msg_to_record(msg)
        except (ValueError, KeyError, TypeError) as exc:
            self.get_logger().error(f'unreadable telemetry from {name}: {exc}')
            return
        if name not in self.alloc.plugins:
            self.get_logger().info(f'{name} ({msg.plugin}) joined the allocation')
        self._publish_grants(self.alloc.observe(name, msg.plugin, record, time.monotonic()))
        self._dirty = True

    def _on_heartbeat(self, msg: DiagnosticArray) -> None:
        """Every plugin node's /diagnostics is its heartbeat: alive plugins stay allocated."""
        now = time.monotonic()
        for st in msg.status:
            if not st.name.endswith(HOST_STATUS_SUFFIX):
                continue
            values = {kv.key: kv.value for kv in st.values}
            if values.get('lifecycle_state') != 'active':
                continue
            name = st.name[:-len(HOST_STATUS_SUFFIX)]
            if not in_namespace(name, self.get_namespace()):
                continue  # /diagnostics is shared by the whole domain: only our robot's plugins
            try:
                least = float(values.get('atp_per_step_ms', 0)) + float(
                    values.get('atp_per_input_ms', 0))
            except ValueError:
                least = 0.0
            if name not in self.alloc.plugins:
                self.get_logger().info(f'{name} ({st.hardware_id}) joined the allocation '
                                       '(heartbeat)')
            self.alloc.heartbeat(name, st.hardware_id, now, least)

    # ------------------------------------------------------------------------- health

    def _thermal_scale(self) -> float:
        """Return the total budget's factor: ``throttle_budget_scale`` while throttling, else 1.

        The zones are read at most once a second (a few small files).
        """
        mon = self._thermal
        reading = mon.read()
        scale = float(self.get_parameter('throttle_budget_scale').value)
        if mon.changed and mon.throttling:
            self.get_logger().warning(f'device {reading.describe()}: total budget x {scale}')
        elif mon.changed:
            self.get_logger().info('device no longer throttling: full total budget')
        return scale if mon.throttling else 1.0

    @property
    def thermal(self):
        """The device's last thermal reading (None: no zones, or not read yet)."""
        return self._thermal.last

    def _maybe_save(self, now: float, force: bool = False) -> None:
        if self._dirty and (force or now - self._last_save > 1.0):
            try:
                self.trust.save()
            except (OSError, ValueError) as exc:
                self.get_logger().error(f'cannot save trust to {self.trust.path}: {exc}')
            self._dirty = False
            self._last_save = now

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        a = self.alloc
        top = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: orchestrator',
                               level=DiagnosticStatus.OK if not a.overallocations
                               else DiagnosticStatus.ERROR,
                               message=f'{len(a.plugins)} plugins')
        granting = self.count_publishers(BUDGET_TOPIC)
        if granting > 1:  # every orchestrator grants its whole total: the plugins get more
            top.level = DiagnosticStatus.ERROR
            top.message = (f'{granting} orchestrators publish grants on '
                           f'{self.resolve_topic_name(BUDGET_TOPIC)}: run one per robot')
            if not self._warned_rivals:
                self.get_logger().error(top.message)
                self._warned_rivals = True
        thermal = self.thermal
        if thermal is not None and thermal.throttling and top.level == DiagnosticStatus.OK:
            top.level = DiagnosticStatus.WARN
            top.message = f'{len(a.plugins)} plugins; device {thermal.describe()}'
        top.values = [KeyValue(key=k, value=str(v)) for k, v in (
            ('cycle', a.cycle), ('overallocations', a.overallocations),
            ('total_atp_now', round(a.total, 6)),
            ('thermal', 'no zones' if thermal is None else thermal.describe()),
            ('throttling', thermal is not None and bool(thermal.throttling)),
            ('orchestrators_granting', granting),
            ('regranted_atp_total', round(a.regranted_total, 6)),
            ('overhead_ms_per_cycle', round(self.overhead_ms, 4)))]
        arr.status.append(top)
        for name, b in sorted(a.plugins.items()):
            trust = self.trust.trust(name)
            level = DiagnosticStatus.WARN if (trust < 0.5 or b.errors) else DiagnosticStatus.OK
            st = DiagnosticStatus(name=f'{name}: allocation', level=level, hardware_id=b.kind,
                                  message=f'trust {trust:.2f}, share {b.granted:.3f} ATP')
            use = b.spent_total / b.granted_total if b.granted_total > 0 else math.nan
            st.values = [KeyValue(key=k, value=str(v)) for k, v in (
                ('trust', round(trust, 4)), ('share_atp', round(b.granted, 6)),
                ('need_atp_per_run', round(b.need, 6)), ('rate_hz', round(b.rate_hz, 3)),
                ('runs', b.runs), ('errors', b.errors), ('budget_halts', b.budget_halts),
                ('dropped', b.dropped),
                ('budget_use', 'n/a' if math.isnan(use) else round(use, 4)),
                ('last_halt_reason', b.last_halt))]
            arr.status.append(st)
        self._diag_pub.publish(arr)
        self._publish_markers(arr.header.stamp)

    def _publish_markers(self, stamp) -> None:
        """Publish one text line per plugin (trust, share, last halt) for rviz."""
        markers = MarkerArray(markers=[Marker(action=Marker.DELETEALL)])
        frame = self.get_parameter('marker_frame').value
        for i, (name, b) in enumerate(sorted(self.alloc.plugins.items())):
            m = Marker(type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, ns='irp', id=i)
            m.header.frame_id = frame
            m.header.stamp = stamp
            m.pose.position.z = 1.0 + 0.15 * i
            m.pose.orientation.w = 1.0
            m.scale.z = 0.1
            m.color.r, m.color.g, m.color.b, m.color.a = 1.0, 1.0, 1.0, 1.0
            share = b.granted / self.alloc.total if self.alloc.total > 0 else 0.0
            m.text = (f'{name}: trust {self.trust.trust(name):.2f}, share {100 * share:.0f} %, '
                      f'{b.runs} runs, last halt {b.last_halt or "-"}')
            markers.markers.append(m)
        self._marker_pub.publish(markers)


def main(args=None) -> Optional[int]:
    """Run the orchestrator."""
    return run_node(OrchestratorNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
