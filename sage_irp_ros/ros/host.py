"""The node host: one rclpy base that turns any IRP plugin into a ROS 2 (lifecycle) node.

A plugin node subclasses :class:`IRPNodeHost`, names its registry entry (``plugin_name``) and
supplies the plugin and its message conversions (``create_plugin``, ``decode`` or
``decode_inputs``, ``publish_output``). The host does the rest, the same way for every plugin:

- declares the common parameters with descriptors (halting, deadline, device, precision,
  budget) and one set per port of the plugin's registry entry: ``<port>_topic`` for every input
  and output, ``<port>_qos_reliability`` and ``<port>_qos_depth`` for inputs;
- is a managed node (:class:`~sage_irp_ros.ros.lifecycle.ManagedNode`): ``configure`` picks the
  device (falling back to cpu / fp32 with a warning when the plugin or the machine cannot run
  the one asked for), loads the model, measures the step price and creates the publishers;
  ``activate`` subscribes to the inputs and grants and starts the worker; ``deactivate`` stops
  them and releases GPU memory; ``cleanup`` drops the model;
- subscribes to every input with its own QoS: an input *triggers* runs (``newest``: only the
  newest message waits while the worker is busy, older ones are dropped and counted; ``each``:
  every message, in order, up to the port's depth) or is *kept* (``none``: its last value is
  read by the runs other inputs trigger, e.g. a latched map); ``run_period_s`` > 0 also
  triggers a run on a timer with the newest values. A run starts only when every required
  input has a value. Refinement runs in a worker thread, so the executor keeps serving
  callbacks;
- listens to ``irp/budget`` for its grants (top-ups reach a run under way) and falls back to the
  default budget when no orchestrator speaks; an input whose grant cannot pay its per-input
  price (a zero grant: the plugin sits the cycle out) is not run, only counted
  (``dropped_no_budget`` in diagnostics and in the next run's telemetry metadata);
- publishes telemetry as ``IRPTelemetry`` on ``irp/telemetry`` and schema-valid JSON on
  ``irp/telemetry_json``, and health on ``/diagnostics``;
- with ``memory`` on (``mailbox`` in one process, ``topic`` across processes): hands what the
  plugin's ``experience()`` returns after each run to the memory node (the in-process mailbox,
  by reference, or ``irp/experience``), and gives each run ``ctx['recall']``, the nearest
  record of the memory store (read-only, beside the memory node that writes it), for a warm
  start; the run's telemetry says whether the plugin used one (``metadata.warm_start``);
- logs and counts every bad input and plugin failure, and keeps running.

No refinement logic lives here: the loop is :func:`sage_irp_ros.core.loop.refine`.
"""

from __future__ import annotations

import collections
import importlib
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from std_msgs.msg import Header, String

from sage_irp_ros import registry
from sage_irp_ros.core import (
    HALT_ERROR,
    Budget,
    HaltConfig,
    RunInfo,
    StepCostMeter,
    TelemetryError,
    make_record,
    process_memory_mb,
    refine,
    validate_record,
)
from sage_irp_ros.core.loop import RefineResult, refine_batch
from sage_irp_ros.core.mailbox import EXPERIENCE_CHANNEL, Mailbox, default_mailbox
from sage_irp_ros.core.plugin import IRPPlugin
from sage_irp_ros.core.thermal import DEFAULT_ROOT as DEFAULT_THERMAL_ROOT
from sage_irp_ros.core.thermal import ThermalMonitor
from sage_irp_ros.msg import BudgetGrant, Experience, IRPTelemetry
from sage_irp_ros.ros.conversions import InputError, experience_to_msg, record_to_msg
from sage_irp_ros.ros.lifecycle import ManagedNode, StartError

try:  # Iron and newer
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

TELEMETRY_TOPIC = 'irp/telemetry'
TELEMETRY_JSON_TOPIC = 'irp/telemetry_json'
BUDGET_TOPIC = 'irp/budget'
DIAGNOSTICS_TOPIC = '/diagnostics'
TIMER_TRIGGER = 'timer'
#: ATP per input without a current grant: bounded, so a plugin the orchestrator does not (or
#: no longer) budget cannot run away with the machine (100 ms of compute per input).
DEFAULT_ATP = 100.0
#: A plugin node's /diagnostics status is named '<entity id>: irp host' (the orchestrator's
#: heartbeat of it).
HOST_STATUS_SUFFIX = ': irp host'
#: Experiences for a memory node in another process (``memory: topic``).
EXPERIENCE_TOPIC = 'irp/experience'
#: Values of the ``memory`` parameter.
MEMORY_OFF, MEMORY_MAILBOX, MEMORY_TOPIC = 'off', 'mailbox', 'topic'
MEMORY_MODES = (MEMORY_OFF, MEMORY_MAILBOX, MEMORY_TOPIC)
#: Seconds between attempts to open the memory store for warm starts after one failed.
RECALL_RETRY_S = 5.0

_RELIABILITY = {
    'best_effort': ReliabilityPolicy.BEST_EFFORT,
    'reliable': ReliabilityPolicy.RELIABLE,
}


@dataclass
class HostCounters:
    """What a plugin node has seen and done since it started."""

    received: int = 0  # messages on inputs that trigger runs
    kept: int = 0  # messages on inputs that are only kept (a map, a pose)
    lost_in_transport: int = 0  # messages the middleware reports lost before they arrived
    dropped_stale: int = 0
    dropped_no_budget: int = 0  # inputs not run: the grant could not pay the per-input price
    bad_input: int = 0
    runs: int = 0
    plugin_errors: int = 0
    published: int = 0
    telemetry_rejected: int = 0
    grants: int = 0
    steps_total: int = 0
    experiences_shared: int = 0  # experiences handed to memory (mailbox or topic)
    experience_errors: int = 0  # experience() raised or returned something unusable
    recalls: int = 0  # ctx['recall'] calls by the plugin
    recall_hits: int = 0  # ... that returned a record
    recalls_skipped: int = 0  # runs not offered a recall (memory's gate: no recent warm start)
    warm_starts: int = 0  # runs whose plugin says it used a recalled record
    memory_unavailable: int = 0  # recalls without a usable store (missing, damaged): cold


@dataclass
class HeldGrant:
    """The orchestrator grant a node holds: one cycle's account, when it came, the trust."""

    cycle: int
    budget: Budget
    received_at: float  # time.monotonic() of the newest message for this cycle
    trust_weight: float


