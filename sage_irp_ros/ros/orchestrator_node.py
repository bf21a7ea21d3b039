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

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from sage_irp_ros.core.allocator import TrustBook, allocate, regrant, run_score
from sage_irp_ros.msg import BudgetGrant, IRPTelemetry
from sage_irp_ros.ros.conversions import msg_to_record
from sage_irp_ros.ros.host import (
    BUDGET_TOPIC,
    DIAGNOSTICS_TOPIC,
    TELEMETRY_TOPIC,
    _descriptor,
    run_node,
)

# Halting reasons after which a plugin has finished its work for the cycle with ATP to spare.
_EARLY = ('slope<eps', 'confident', 'stable', 'feasible', 'max_steps')


@dataclass
class PluginBook:
    """What the orchestrator knows of one plugin."""

    kind: str
    last_seen: float
    need: float  # EMA of the ATP one run uses when it is not cut short by its budget
    runs_per_cycle: float = 1.0  # EMA of runs per cycle
    runs: int = 0
    errors: int = 0
    budget_halts: int = 0
    rate_hz: float = 0.0
    granted: float = 0.0  # this cycle's grant
    spent: float = 0.0  # ATP reported spent this cycle
    runs_cycle: int = 0  # runs reported this cycle
    short_cycle: bool = False  # a run this cycle stopped on its budget after spending some
    done: bool = False  # its spare ATP of this cycle was re-granted
    last_halt: str = ''
    granted_total: float = 0.0
    spent_total: float = 0.0

    def demand(self, cap: float) -> float:
        """ATP this plugin is expected to use per cycle (at least one run), at most ``cap``."""
        return min(self.need * max(self.runs_per_cycle, 1.0), cap)

    def spare(self) -> float:
        """ATP of this cycle's grant it will not need: what is left beyond its expected runs."""
        expected_left = max(round(self.runs_per_cycle) - self.runs_cycle, 0)
        return max(self.granted - self.spent - expected_left * self.need, 0.0)


def default_trust_file() -> str:
    """Return ``$ROS_HOME/sage_irp/trust.json`` (``~/.ros`` when ROS_HOME is unset)."""
    home = os.environ.get('ROS_HOME') or os.path.join(os.path.expanduser('~'), '.ros')
    return os.path.join(home, 'sage_irp', 'trust.json')


