"""The node host: one rclpy base that turns any IRP plugin into a ROS 2 node.

A plugin node subclasses :class:`IRPNodeHost` and supplies the plugin and its message
conversions (``create_plugin``, ``decode``, ``create_outputs``, ``publish_output``). The host does
the rest, the same way for every plugin:

- declares the common parameters with descriptors (halting, deadline, device, precision,
  topics, QoS, default budget) and applies the run-time ones when they change;
- subscribes to the input with sensor-data QoS by default for sensor inputs, keeps only the
  newest message (stale ones are dropped and counted), and refines it in a worker thread, so the
  executor keeps serving callbacks;
- listens to ``irp/budget`` for its grants (top-ups reach a run under way) and falls back to the
  default budget when no orchestrator speaks;
- publishes telemetry as ``IRPTelemetry`` on ``irp/telemetry`` and schema-valid JSON on
  ``irp/telemetry_json``, and health on ``/diagnostics``;
- logs and counts every bad input and plugin failure, and keeps running.

No refinement logic lives here: the loop is :func:`sage_irp_ros.core.loop.refine`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Optional, Tuple, Type

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import (
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from std_msgs.msg import Header, String

from sage_irp_ros.core import (
    HALT_ERROR,
    Budget,
    HaltConfig,
    StepCostMeter,
    TelemetryError,
    make_record,
    process_memory_mb,
    refine,
    validate_record,
)
from sage_irp_ros.core.plugin import IRPPlugin
from sage_irp_ros.msg import BudgetGrant, IRPTelemetry
from sage_irp_ros.ros.conversions import InputError, record_to_msg

try:  # Iron and newer
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

TELEMETRY_TOPIC = 'irp/telemetry'
TELEMETRY_JSON_TOPIC = 'irp/telemetry_json'
BUDGET_TOPIC = 'irp/budget'
DIAGNOSTICS_TOPIC = '/diagnostics'

_RELIABILITY = {
    'best_effort': ReliabilityPolicy.BEST_EFFORT,
    'reliable': ReliabilityPolicy.RELIABLE,
}


@dataclass
class HostCounters:
    """What a plugin node has seen and done since it started."""

    received: int = 0
    dropped_stale: int = 0
    bad_input: int = 0
    runs: int = 0
    plugin_errors: int = 0
    published: int = 0
    telemetry_rejected: int = 0
    grants: int = 0
    steps_total: int = 0


def descriptor(description: str, *, read_only: bool = False,
                float_range: Optional[Tuple[float, float]] = None,
                int_range: Optional[Tuple[int, int]] = None) -> ParameterDescriptor:
    """Return a parameter descriptor with a description and optional range / read-only flag."""
    d = ParameterDescriptor(description=description, read_only=read_only)
    if float_range is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(float_range[0]),
                                                     to_value=float(float_range[1]), step=0.0)]
    if int_range is not None:
        d.integer_range = [IntegerRange(from_value=int(int_range[0]),
                                        to_value=int(int_range[1]), step=1)]
    return d


class IRPNodeHost(Node):
    """Base of every plugin node. Subclasses set the class attributes and four hooks.

    Class attributes
    ----------------
    input_type:
        The ROS message type of the input.
    sensor_input:
        True for sensor streams (camera, microphone): sensor-data QoS (best effort) by default.
    default_input_topic, default_output_topic:
        Default topic names (parameters ``input_topic`` and ``output_topic``).
    default_eps, default_k, default_max_steps:
        The plugin's halting defaults, unless ``halt_defaults()`` takes them from the plugin.

    """

    input_type: Type = String
    sensor_input: bool = False
    #: Runs in a row that had ATP but could not pay one step before the price is re-measured.
    STARVED_RUNS = 3
    default_input_topic: str = 'input'
    default_output_topic: str = 'output'
    default_eps: float = 1e-3
    default_k: int = 2
    default_max_steps: int = 50

    def __init__(self, node_name: str, **kwargs: Any):
        """Declare parameters, build the plugin, and start subscriptions and the worker."""
        super().__init__(node_name, **kwargs)
        self.counters = HostCounters()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending = None  # (msg, receive time) of the newest unprocessed input
        self._stopping = False
        self._cancel = threading.Event()
        self._busy = False
        self._last_halt = ''
        self._starved = 0
        self._grant: Optional[Tuple[int, Budget, float, float]] = None
        self._declare_host_parameters()
        self.declare_plugin_parameters()
        self.plugin: IRPPlugin = self.create_plugin()
        self._declare_halt_parameters(self.halt_defaults())
        self._halt_config = self._read_halt_config({})
        self.cost = StepCostMeter(initial_ms=1.0)
        self._calibrate()
        self.entity_id = self.get_fully_qualified_name()

        depth = self.get_parameter('output_qos_depth').value
        self._telemetry_pub = self.create_publisher(IRPTelemetry, TELEMETRY_TOPIC, depth)
        self._telemetry_json_pub = self.create_publisher(String, TELEMETRY_JSON_TOPIC, depth)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.create_outputs()
        self._budget_sub = self.create_subscription(BudgetGrant, BUDGET_TOPIC, self._on_grant, 10)
        qos = self.input_qos()
        self._input_topic = self.get_parameter('input_topic').value
        self._input_sub = self.create_subscription(
            self.input_type, self._input_topic, self._on_input, qos,
            event_callbacks=SubscriptionEventCallbacks(
                incompatible_qos=self._on_incompatible_qos))
        self.get_logger().info(
            f'{type(self.plugin).__name__} ({self.plugin.kind}) ready: input '
            f'{self.resolve_topic_name(self._input_topic)} '
            f'[{self.input_type.__module__.split(".")[0]}/{self.input_type.__name__}, '
            f'{qos.reliability.name.lower()}, depth {qos.depth}], telemetry '
            f'{self.resolve_topic_name(TELEMETRY_TOPIC)}, step cost '
            f'{self.cost.per_step_ms:.3f} ms')
        self.add_on_set_parameters_callback(self._on_set_parameters)
        period = self.get_parameter('diagnostics_period_s').value
        self._diag_timer = self.create_timer(period, self._publish_diagnostics) \
            if period > 0 else None
        self._worker = threading.Thread(target=self._work, name=f'{node_name}-irp', daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- hooks for subclasses

    def declare_plugin_parameters(self) -> None:
        """Declare the plugin's own parameters (model path, class names, ...)."""

    def create_plugin(self) -> IRPPlugin:
        """Build the plugin from the parameters."""
        raise TypeError(f'{type(self).__name__} must override create_plugin()')

    def decode(self, msg) -> Tuple[Any, Optional[Mapping[str, Any]]]:
        """Turn an input message into ``(x0, ctx)``; raise ``InputError`` when it is unusable."""
        raise TypeError(f'{type(self).__name__} must override decode()')

    def create_outputs(self) -> None:
        """Create the output publishers."""

    def publish_output(self, output: Any, header: Header, result, x0: Any) -> None:
        """Publish the refined output with the input's header (``x0``: the decoded input)."""

    def halt_defaults(self) -> HaltConfig:
        """Return the default halting parameters (a plugin may carry its tuned ones)."""
        return HaltConfig(eps=self.default_eps, K=self.default_k,
                          max_steps=self.default_max_steps)

    def example_input(self) -> Optional[Tuple[Any, Optional[Mapping[str, Any]]]]:
        """Return an ``(x0, ctx)`` to calibrate the step cost at start-up, or None."""
        return None

    def run_metadata(self, output: Any, result) -> Mapping[str, Any]:
        """Extra telemetry metadata of one run (task quality when the node knows it)."""
        return {}

    def header_of(self, msg) -> Header:
        """Return the input's header, or one stamped now for header-less messages."""
        header = getattr(msg, 'header', None)
        if isinstance(header, Header):
            return header
        return Header(stamp=self.get_clock().now().to_msg(), frame_id='')

    # ----------------------------------------------------------------------- parameters

    def _declare_halt_parameters(self, defaults: HaltConfig) -> None:
        p = self.declare_parameter
        p('eps', float(defaults.eps), descriptor(
            'Slope threshold: halt when the energy falls by less than eps * energy scale per '
            'step over the last K steps', float_range=(0.0, 1.0)))
        p('K', int(defaults.K), descriptor('Window of the slope rule, steps',
                                            int_range=(1, 1000)))
        p('max_steps', int(defaults.max_steps), descriptor('Hard cap of refinement steps',
                                                            int_range=(0, 100000)))

    def _declare_host_parameters(self) -> None:
        p = self.declare_parameter
        p('deadline_ms', 0.0, descriptor(
            'Wall-clock deadline per input from its arrival, ms; 0 = none',
            float_range=(0.0, 3.6e6)))
        p('default_atp', 0.0, descriptor(
            'ATP per input when no orchestrator grant is current (1 ATP = 1 ms of measured '
            'step cost); 0 = unlimited (max_steps still applies)', float_range=(0.0, 1e9)))
        p('grant_timeout_s', 2.0, descriptor(
            'A grant older than this is stale and the default budget applies',
            float_range=(0.01, 3600.0)))
        p('device', 'cpu', descriptor('Torch device of the plugin: cpu, cuda, cuda:N',
                                       read_only=True))
        p('precision', 'fp32', descriptor('Numeric precision of the plugin: fp32 or fp16',
                                           read_only=True))
        p('input_topic', self.default_input_topic, descriptor('Input topic', read_only=True))
        p('output_topic', self.default_output_topic, descriptor('Output topic',
                                                                 read_only=True))
        p('input_qos_reliability', 'best_effort' if self.sensor_input else 'reliable',
          descriptor('Input QoS reliability: best_effort or reliable (match the publisher)',
                      read_only=True))
        p('input_qos_depth', 5 if self.sensor_input else 10, descriptor(
            'Input QoS history depth', read_only=True, int_range=(1, 1000)))
        p('output_qos_depth', 5, descriptor('Output and telemetry QoS depth (reliable)',
                                             read_only=True, int_range=(1, 1000)))
        p('preempt', False, descriptor(
            'A new input cancels the run under way (halt reason manual) instead of waiting'))
        p('diagnostics_period_s', 1.0, descriptor(
            'Period of /diagnostics status, s; 0 = off', read_only=True,
            float_range=(0.0, 3600.0)))

    def _read_halt_config(self, overrides: Mapping[str, Any]) -> HaltConfig:
        def get(name):
            return overrides[name] if name in overrides else self.get_parameter(name).value
        return HaltConfig(eps=float(get('eps')), K=int(get('K')),
                          max_steps=int(get('max_steps')))

    def _on_set_parameters(self, params) -> SetParametersResult:
        overrides = {p.name: p.value for p in params}
        try:
            cfg = self._read_halt_config(overrides)
        except (TypeError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._halt_config = cfg
        return SetParametersResult(successful=True)

    def input_qos(self) -> QoSProfile:
        """Return the input QoS from the parameters (sensor-data profile for sensors)."""
        rel = self.get_parameter('input_qos_reliability').value
        if rel not in _RELIABILITY:
            raise ValueError(f'input_qos_reliability must be one of {sorted(_RELIABILITY)}, '
                             f'got {rel!r}')
        base = qos_profile_sensor_data if self.sensor_input else QoSProfile(depth=10)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST,
                          depth=self.get_parameter('input_qos_depth').value,
                          reliability=_RELIABILITY[rel], durability=base.durability)

    def output_qos(self) -> QoSProfile:
        """Return reliable, shallow output QoS (best-effort and reliable readers both match)."""
        return QoSProfile(depth=self.get_parameter('output_qos_depth').value,
                          reliability=ReliabilityPolicy.RELIABLE)

    def create_output_publisher(self, msg_type, topic: str):
        """Create an output publisher that warns when a subscriber's QoS is incompatible."""
        return self.create_publisher(
            msg_type, topic, self.output_qos(),
            event_callbacks=PublisherEventCallbacks(incompatible_qos=self._on_incompatible_qos))

    def _on_incompatible_qos(self, event) -> None:
        policy = getattr(event, 'last_policy_kind', '?')
        self.get_logger().warning(
            f'incompatible QoS with a peer (policy {getattr(policy, "name", policy)}): '
            'messages will not flow; set input_qos_reliability to match the publisher')

    # -------------------------------------------------------------------------- budget

    def _calibrate(self) -> None:
        example = self.example_input()
        if example is None:
            return
        try:
            self.cost.calibrate(self.plugin, example[0], example[1])
        except Exception as exc:  # noqa: BLE001 - calibration failing must not kill the node
            self.get_logger().warning(f'step-cost calibration failed: {exc!r}; using 1 ms')

    def _on_grant(self, msg: BudgetGrant) -> None:
        if msg.plugin != self.entity_id:
            return
        if not (math.isfinite(msg.atp_granted) and msg.atp_granted >= 0):
            self.get_logger().warning(f'ignoring grant with atp_granted={msg.atp_granted}')
            return
        deadline = None
        dl_ns = msg.deadline.sec * 10 ** 9 + msg.deadline.nanosec
        if dl_ns > 0:
            remaining = (dl_ns - self.get_clock().now().nanoseconds) * 1e-9
            deadline = time.perf_counter() + remaining
        now = time.monotonic()
        with self._lock:
            self.counters.grants += 1
            cur = self._grant
            if cur is not None and msg.cycle == cur[0]:
                cur[1].grant(msg.atp_granted, msg.step_cap, deadline)  # top-up, seen mid-run
                self._grant = (cur[0], cur[1], now, msg.trust_weight)
            elif cur is None or msg.cycle > cur[0]:
                self._grant = (msg.cycle, Budget(msg.atp_granted, msg.step_cap, deadline), now,
                               msg.trust_weight)

    def _budget_for_run(self) -> Tuple[Budget, Optional[int], Optional[float]]:
        """Return the account of the current grant (or a default one), its cycle and trust."""
        timeout = self.get_parameter('grant_timeout_s').value
        with self._lock:
            g = self._grant
        if g is not None and time.monotonic() - g[2] <= timeout:
            return g[1], g[0], g[3]
        atp = self.get_parameter('default_atp').value
        return Budget(atp if atp > 0 else math.inf), None, None

    # -------------------------------------------------------------------------- inputs

    def _on_input(self, msg) -> None:
        with self._lock:
            self.counters.received += 1
            if self._pending is not None:
                self.counters.dropped_stale += 1
            self._pending = (msg, time.perf_counter())
            if self._busy and self.get_parameter('preempt').value:
                self._cancel.set()
            self._wake.notify()

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                msg, t_recv = self._pending
                self._pending = None
                self._busy = True
                self._cancel.clear()
            try:
                self._process(msg, t_recv)
            except Exception as exc:  # noqa: BLE001 - the node must outlive any one input
                with self._lock:
                    self.counters.plugin_errors += 1
                self.get_logger().error(f'processing an input failed: {exc!r}')
            finally:
                with self._lock:
                    self._busy = False

    def _process(self, msg, t_recv: float) -> None:
        try:
            x0, ctx = self.decode(msg)
        except InputError as exc:
            with self._lock:
                self.counters.bad_input += 1
            self.get_logger().error(f'bad input on {self._input_topic}: {exc}')
            return
        header = self.header_of(msg)
        budget, cycle, trust_weight = self._budget_for_run()
        dl_ms = self.get_parameter('deadline_ms').value
        deadline = t_recv + dl_ms * 1e-3 if dl_ms > 0 else None
        try:
            result = refine(self.plugin, x0, ctx, config=self._halt_config, budget=budget,
                            cost=self.cost, cancel=self._cancel, deadline=deadline)
        except ValueError as exc:  # init_state refused the input
            with self._lock:
                self.counters.bad_input += 1
            self.get_logger().error(f'bad input on {self._input_topic}: {exc}')
            return
        trace = result.trace
        self._watch_price(trace, budget, x0, ctx)
        with self._lock:
            self.counters.runs += 1
            self.counters.steps_total += trace.steps
            self._last_halt = trace.halt_reason
        if trace.halt_reason == HALT_ERROR:
            with self._lock:
                self.counters.plugin_errors += 1
            self.get_logger().error(f'refinement ended in error: {trace.error}')
        metadata = {
            'model_version': self.plugin.version,
            'device': self.get_parameter('device').value,
            'precision': self.get_parameter('precision').value,
            'input_stamp': header.stamp.sec + header.stamp.nanosec * 1e-9,
            'cycle': cycle,
            'trust_weight': trust_weight,
            'atp_per_step': self.cost.per_step_ms,
            'dropped_total': self.counters.dropped_stale,
        }
        if result.output is not None:
            try:
                self.publish_output(result.output, header, result, x0)
                metadata.update(self.run_metadata(result.output, result))
                with self._lock:
                    self.counters.published += 1
            except Exception as exc:  # noqa: BLE001 - count, log, keep going
                with self._lock:
                    self.counters.plugin_errors += 1
                self.get_logger().error(f'publishing the output failed: {exc!r}')
        self.publish_telemetry(make_record(
            self.plugin.kind, trace, entity_id=self.entity_id, metadata=metadata,
            memory_mb=process_memory_mb()), header)

    def _watch_price(self, trace, budget: Budget, x0, ctx) -> None:
        """Re-measure the step price when grants keep failing to pay for a single step.

        The price only learns from steps that run: one measured too high (say, at a start-up
        while other nodes loaded on the same cores) would starve the plugin for good. After
        ``STARVED_RUNS`` runs in a row that had ATP but could not pay one step, a few real
        steps on the current input re-measure it.
        """
        starved = (trace.steps == 0 and trace.halt_reason == 'budget'
                   and budget.granted > 0 and not budget.unlimited)
        self._starved = self._starved + 1 if starved else 0
        if self._starved < self.STARVED_RUNS:
            return
        self._starved = 0
        old = self.cost.per_step_ms
        try:
            new = self.cost.calibrate(self.plugin, x0, ctx, steps=4, warmup=1)
        except Exception as exc:  # noqa: BLE001 - a failed re-measure must not stop the node
            self.get_logger().warning(f'step-cost re-measure failed: {exc!r}')
            return
        self.get_logger().warning(
            f'{self.STARVED_RUNS} runs could not pay one step at {old:.3f} ATP: step cost '
            f're-measured as {new:.3f} ms')

    def publish_telemetry(self, record: Mapping[str, Any], header: Header) -> bool:
        """Validate ``record`` and publish it on both telemetry topics; count a reject."""
        try:
            text = validate_record(record)
        except TelemetryError as exc:
            with self._lock:
                self.counters.telemetry_rejected += 1
            self.get_logger().error(f'telemetry record rejected: {exc}')
            return False
        self._telemetry_pub.publish(record_to_msg(record, header))
        self._telemetry_json_pub.publish(String(data=text))
        return True

    # ------------------------------------------------------------------------ health

    def _publish_diagnostics(self) -> None:
        with self._lock:
            c = asdict(self.counters)
            last = self._last_halt
        level = DiagnosticStatus.OK
        message = 'ok'
        if c['plugin_errors'] or c['telemetry_rejected']:
            level, message = DiagnosticStatus.WARN, 'plugin errors or rejected telemetry'
        status = DiagnosticStatus(level=level, name=f'{self.entity_id}: irp host',
                                  message=message, hardware_id=self.plugin.kind)
        c['atp_per_step_ms'] = round(self.cost.per_step_ms, 6)
        c['last_halt_reason'] = last
        status.values = [KeyValue(key=k, value=str(v)) for k, v in c.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)

    # ---------------------------------------------------------------------- shutdown

    def destroy_node(self) -> None:
        """Stop the worker (a run under way halts with ``manual``), then destroy the node."""
        worker = getattr(self, '_worker', None)  # None when __init__ failed part-way
        if worker is not None:
            with self._lock:
                self._stopping = True
                self._cancel.set()
                self._wake.notify_all()
            if worker.is_alive() and threading.current_thread() is not worker:
                worker.join(timeout=5.0)
        super().destroy_node()


def run_node(node_factory: Callable[[], Node], args=None) -> int:
    """Run a node until SIGINT or external shutdown; clean up and return an exit code."""
    rclpy.init(args=args)
    node = None
    try:
        node = node_factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