@dataclass
class Inputs:
    """What one run reads: the port that triggered it and the newest message of every input.

    ``trigger`` is an input port's name, or ``'timer'`` for a run of ``run_period_s``;
    ``msgs`` maps each input port that has a value to its message (the triggering message for
    the triggering port).
    """

    trigger: str
    msgs: Dict[str, Any]
    received: float  # time.perf_counter() when the triggering message arrived
    stream: str = ''  # the stream (``streams`` parameter) it came on; '' without streams

    @property
    def msg(self) -> Any:
        """The triggering message (None for a timer run)."""
        return self.msgs.get(self.trigger)


@dataclass
class _Prepared:
    """One input decoded and ready to run: what the run reads and what its finish needs."""

    inputs: Inputs
    x0: Any
    ctx: Optional[Mapping[str, Any]]
    run_ctx: Optional[Mapping[str, Any]]
    header: Any
    asked: bool
    budget: Budget
    grant: Optional[HeldGrant]
    deadline: Optional[float]


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


def stream_topic(stream: str, topic: str) -> str:
    """Return the topic ``topic`` of the stream ``stream``: ``<stream>/<topic>`` (none: ``topic``).

    An absolute topic stays absolute (``/cam0/vision/mask`` for ``/vision/mask``); a relative
    one stays relative to the node's namespace (``cam0/mask``).
    """
    if not stream:
        return topic
    return ('/' if topic.startswith('/') else '') + stream + '/' + topic.lstrip('/')


def ros_home() -> str:
    """Return ``$ROS_HOME`` (``~/.ros`` when unset)."""
    return os.environ.get('ROS_HOME') or os.path.join(os.path.expanduser('~'), '.ros')


def memory_store_path(value: str = '') -> str:
    """Return the memory store's file for the ``memory_store`` parameter's ``value``.

    Empty: ``$ROS_HOME/sage_irp/memory.db``; a folder (existing, or written with a trailing
    ``/``): ``memory.db`` in it; anything else: that file.
    """
    value = os.path.expanduser(value or '')
    if not value:
        return os.path.join(ros_home(), 'sage_irp', 'memory.db')
    if value.endswith(os.sep) or os.path.isdir(value):
        return os.path.join(value, 'memory.db')
    return value


def message_class(msg_type: str):
    """Return the message class of ``'package/msg/Type'``."""
    package, kind, name = msg_type.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