class OrchestratorNode(Node):
    """Grants ATP to plugin nodes each cycle by trust and demand; re-grants early-halt savings."""

    def __init__(self, node_name: str = 'orchestrator_node', **kwargs):
        """Declare parameters, load the trust file, start the cycle timer."""
        super().__init__(node_name, **kwargs)
        p = self.declare_parameter
        p('period_s', 0.1, _descriptor('Allocation cycle period, s', read_only=True,
                                       float_range=(0.001, 3600.0)))
        p('total_atp', 100.0, _descriptor(
            'ATP shared per cycle (1 ATP = 1 ms of a plugin\'s measured step cost)',
            float_range=(0.0, 1e9)))
        p('floor', 0.05, _descriptor('Fraction of total_atp each active plugin is guaranteed',
                                     float_range=(0.0, 1.0)))
        p('liveness_timeout_s', 2.0, _descriptor(
            'A plugin silent this long leaves the allocation', float_range=(0.01, 3600.0)))
        p('trust_alpha', 0.2, _descriptor('EMA weight of a run\'s score in trust',
                                          read_only=True, float_range=(0.001, 1.0)))
        p('trust_file', default_trust_file(), _descriptor(
            'JSON file trust is loaded from at start and saved to; empty = not persisted',
            read_only=True))
        p('demand_headroom', 1.5, _descriptor(
            'Demand growth factor after a run that ran out of budget',
            float_range=(1.0, 100.0)))
        p('diagnostics_period_s', 1.0, _descriptor('Period of /diagnostics status, s',
                                                   read_only=True, float_range=(0.01, 3600.0)))
        path = self.get_parameter('trust_file').value or None
        try:
            self.trust = TrustBook(alpha=self.get_parameter('trust_alpha').value, path=path)
        except ValueError as exc:
            self.get_logger().error(f'{exc}; starting with fresh trust')
            self.trust = TrustBook(alpha=self.get_parameter('trust_alpha').value)
            self.trust.path = path
        if self.trust.entries:
            self.get_logger().info(
                f'trust loaded from {path}: ' + ', '.join(
                    f'{n}={e.trust:.2f}' for n, e in sorted(self.trust.entries.items())))
        self.plugins: Dict[str, PluginBook] = {}
        self.cycle = 0
        self.overallocations = 0
        self.regranted_total = 0.0
        self.overhead_ms = 0.0  # EMA of the CPU time of a cycle (allocation + publishing)
        self._dirty = False
        self._last_save = 0.0
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._grant_pub = self.create_publisher(BudgetGrant, BUDGET_TOPIC, qos)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.create_subscription(IRPTelemetry, TELEMETRY_TOPIC, self._on_telemetry, qos)
        self._timer = self.create_timer(self.get_parameter('period_s').value, self._on_cycle)
        self._diag_timer = self.create_timer(self.get_parameter('diagnostics_period_s').value,
                                             self._publish_diagnostics)
        self.get_logger().info(
            f'orchestrating {self.get_parameter("total_atp").value} ATP every '
            f'{self.get_parameter("period_s").value} s on '
            f'{self.resolve_topic_name(BUDGET_TOPIC)}, reading '
            f'{self.resolve_topic_name(TELEMETRY_TOPIC)}')

    # ------------------------------------------------------------------------- cycles

    def _grant(self, name: str, atp: float) -> None:
        b = self.plugins[name]
        self._grant_pub.publish(BudgetGrant(
            plugin=name, cycle=self.cycle, atp_granted=float(atp), step_cap=0,
            trust_weight=float(self.trust.trust(name))))
        b.granted = float(atp)

    def _on_cycle(self) -> None:
        t_cpu = time.thread_time()
        now = time.monotonic()
        timeout = self.get_parameter('liveness_timeout_s').value
        for name in [n for n, b in self.plugins.items() if now - b.last_seen > timeout]:
            self.get_logger().warning(f'{name} silent for {timeout} s: left the allocation')
            del self.plugins[name]
        total = float(self.get_parameter('total_atp').value)
        headroom = self.get_parameter('demand_headroom').value
        for b in self.plugins.values():  # learn from the cycle that ends
            if self.cycle > 0:
                b.runs_per_cycle += 0.3 * (b.runs_cycle - b.runs_per_cycle)
            if b.short_cycle:
                b.need = min(b.need * headroom, total)
        self.cycle += 1
        shares = allocate(total, {n: (self.trust.trust(n), b.demand(total))
                                  for n, b in self.plugins.items()},
                          self.get_parameter('floor').value)
        if sum(shares.values()) > total * (1 + 1e-9) + 1e-9:
            self.overallocations += 1
        for name, b in self.plugins.items():
            b.spent, b.runs_cycle, b.short_cycle, b.done = 0.0, 0, False, False
            self._grant(name, shares.get(name, 0.0))
            b.granted_total += b.granted
        self._maybe_save(now)
        dt = (time.thread_time() - t_cpu) * 1e3
        self.overhead_ms = dt if self.cycle == 1 else self.overhead_ms + 0.1 * (
            dt - self.overhead_ms)

    # ---------------------------------------------------------------------- telemetry

    def _on_telemetry(self, msg: IRPTelemetry) -> None:
        name = msg.entity_id
        if not name:
            return
        try:
            record = msg_to_record(msg)
            score = run_score(record)
        except (ValueError, KeyError, TypeError) as exc:
            self.get_logger().error(f'unreadable telemetry from {name}: {exc}')
            return
        now = time.monotonic()
        b = self.plugins.get(name)
        spent = float(msg.atp_spent)
        if b is None:
            b = self.plugins[name] = PluginBook(kind=msg.plugin, last_seen=now,
                                                need=max(spent, 1e-3))
            self.get_logger().info(f'{name} ({msg.plugin}) joined the allocation')
        dt = now - b.last_seen
        if dt > 0:
            b.rate_hz += 0.2 * (1.0 / dt - b.rate_hz)
        b.last_seen = now
        b.runs += 1
        b.last_halt = msg.halt_reason
        b.errors += msg.halt_reason == 'error'
        b.spent_total += spent
        self.trust.update(name, score)
        self._dirty = True
        if msg.halt_reason == 'budget':
            b.budget_halts += 1
        elif msg.halt_reason in _EARLY:
            b.need += 0.3 * (max(spent, 1e-3) - b.need)
        meta = json.loads(msg.metadata_json) if msg.metadata_json else {}
        if meta.get('cycle') != self.cycle:
            return  # a run on a default budget or an older grant
        b.spent += spent
        b.runs_cycle += 1
        if msg.halt_reason == 'budget' and spent > 0:
            b.short_cycle = True
        elif msg.halt_reason in _EARLY and not b.done:
            self._regrant_from(name)

    def _regrant_from(self, name: str) -> None:
        """Hand ``name``'s spare ATP of this cycle to plugins of this cycle that want more."""
        b = self.plugins[name]
        total = float(self.get_parameter('total_atp').value)
        running = {n: (self.trust.trust(n), max(o.demand(total) - o.granted, 0.0))
                   for n, o in self.plugins.items() if n != name and not o.done}
        ups = {n: v for n, v in regrant(b.spare(), running).items() if v > 0}
        if not ups:
            return
        b.done = True
        given = sum(ups.values())
        self._grant(name, b.granted - given)  # lower the finished plugin's grant first
        for n, v in sorted(ups.items()):
            self._grant(n, self.plugins[n].granted + v)
        self.regranted_total += given

    # ------------------------------------------------------------------------- health

    def _maybe_save(self, now: float, force: bool = False) -> None:
        if self._dirty and (force or now - self._last_save > 1.0):
            try:
                self.trust.save()
            except OSError as exc:
                self.get_logger().error(f'cannot save trust to {self.trust.path}: {exc}')
            self._dirty = False
            self._last_save = now

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        top = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: orchestrator',
                               level=DiagnosticStatus.OK if not self.overallocations
                               else DiagnosticStatus.ERROR,
                               message=f'{len(self.plugins)} plugins')
        top.values = [KeyValue(key=k, value=str(v)) for k, v in (
            ('cycle', self.cycle), ('overallocations', self.overallocations),
            ('regranted_atp_total', round(self.regranted_total, 6)),
            ('overhead_ms_per_cycle', round(self.overhead_ms, 4)))]
        arr.status.append(top)
        for name, b in sorted(self.plugins.items()):
            trust = self.trust.trust(name)
            level = DiagnosticStatus.WARN if (trust < 0.5 or b.errors) else DiagnosticStatus.OK
            st = DiagnosticStatus(name=f'{name}: allocation', level=level, hardware_id=b.kind,
                                  message=f'trust {trust:.2f}, share {b.granted:.3f} ATP')
            use = b.spent_total / b.granted_total if b.granted_total > 0 else math.nan
            st.values = [KeyValue(key=k, value=str(v)) for k, v in (
                ('trust', round(trust, 4)), ('share_atp', round(b.granted, 6)),
                ('need_atp_per_run', round(b.need, 6)), ('rate_hz', round(b.rate_hz, 3)),
                ('runs', b.runs), ('errors', b.errors), ('budget_halts', b.budget_halts),
                ('budget_use', 'n/a' if math.isnan(use) else round(use, 4)),
                ('last_halt_reason', b.last_halt))]
            arr.status.append(st)
        self._diag_pub.publish(arr)

    def destroy_node(self) -> None:
        """Save trust, then destroy the node."""
        self._maybe_save(time.monotonic(), force=True)
        super().destroy_node()


def main(args=None) -> Optional[int]:
    """Run the orchestrator."""
    return run_node(OrchestratorNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