def release_device_memory(device: str) -> None:
    """Return cached CUDA memory to the driver when on a CUDA device (no-op on cpu).

    Tensors are freed by reference counting when the plugin is dropped; a full ``gc.collect``
    here would cost about 80 ms per transition for nothing (the 100-cycle lifecycle test
    checks that no memory is left behind).
    """
    if device.startswith('cuda'):
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class IRPNodeHost(ManagedNode):
    """Base of every plugin node. Subclasses set ``plugin_name`` and implement the hooks.

    ``plugin_name`` names the node's entry in :mod:`sage_irp_ros.registry`, which gives the
    default node name, the input and output ports, and the devices the plugin supports. The
    effective device and precision of the loaded plugin are ``self.device`` and
    ``self.precision``; the output publishers are ``self.outputs[<port name>]``.
    """

    plugin_name: str = ''
    #: Runs in a row that had ATP but could not pay one step before the price is re-measured.
    STARVED_RUNS = 3
    #: Default of the ``default_atp`` parameter (ATP per run without a current grant).
    DEFAULT_ATP: float = DEFAULT_ATP

    def __init__(self, node_name: Optional[str] = None, **kwargs: Any):
        """Declare parameters; configure and activate at once unless ``autostart`` is false."""
        self.spec = registry.get(self.plugin_name)
        super().__init__(node_name or self.spec.node_name, **kwargs)
        self.counters = HostCounters()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: Deque[Inputs] = collections.deque()
        # the newest message per port, by stream: '' holds the shared ports (and every port
        # without streams), a stream's name its own triggering ports
        self._latest: Dict[str, Dict[str, Any]] = {}
        self._stopping = False
        self._cancel = threading.Event()
        self._busy = False
        self._last_halt = ''
        self._starved = 0
        self._grant: Optional[HeldGrant] = None
        self._worker: Optional[threading.Thread] = None
        self._subs: list = []
        self._triggers = {p.name: p.trigger for p in self.spec.inputs}
        self.streams: List[str] = []  # the ``streams`` parameter (configure)
        self._batch = 1  # inputs refined together: ``batch_max`` (configure)
        self._stream_outputs: Dict[str, Dict[str, Any]] = {}
        self._queue_depths: Dict[str, int] = {}
        self._run_timer = None
        self._pubs: list = []
        self.outputs: Dict[str, Any] = {}
        self.plugin: Optional[IRPPlugin] = None
        self.device, self.precision = 'cpu', 'fp32'
        self._halt_config = HaltConfig()
        self._priced_for: Optional[Tuple[str, str]] = None
        self.cost = StepCostMeter(initial_ms=1.0)
        self.entity_id = self.get_fully_qualified_name()
        #: The in-process mailbox experiences go to with ``memory: mailbox``.
        self.mailbox: Mailbox = default_mailbox()
        self.memory_mode = MEMORY_OFF
        self._recall_gate = None  # memory's RecallGate (configure)
        self._recall_min_similarity = None  # the plugin's recall_threshold (configure)
        self._experience_pub = None
        self._memory_lock = threading.Lock()
        self._reader = None  # read-only ExperienceStore for warm starts (cached)
        self._reader_inode: Optional[int] = None
        self._reader_retry_at = 0.0
        self._memory_warned = False
        self._declare_host_parameters()
        self._thermal = ThermalMonitor(self.get_parameter('thermal_root').value)
        self.declare_plugin_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        period = self.get_parameter('diagnostics_period_s').value
        self._diag_timer = self.create_timer(period, self._publish_diagnostics) \
            if period > 0 else None
        self.autostart()

    # ----------------------------------------------------------------- hooks for subclasses

    def declare_plugin_parameters(self) -> None:
        """Declare the plugin's own parameters (model path, class names, ...)."""

    def create_plugin(self) -> IRPPlugin:
        """Build the plugin on ``self.device`` at ``self.precision`` (called by configure)."""
        return self.spec.make_plugin(device=self.device, precision=self.precision)

    def load_file_parameter(self, name: str, default: str, load: Callable[[str], Any]) -> Any:
        """Load the file the parameter ``name`` names (``default`` when empty) with ``load``.

        A missing or unreadable file fails with one line naming the parameter and the path.
        """
        path = self.get_parameter(name).value or default
        if not os.path.isfile(path):
            raise ValueError(f'{name}: no such file {path!r}')
        try:
            return load(path)
        except Exception as exc:  # noqa: BLE001 - any loader error: say which parameter
            # The loader's own text can be long advice that does not apply (torch suggests
            # weights_only=False for a file that is simply not a checkpoint): name the error.
            raise ValueError(f'{name}: cannot load {path!r} ({type(exc).__name__}): not a '
                             'file this plugin can read') from None

    def decode(self, msg) -> Tuple[Any, Optional[Mapping[str, Any]]]:
        """Turn the input message into ``(x0, ctx)``; raise ``InputError`` when it is unusable.

        One-input plugins implement this; plugins with several inputs implement
        :meth:`decode_inputs` instead.
        """
        raise TypeError(f'{type(self).__name__} must override decode() or decode_inputs()')

    def decode_inputs(self, inputs: Inputs) -> Tuple[Any, Optional[Mapping[str, Any]]]:
        """Turn the messages of one run into ``(x0, ctx)``; default: ``decode(inputs.msg)``."""
        return self.decode(inputs.msg)

    def create_outputs(self) -> None:
        """Create extra publishers (the registry's output ports are created by the host)."""

    def publish_output(self, output: Any, header: Header, result, x0: Any) -> None:
        """Publish the refined output with the input's header (``x0``: the decoded input)."""

    def example_input(self) -> Optional[Tuple[Any, Optional[Mapping[str, Any]]]]:
        """Return an ``(x0, ctx)`` to calibrate the step cost at configure, or None."""
        return None

    def run_metadata(self, output: Any, result) -> Mapping[str, Any]:
        """Extra telemetry metadata of one run (task quality when the node knows it)."""
        return {}

    def take_input(self, port: str, msg) -> bool:
        """Handle a message of an input port in the node itself; True: the host queues no run.

        Called in the executor's thread for every message before the host keeps or queues it;
        the default takes none. A node whose input is not refined (the memory node stores
        experiences) takes it here and must return quickly.
        """
        return False

    def run_refinement(self, x0: Any, ctx: Optional[Mapping[str, Any]], *, budget: Budget,
                       deadline: Optional[float]) -> Optional[RefineResult]:
        """Run one refinement of ``x0`` (in the worker thread); None: nothing ran.

        The default is the core loop, :func:`sage_irp_ros.core.loop.refine`, with the node's
        halting configuration, cost meter and cancel event, and ``skip_unpaid``: an input whose
        grant cannot pay the whole per-input price (a zero grant: the plugin sits this cycle
        out) is not run, and is counted as ``dropped_no_budget``. A node whose run is more than
        one loop call (the memory node's sleep commits its result to a store) overrides it,
        calling the loop with the same arguments.
        """
        result = refine(self.plugin, x0, ctx, config=self._halt_config, budget=budget,
                        cost=self.cost, cancel=self._cancel, deadline=deadline,
                        skip_unpaid=True)
        if result is None:
            self._dropped_no_budget(budget, x0, ctx)
        return result

    def _dropped_no_budget(self, budget: Budget, x0: Any, ctx) -> None:
        with self._lock:
            self.counters.dropped_no_budget += 1
            n = self.counters.dropped_no_budget
        self.get_logger().info(
            f'input dropped: the grant ({budget.remaining:.2f} ATP left) cannot pay the '
            f'per-input price ({self.cost.per_input_ms:.2f} ATP); {n} so far',
            throttle_duration_sec=5.0)
        self._watch_price(None, budget, x0, ctx)

    def diagnostic_values(self) -> Mapping[str, Any]:
        """Extra key-values of the node's ``/diagnostics`` status (the node's own counters)."""
        return {}

    def header_of(self, msg) -> Header:
        """Return the input's header, or one stamped now for header-less messages."""
        header = getattr(msg, 'header', None)
        if isinstance(header, Header):
            return header
        return Header(stamp=self.get_clock().now().to_msg(), frame_id='')

    # ----------------------------------------------------------------------- parameters

    def _declare_halt_parameters(self, defaults: HaltConfig) -> None:
        """Declare eps, K, max_steps (first configure) with the plugin's own defaults."""
        p = self.declare_parameter
        if not self.has_parameter('eps'):
            p('eps', float(defaults.eps), descriptor(
                'Slope threshold: halt when the energy falls by less than eps * energy scale '
                'per step over the last K steps', float_range=(0.0, 1.0)))
        if not self.has_parameter('K'):
            p('K', int(defaults.K), descriptor('Window of the slope rule, steps',
                                                int_range=(1, 1000)))
        if not self.has_parameter('max_steps'):
            p('max_steps', int(defaults.max_steps), descriptor(
                'Hard cap of refinement steps', int_range=(0, 100000)))

    def _declare_host_parameters(self) -> None:
        p = self.declare_parameter
        p('deadline_ms', 0.0, descriptor(
            'Wall-clock deadline per input from its arrival, ms; 0 = none',
            float_range=(0.0, 3.6e6)))
        p('default_atp', float(type(self).DEFAULT_ATP), descriptor(
            'ATP for the steps of an input when no orchestrator grant is current (1 ATP = 1 '
            'ms of measured compute; the input\'s own price is paid on top, so no input is '
            'dropped without a grant); 0 = unlimited (max_steps still applies)',
            float_range=(0.0, 1e9)))
        p('grant_timeout_s', 0.3, descriptor(
            'A grant older than this is stale and the default budget applies (3 cycles of '
            'the orchestrator\'s default period: a dead orchestrator is noticed within it)',
            float_range=(0.01, 3600.0)))
        p('device', 'cpu', descriptor(
            f'Torch device: cpu, cuda, cuda:N (this plugin: {", ".join(self.spec.devices)})',
            read_only=True))
        p('precision', 'fp32', descriptor(
            f'Numeric precision: fp32 or fp16 (this plugin: {", ".join(self.spec.precisions)})',
            read_only=True))
        p('device_fallback', True, descriptor(
            'When the plugin or this machine cannot run the device or precision asked for: '
            'true = warn and run on cpu / fp32, false = configure fails', read_only=True))
        for port in self.spec.inputs:
            p(f'{port.name}_topic', port.topic, descriptor(
                f'Input topic ({port.msg_type}): {port.description}', read_only=True))
            p(f'{port.name}_qos_reliability',
              'best_effort' if port.qos == registry.QOS_SENSOR else 'reliable',
              descriptor('Input QoS reliability: best_effort or reliable (match the publisher)',
                         read_only=True))
            p(f'{port.name}_qos_depth', port.depth, descriptor(
                'Input QoS history depth (trigger each: also the most messages waiting)',
                read_only=True, int_range=(1, 1000)))
        for port in self.spec.outputs:
            p(f'{port.name}_topic', port.topic, descriptor(
                f'Output topic ({port.msg_type}): {port.description}', read_only=True))
        p('output_qos_depth', 5, descriptor('Output and telemetry QoS depth (reliable)',
                                             read_only=True, int_range=(1, 1000)))
        p('streams', [''], descriptor(
            'Several sources into one node (e.g. cameras): namespaces; each one\'s triggering '
            'inputs are read from <stream>/<input topic> and its outputs published on '
            '<stream>/<output topic>, with the trigger rule per stream. Empty = one stream, the '
            'topics as they are', read_only=True))
        p('batch_max', 1, descriptor(
            'Inputs waiting together (several streams) are refined together, up to this many: '
            'one batched step per round, each input halting alone and published as soon as it '
            'halts (1 = one at a time)', read_only=True, int_range=(1, 64)))
        p('preempt', False, descriptor(
            'A new triggering input cancels the run under way (halt reason manual) instead '
            'of waiting'))
        p('run_period_s', 0.0, descriptor(
            'Also run on a timer with the newest inputs every run_period_s, s; 0 = off',
            read_only=True, float_range=(0.0, 3600.0)))
        p('diagnostics_period_s', 1.0, descriptor(
            'Period of /diagnostics status, s; 0 = off', read_only=True,
            float_range=(0.0, 3600.0)))
        p('memory', MEMORY_OFF, descriptor(
            'Experience memory: off; mailbox (one process, sage_irp_all: experiences handed to '
            'the memory node by reference); topic (published on irp/experience for a memory '
            'node in another process). When on, runs may warm-start from the memory store',
            read_only=True))
        p('memory_store', '', descriptor(
            'The memory store (SQLite file, or a folder for memory.db) that warm starts read '
            'and the memory node writes; empty = $ROS_HOME/sage_irp/memory.db', read_only=True))
        p('thermal_root', DEFAULT_THERMAL_ROOT, descriptor(
            'Where the device\'s thermal zones are read for /diagnostics (a Jetson\'s '
            '/sys/class/thermal; none there: not reported)', read_only=True))
        p('recall_max_interval', 8, descriptor(
            'With memory on: after 3 inputs in a row without a warm start, look memory up on '
            'every 2nd, 4th, ... input, at most every this many (1 = every input); a warm '
            'start brings it back to every input', read_only=True, int_range=(1, 1000)))

    def _read_halt_config(self, overrides: Mapping[str, Any]) -> HaltConfig:
        def get(name):
            return overrides[name] if name in overrides else self.get_parameter(name).value
        return HaltConfig(eps=float(get('eps')), K=int(get('K')),
                          max_steps=int(get('max_steps')))

    def _on_set_parameters(self, params) -> SetParametersResult:
        overrides = {p.name: p.value for p in params}
        halting = ('eps', 'K', 'max_steps')
        if not set(halting) & set(overrides) or not all(map(self.has_parameter, halting)):
            return SetParametersResult(successful=True)  # being declared (configure)
        try:
            cfg = self._read_halt_config(overrides)
        except (TypeError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._halt_config = cfg
        return SetParametersResult(successful=True)

    def input_qos(self, port: str = 'input') -> QoSProfile:
        """Return an input's QoS from its parameters (latched ports: transient local)."""
        rel = self.get_parameter(f'{port}_qos_reliability').value
        if rel not in _RELIABILITY:
            raise ValueError(f'{port}_qos_reliability must be one of {sorted(_RELIABILITY)}, '
                             f'got {rel!r}')
        latched = self.spec.port(port).qos == registry.QOS_LATCHED
        return QoSProfile(history=HistoryPolicy.KEEP_LAST,
                          depth=self.get_parameter(f'{port}_qos_depth').value,
                          reliability=_RELIABILITY[rel],
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                          else DurabilityPolicy.VOLATILE)

    def output_qos(self) -> QoSProfile:
        """Return reliable, shallow output QoS (best-effort and reliable readers both match)."""
        return QoSProfile(depth=self.get_parameter('output_qos_depth').value,
                          reliability=ReliabilityPolicy.RELIABLE)

    def create_output_publisher(self, msg_type, topic: str):
        """Create an output publisher that warns when a subscriber's QoS is incompatible."""
        pub = self.create_publisher(
            msg_type, topic, self.output_qos(),
            event_callbacks=PublisherEventCallbacks(incompatible_qos=self._on_incompatible_qos))
        self._pubs.append(pub)
        return pub

    def _on_incompatible_qos(self, event) -> None:
        policy = getattr(event, 'last_policy_kind', '?')
        self.get_logger().warning(
            f'incompatible QoS with a peer (policy {getattr(policy, "name", policy)}): '
            'messages will not flow; set the input\'s _qos_reliability to match the publisher')

    # ---------------------------------------------------------------------- lifecycle

    def configure_node(self) -> None:
        """Pick the device, load the plugin, declare its halting, price a step, publishers."""
        asked = (self.get_parameter('device').value, self.get_parameter('precision').value)
        device, precision, notes = registry.resolve_device(self.spec, *asked)
        if notes and not self.get_parameter('device_fallback').value:
            raise ValueError('; '.join(notes) + ' (device_fallback is false)')
        for note in notes:
            self.get_logger().warning(note)
        self.device, self.precision = device, precision
        for port in self.spec.inputs:
            self.input_qos(port.name)  # refuse a bad reliability value here, clearly
        mode = self.get_parameter('memory').value
        if mode not in MEMORY_MODES:
            raise ValueError(f'memory must be one of {", ".join(MEMORY_MODES)}, got {mode!r}')
        self.memory_mode = mode
        from sage_irp_ros.plugins.memory.experience import RecallGate, recall_threshold
        self._recall_gate = RecallGate(
            max_interval=self.get_parameter('recall_max_interval').value)
        self.plugin = self.create_plugin()
        self._recall_min_similarity = recall_threshold(self.plugin)
        self._declare_halt_parameters(self.plugin.halt_config())
        self._halt_config = self._read_halt_config({})
        if self._priced_for != (device, precision):
            self.cost = StepCostMeter(initial_ms=1.0)
            self._calibrate()
            self._priced_for = (device, precision)
        depth = self.get_parameter('output_qos_depth').value
        self._telemetry_pub = self.create_publisher(IRPTelemetry, TELEMETRY_TOPIC, depth)
        self._telemetry_json_pub = self.create_publisher(String, TELEMETRY_JSON_TOPIC, depth)
        self._pubs += [self._telemetry_pub, self._telemetry_json_pub]
        if self.memory_mode == MEMORY_TOPIC:
            self._experience_pub = self.create_publisher(
                Experience, EXPERIENCE_TOPIC, QoSProfile(
                    depth=max(depth, 50), reliability=ReliabilityPolicy.RELIABLE))
            self._pubs.append(self._experience_pub)
        # A node that runs its own refinement (audio, memory) takes one input at a time, and
        # its state (the audio node's voice-activity segmenter) is of one source.
        own = (type(self).run_refinement is not IRPNodeHost.run_refinement
               or type(self)._process is not IRPNodeHost._process)
        self.streams = [s.strip('/') for s in self.get_parameter('streams').value if s.strip('/')]
        if len(set(self.streams)) != len(self.streams):
            raise ValueError(f'streams must be distinct, got {self.streams}')
        if own and self.streams:
            raise ValueError(f'{type(self).__name__} serves one stream (its runs keep state of '
                             f'one source): run one node per stream, got streams {self.streams}')
        self._stream_outputs = {}
        for stream in self.streams or ['']:
            self._stream_outputs[stream] = {
                port.name: self.create_output_publisher(
                    message_class(port.msg_type),
                    stream_topic(stream, self.get_parameter(f'{port.name}_topic').value))
                for port in self.spec.outputs}
        self.outputs = dict(self._stream_outputs[(self.streams or [''])[0]])
        self._batch = 1 if own else self.get_parameter('batch_max').value
        self.create_outputs()
        self.get_logger().info(
            f'{type(self.plugin).__name__} ({self.plugin.kind}, {self.plugin.version}) '
            f'configured on {device}/{precision}, step cost {self.cost.per_step_ms:.3f} ms')

    def activate_node(self) -> None:
        """Subscribe to grants and inputs, start the worker (and the run timer)."""
        with self._lock:
            self._stopping = False
            self._queue.clear()
        self._subs.append(self.create_subscription(BudgetGrant, BUDGET_TOPIC, self._on_grant,
                                                   10))
        described = []
        self._queue_depths = {p.name: self.get_parameter(f'{p.name}_qos_depth').value
                              for p in self.spec.inputs}
        for port in self.spec.inputs:
            topic = self.get_parameter(f'{port.name}_topic').value
            qos = self.input_qos(port.name)
            per_stream = self.streams and port.trigger != registry.TRIGGER_NONE
            for stream in (self.streams if per_stream else ['']):
                self._subs.append(self.create_subscription(
                    message_class(port.msg_type), stream_topic(stream, topic),
                    lambda msg, name=port.name, st=stream: self._on_input(name, msg, st), qos,
                    event_callbacks=SubscriptionEventCallbacks(
                        incompatible_qos=self._on_incompatible_qos,
                        message_lost=lambda info, name=port.name: self._on_lost(name, info))))
                described.append(f'{self.resolve_topic_name(stream_topic(stream, topic))} '
                                 f'[{port.msg_type}, {qos.reliability.name.lower()}, depth '
                                 f'{qos.depth}, trigger {port.trigger}]')
        period = self.get_parameter('run_period_s').value
        if period > 0:
            self._run_timer = self.create_timer(period, self._on_run_timer)
        self._worker = threading.Thread(target=self._work, name=f'{self.get_name()}-irp',
                                        daemon=True)
        self._worker.start()
        self.get_logger().info('ready (active): inputs ' + '; '.join(described) + ', telemetry '
                               f'{self.resolve_topic_name(TELEMETRY_TOPIC)}')

    def deactivate_node(self) -> None:
        """Stop subscriptions, the timer and the worker (a run under way halts ``manual``)."""
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._run_timer is not None:
            self.destroy_timer(self._run_timer)
            self._run_timer = None
        worker = self._worker
        if worker is not None:
            with self._lock:
                self._stopping = True
                self._cancel.set()
                self._queue.clear()
                self._wake.notify_all()
            if worker.is_alive() and threading.current_thread() is not worker:
                worker.join(timeout=5.0)
            self._worker = None
        with self._lock:
            self._latest.clear()
            self._grant = None
        release_device_memory(self.device)

    def cleanup_node(self) -> None:
        """Destroy the publishers and drop the plugin (and its GPU memory)."""
        for pub in self._pubs:
            self.destroy_publisher(pub)
        self._pubs = []
        self._experience_pub = None
        self.outputs = {}
        self.plugin = None
        self._close_reader()
        release_device_memory(self.device)

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
        timeout = self.get_parameter('grant_timeout_s').value
        with self._lock:
            self.counters.grants += 1
            cur = self._grant
            if cur is not None and msg.cycle == cur.cycle:
                cur.budget.grant(msg.atp_granted, msg.step_cap, deadline)  # top-up, mid-run
                cur.received_at, cur.trust_weight = now, msg.trust_weight
            elif cur is None or msg.cycle > cur.cycle or now - cur.received_at > timeout:
                # A newer cycle; or, once the held grant is stale, any cycle: an orchestrator
                # that numbers its cycles lower (another one, after the newer one died) is
                # followed at once instead of being ignored until it catches up.
                self._grant = HeldGrant(msg.cycle, Budget(msg.atp_granted, msg.step_cap,
                                                          deadline), now, msg.trust_weight)

    def _current_grant(self) -> Optional[HeldGrant]:
        """Return the grant held now, or None when none is (or it is older than the timeout)."""
        timeout = self.get_parameter('grant_timeout_s').value
        with self._lock:
            g = self._grant
        return g if g is not None and time.monotonic() - g.received_at <= timeout else None

    def current_grant_budget(self) -> Optional[Budget]:
        """Return the account of the grant held now, or None when no grant is current."""
        g = self._current_grant()
        return None if g is None else g.budget

    def _budget_for_run(self) -> Tuple[Budget, Optional[HeldGrant]]:
        """Return the account of the current grant (or a default one) and the grant."""
        g = self._current_grant()
        if g is not None:
            return g.budget, g
        # default_atp pays the run's steps; the input's own price is paid on top, so an input
        # whose encoding costs more than default_atp (a slow or loaded machine) is still run
        # (on fewer steps) instead of dropped: only an orchestrator's grant makes it sit out.
        atp = self.get_parameter('default_atp').value
        return Budget(atp + self.cost.per_input_ms if atp > 0 else math.inf), None

    # -------------------------------------------------------------------------- inputs

    def _on_input(self, port: str, msg, stream: str = '') -> None:
        if self.take_input(port, msg):
            return
        trigger = self._triggers[port]
        now = time.perf_counter()
        with self._lock:
            self._latest.setdefault(stream, {})[port] = msg
            if trigger == registry.TRIGGER_NONE:
                self.counters.kept += 1
                return
            self.counters.received += 1
            mine = [i for i in self._queue if i.trigger == port and i.stream == stream]
            if trigger == registry.TRIGGER_NEWEST:
                for i in mine:
                    self._queue.remove(i)
                self.counters.dropped_stale += len(mine)
            elif len(mine) >= self._queue_depths[port]:
                self._queue.remove(mine[0])
                self.counters.dropped_stale += 1
            self._queue.append(Inputs(port, self._snapshot(stream), now, stream))
            if self._busy and self.get_parameter('preempt').value:
                self._cancel.set()
            self._wake.notify()

    def _on_lost(self, port: str, info) -> None:
        """Count what the middleware lost before it reached this node (QoS message-lost)."""
        n = int(getattr(info, 'total_count_change', 0) or 0)
        if n <= 0:
            return
        with self._lock:
            self.counters.lost_in_transport += n
        self.get_logger().warning(
            f'{n} message(s) lost in transport on {self.get_parameter(f"{port}_topic").value} '
            f'({self.counters.lost_in_transport} so far)', throttle_duration_sec=5.0)

    def _snapshot(self, stream: str) -> Dict[str, Any]:
        """Return the newest message of every port a run of ``stream`` reads (hold the lock)."""
        return {**self._latest.get('', {}), **self._latest.get(stream, {})}

    def _on_run_timer(self) -> None:
        """Queue a timer run per stream (one without streams), unless one is still waiting.

        A stream runs on the timer once it has had an input of its own; its run reads its own
        inputs and the shared ones and publishes on its topics.
        """
        now = time.perf_counter()
        with self._lock:
            waiting = {i.stream for i in self._queue if i.trigger == TIMER_TRIGGER}
            for stream in (self.streams or ['']):
                if stream in waiting or (self.streams and stream not in self._latest):
                    continue  # its previous timer run has not started yet / nothing of its own
                self._queue.append(Inputs(TIMER_TRIGGER, self._snapshot(stream), now, stream))
            self._wake.notify()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                n = min(len(self._queue), self._batch)
                batch = [self._queue.popleft() for _ in range(n)]
                self._busy = True
                self._cancel.clear()
            try:
                if len(batch) == 1:
                    self._process(batch[0])
                else:
                    self._process_batch(batch)
            except Exception as exc:  # noqa: BLE001 - the node must outlive any one input
                self._processing_failed(exc)
            finally:
                with self._lock:
                    self._busy = False

    def _processing_failed(self, exc: BaseException) -> None:
        with self._lock:
            self.counters.plugin_errors += 1
        self.get_logger().error(f'processing an input failed: {exc!r}')

    def _bad_input(self, inputs: Inputs, text: str) -> None:
        with self._lock:
            self.counters.bad_input += 1
        topic = (stream_topic(inputs.stream, self.get_parameter(f'{inputs.trigger}_topic').value)
                 if inputs.trigger != TIMER_TRIGGER else 'the run timer')
        self.get_logger().error(f'bad input on {topic}: {text}')

    def _process(self, inputs: Inputs) -> None:
        prep = self._prepare_run(inputs)
        if prep is None:
            return
        try:
            result = self.run_refinement(prep.x0, prep.run_ctx, budget=prep.budget,
                                         deadline=prep.deadline)
        except ValueError as exc:  # init_state refused the input
            self._bad_input(inputs, str(exc))
            return
        if result is not None:
            self._finish_run(prep, result)

    def _process_batch(self, batch: List[Inputs]) -> None:
        """Refine several inputs together (``batch_max``); each is finished as it halts."""
        preps = [p for p in (self._prepare_run(i) for i in batch) if p is not None]
        if not preps:
            return

        def done(i: int, result: RefineResult) -> None:
            if result.state is None and result.trace.halt_reason == HALT_ERROR:
                self._bad_input(preps[i].inputs, result.trace.error or 'init_state failed')
                return
            try:
                self._finish_run(preps[i], result)
            except Exception as exc:  # noqa: BLE001 - one input's failure must not end the rest
                self._processing_failed(exc)
        results = refine_batch(self.plugin, [p.x0 for p in preps], [p.run_ctx for p in preps],
                               config=self._halt_config, budgets=[p.budget for p in preps],
                               cost=self.cost, cancel=self._cancel,
                               deadlines=[p.deadline for p in preps], on_result=done,
                               skip_unpaid=True)
        for prep, result in zip(preps, results, strict=True):
            if result is None:
                self._dropped_no_budget(prep.budget, prep.x0, prep.ctx)

    def _prepare_run(self, inputs: Inputs) -> Optional[_Prepared]:
        """Decode an input and gather what its run reads; None when it cannot run."""
        missing = [p.name for p in self.spec.inputs if p.required and p.name not in inputs.msgs]
        if missing:
            if inputs.trigger != TIMER_TRIGGER:
                self._bad_input(inputs, 'no message yet on the required input(s) ' + ', '.join(
                    f'{m} ({self.get_parameter(f"{m}_topic").value})' for m in missing))
            return None
        if self.plugin is None:
            return None
        try:
            x0, ctx = self.decode_inputs(inputs)
        except InputError as exc:
            self._bad_input(inputs, str(exc))
            return None
        header = self.header_of(inputs.msg)
        run_ctx = ctx
        asked = (self.memory_mode != MEMORY_OFF and self._recall_gate is not None
                 and self._recall_gate.ask())
        if asked:  # a warm start may be asked for in init_state
            run_ctx = dict(ctx or {})
            run_ctx['recall'] = self._recall
        elif self.memory_mode != MEMORY_OFF:
            with self._lock:
                self.counters.recalls_skipped += 1
        budget, grant = self._budget_for_run()
        dl_ms = self.get_parameter('deadline_ms').value
        deadline = inputs.received + dl_ms * 1e-3 if dl_ms > 0 else None
        return _Prepared(inputs, x0, ctx, run_ctx, header, asked, budget, grant, deadline)

    def _finish_run(self, prep: _Prepared, result: RefineResult) -> None:
        """Count, publish (on the input's stream), report telemetry and share the experience."""
        plugin, inputs, header = self.plugin, prep.inputs, prep.header
        x0, ctx, budget, grant, asked = prep.x0, prep.ctx, prep.budget, prep.grant, prep.asked
        trace = result.trace
        self._watch_price(trace, budget, x0, ctx)
        with self._lock:
            self.counters.runs += 1
            self.counters.steps_total += trace.steps
            self._last_halt = trace.halt_reason
            dropped = self.counters.dropped_stale
            no_budget = self.counters.dropped_no_budget
        if trace.halt_reason == HALT_ERROR:
            with self._lock:
                self.counters.plugin_errors += 1
            self.get_logger().error(f'refinement ended in error: {trace.error}')
        metadata = {'input_stamp': header.stamp.sec + header.stamp.nanosec * 1e-9,
                    'trigger': inputs.trigger, 'dropped_no_budget': no_budget}
        if inputs.stream:
            metadata['stream'] = inputs.stream
        warm = self._warm_start_metadata(result.state)
        if warm is not None:
            metadata['warm_start'] = warm
        if asked:
            self._recall_gate.observe(warm)
        if result.output is not None:
            try:
                if self.streams:  # the worker alone publishes: the input's stream's topics
                    self.outputs = self._stream_outputs.get(
                        inputs.stream, self._stream_outputs[self.streams[0]])
                self.publish_output(result.output, header, result, x0)
                metadata.update(self.run_metadata(result.output, result))
                with self._lock:
                    self.counters.published += 1
            except Exception as exc:  # noqa: BLE001 - count, log, keep going
                with self._lock:
                    self.counters.plugin_errors += 1
                self.get_logger().error(f'publishing the output failed: {exc!r}')
        run = RunInfo(cycle=None if grant is None else grant.cycle,
                      trust_weight=None if grant is None else grant.trust_weight,
                      atp_per_step=self.cost.per_step_ms,
                      atp_per_input=self.cost.per_input_ms, dropped_inputs=dropped,
                      model_version=plugin.version, device=self.device,
                      precision=self.precision)
        self.publish_telemetry(make_record(
            plugin.kind, trace, entity_id=self.entity_id, metadata=metadata,
            memory_mb=process_memory_mb(), run=run), header)
        if (self.memory_mode != MEMORY_OFF and result.output is not None
                and trace.halt_reason != HALT_ERROR):
            self._share_experience(plugin, result, header)

    # ------------------------------------------------------------------------ memory

    def _warm_start_metadata(self, state) -> Optional[Dict[str, Any]]:
        """Return the run's ``state.meta['warm_start']`` as telemetry metadata (None: none)."""
        meta = getattr(state, 'meta', None)
        ws = meta.get('warm_start') if isinstance(meta, Mapping) else None
        if not isinstance(ws, Mapping):
            return None
        out: Dict[str, Any] = {'used': bool(ws.get('used', False))}
        for name, kind in (('similarity', float), ('source', str), ('id', int)):
            value = ws.get(name)
            if value is None:
                continue
            try:
                value = kind(value)
            except (TypeError, ValueError):
                continue
            if kind is float:
                value = round(value, 6) if math.isfinite(value) else None
            out[name] = value
        if out['used']:
            with self._lock:
                self.counters.warm_starts += 1
        return out

    def _share_experience(self, plugin: IRPPlugin, result: RefineResult, header: Header) -> None:
        """Hand the plugin's ``experience()`` of a finished run to memory (mailbox or topic)."""
        from sage_irp_ros.plugins.memory.experience import run_experience
        try:
            item = run_experience(plugin, result, self.spec.name)
            if item is None:
                return
            now = self.get_clock().now()
            item.update(entity_id=self.entity_id, stamp=now.nanoseconds * 1e-9,
                        frame_id=header.frame_id)
            if self.memory_mode == MEMORY_MAILBOX:
                self.mailbox.post(EXPERIENCE_CHANNEL, item)
            elif self._experience_pub is not None:
                self._experience_pub.publish(experience_to_msg(
                    item, Header(stamp=now.to_msg(), frame_id=header.frame_id)))
            else:
                return
        except Exception as exc:  # noqa: BLE001 - memory must never cost the node a run
            with self._lock:
                self.counters.experience_errors += 1
            self.get_logger().error(f'experience not shared: {exc}',
                                    throttle_duration_sec=5.0)
            return
        with self._lock:
            self.counters.experiences_shared += 1

    def _recall(self, key) -> Any:
        """``ctx['recall']``: the memory store's nearest record of this plugin to ``key``, or None.

        Never raises: a missing or damaged store, or a key the store cannot search by, is
        logged (once per outage), counted, and the run starts cold.
        """
        with self._lock:
            self.counters.recalls += 1
        store = self._memory_reader()
        if store is None:
            return None
        try:
            hits = store.nearest(self.spec.name, key, k=1, touch=False,
                                 min_similarity=self._recall_min_similarity)
        except ValueError as exc:  # the plugin's key (NaN, all zeros, not 1-D)
            with self._lock:
                self.counters.experience_errors += 1
            self.get_logger().error(f'recall refused the key: {exc}', throttle_duration_sec=5.0)
            return None
        except Exception as exc:  # noqa: BLE001 - a store damaged under us: run cold
            self._memory_failed(f'reading it failed ({type(exc).__name__}: {exc})')
            self._close_reader()
            return None
        if not hits:
            return None
        with self._lock:
            self.counters.recall_hits += 1
        return hits[0]

    def _memory_reader(self):
        """Return the cached read-only store (reopened when the memory node replaced the file)."""
        from sage_irp_ros.plugins.memory.store import ExperienceStore
        path = memory_store_path(self.get_parameter('memory_store').value)
        with self._memory_lock:
            if self._reader is not None:
                try:
                    inode = os.stat(path).st_ino
                except OSError:
                    inode = None
                if inode == self._reader_inode:
                    return self._reader
                self._reader.close()  # set aside or removed: read the new file
                self._reader = None
            if time.monotonic() < self._reader_retry_at:
                with self._lock:
                    self.counters.memory_unavailable += 1
                return None
            try:
                store = ExperienceStore(path, readonly=True, check=False)
                inode = os.stat(path).st_ino
            except Exception as exc:  # noqa: BLE001 - missing, empty, damaged, locked
                self._reader_retry_at = time.monotonic() + RECALL_RETRY_S
                unavailable = str(exc)
            else:
                self._reader, self._reader_inode = store, inode
                if self._memory_warned:
                    self.get_logger().info(f'memory store {path} readable again: warm starts on')
                self._memory_warned = False
                return store
        self._memory_failed(unavailable)
        return None

    def _memory_failed(self, text: str) -> None:
        with self._lock:
            self.counters.memory_unavailable += 1
        with self._memory_lock:
            warned, self._memory_warned = self._memory_warned, True
        if not warned:
            self.get_logger().warning(f'memory store unavailable: {text}; runs start cold '
                                      f'(trying again every {RECALL_RETRY_S:.0f} s)')

    def _close_reader(self) -> None:
        with self._memory_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _watch_price(self, trace, budget: Budget, x0, ctx) -> None:
        """Re-measure the step price when grants keep failing to pay for a single step.

        The price only learns from steps that run: one measured too high (say, at a start-up
        while other nodes loaded on the same cores) would starve the plugin for good. After
        ``STARVED_RUNS`` runs in a row that could not pay one step on a limited budget, a few
        real steps on the current input re-measure the prices. An input dropped on a grant that
        could not pay it (``trace`` None), a grant of zero among them, counts too: the
        orchestrator grants nothing to a plugin whose input and one step cost more than it can
        give, which is what a price measured far too high looks like from there.
        """
        starved = not budget.unlimited and (
            trace is None  # not run: the grant could not pay the input (see run_refinement)
            or (trace.steps == 0 and trace.halt_reason == 'budget'))
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
        state = self.lifecycle_state
        level, message = DiagnosticStatus.OK, state
        if c['plugin_errors'] or c['telemetry_rejected']:
            level, message = DiagnosticStatus.WARN, 'plugin errors or rejected telemetry'
        with self._lock:
            g = self._grant
        stale = g is not None and (time.monotonic() - g.received_at
                                   > self.get_parameter('grant_timeout_s').value)
        if stale and level == DiagnosticStatus.OK and state == 'active':
            level, message = DiagnosticStatus.WARN, (
                'no current grant from the orchestrator: runs use the default budget')
        thermal = self._thermal.read()  # a few small files, at most once a second
        if thermal is not None:
            c['thermal'] = thermal.describe()
            c['thermal_max_c'] = round(thermal.max_c, 1)
            c['throttling'] = bool(thermal.throttling)
            if thermal.throttling and level == DiagnosticStatus.OK:
                level, message = DiagnosticStatus.WARN, f'device {thermal.describe()}'

        c['grant'] = 'none yet' if g is None else ('stale' if stale else f'cycle {g.cycle}')
        if self.last_transition_error:
            level, message = DiagnosticStatus.ERROR, self.last_transition_error
        status = DiagnosticStatus(level=level, name=f'{self.entity_id}{HOST_STATUS_SUFFIX}',
                                  message=message, hardware_id=self.spec.kind)
        c['atp_per_step_ms'] = round(self.cost.per_step_ms, 6)
        c['atp_per_input_ms'] = round(self.cost.per_input_ms, 6)
        c['last_halt_reason'] = last
        c['lifecycle_state'] = state
        c['device'] = self.device
        c['precision'] = self.precision
        c['memory'] = self.memory_mode
        c.update(self.diagnostic_values())
        status.values = [KeyValue(key=k, value=str(v)) for k, v in c.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)


class StopOnSignal:
    """Turn the first SIGINT or SIGTERM into a stop request and ignore any that follow.

    Under ``ros2 launch`` a Ctrl-C reaches a node twice (launch forwards it, and the terminal
    sends it to the whole process group); a second signal must not interrupt the clean shutdown
    the first one started. Python runs the handler between executor waits (``spin`` below waits
    at most ``period`` s at a time), so no signal ever lands inside rclpy's C code.
    """

    def __init__(self):
        """Install the handler for SIGINT and SIGTERM (main thread only)."""
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.ignore_further()

    @staticmethod
    def ignore_further() -> None:
        """Ignore SIGINT and SIGTERM from now on (tidying up is not to be interrupted)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    def spin(self, executor, context, period: float = 0.1) -> None:
        """Serve ``executor`` until a signal or the context's shutdown."""
        while context.ok() and not self.requested:
            executor.spin_once(timeout_sec=period)


def init_without_signal_handlers(args=None) -> None:
    """``rclpy.init`` without rclpy's own signal handlers (:class:`StopOnSignal` handles them)."""
    try:
        from rclpy.signals import SignalHandlerOptions
    except ImportError:  # older rclpy: its handlers stay
        rclpy.init(args=args)
        return
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def run_node(node_factory: Callable[[], Node], args=None, threads: int = 1) -> int:
    """Run a node until SIGINT, SIGTERM or external shutdown; clean up; return an exit code.

    A node that cannot start (its model does not load, a bad parameter) logs why and the
    process exits with 1. ``threads`` > 1 serves it with a multi-threaded executor (a node
    whose service waits for its worker).
    """
    init_without_signal_handlers(args)
    stop = StopOnSignal()
    node = None
    code = 0
    try:
        try:
            node = node_factory()
        except StartError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad parameter: one clear line, exit 1
            raise StartError(f'could not start: {exc}') from None
        executor = (SingleThreadedExecutor() if threads <= 1
                    else MultiThreadedExecutor(num_threads=threads))
        executor.add_node(node)
        stop.spin(executor, rclpy.get_default_context())
    except StartError as exc:
        rclpy.logging.get_logger('sage_irp_ros').error(str(exc))
        code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.ignore_further()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code
