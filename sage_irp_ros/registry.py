"""The plugin registry: the one place that names the plugins of sage_irp_ros.

Every plugin is one :class:`PluginSpec`: its name, kind, where its IRP plugin and its node class
live, its inputs and outputs (with QoS and what triggers a run), the devices and precisions it
supports, and how the demo and the benchmarks use it. The all-in-one executable, the launch
file, the demo, ``make bench`` and the tests read this registry; nothing else lists plugins.

Adding a plugin (``docs/ADDING_A_PLUGIN.md``): its folder ``sage_irp_ros/plugins/<name>/`` (the
ROS-free plugin, model, training, evaluation, demo hooks, and its thin ``node.py``), one entry
in :data:`BUILTIN` below, and an executable shim in ``scripts/``. A plugin that lives in another
Python package registers itself without editing this file: name its module in the environment
variable ``SAGE_IRP_PLUGIN_MODULES`` (comma-separated) or in the ``sage_irp_ros.plugins`` entry
point group; the module defines ``PLUGIN_SPECS``, a sequence of :class:`PluginSpec`.

This module is ROS-free and light: classes and functions are named by ``'module:attribute'``
strings and imported only when used (:func:`load`), so the launch file can read the registry
without importing torch or a model.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

#: Environment variable naming extra modules that define ``PLUGIN_SPECS``.
ENV_MODULES = 'SAGE_IRP_PLUGIN_MODULES'
#: Entry point group of plugins packaged elsewhere.
ENTRY_POINT_GROUP = 'sage_irp_ros.plugins'

# Input QoS kinds.
QOS_SENSOR = 'sensor'      # best effort, volatile (camera, microphone drivers)
QOS_RELIABLE = 'reliable'  # reliable, volatile
QOS_LATCHED = 'latched'    # reliable, transient local: a late joiner gets the last message (map)
QOS_KINDS = (QOS_SENSOR, QOS_RELIABLE, QOS_LATCHED)

# What an input does when a message arrives.
TRIGGER_NEWEST = 'newest'  # triggers a run; only the newest waits while the worker is busy
TRIGGER_EACH = 'each'      # triggers a run per message, in order (a bounded queue)
TRIGGER_NONE = 'none'      # kept (its last value) and read by runs others trigger; no run
TRIGGERS = (TRIGGER_NEWEST, TRIGGER_EACH, TRIGGER_NONE)


@dataclass(frozen=True)
class Port:
    """One input or output topic of a plugin node.

    Attributes
    ----------
    name:
        The port's name; the node's parameters for it are ``<name>_topic``, and for inputs
        ``<name>_qos_reliability`` and ``<name>_qos_depth``. The single input of a one-input
        plugin is called ``input`` (parameters ``input_topic``, ...).
    msg_type:
        The ROS type as ``'package/msg/Type'`` (resolved by the node host).
    topic:
        Default topic, relative to the node's namespace.
    qos:
        ``sensor``, ``reliable`` or ``latched`` (inputs; outputs are reliable).
    trigger:
        For inputs: ``newest``, ``each`` or ``none`` (see the ``TRIGGER_*`` constants).
    depth:
        Default QoS history depth (for ``each``: also the most messages waiting).
    required:
        A run starts only when every required input has a value.
    description:
        One line for the parameter descriptors and the docs.

    """

    name: str
    msg_type: str
    topic: str
    qos: str = QOS_RELIABLE
    trigger: str = TRIGGER_NEWEST
    depth: int = 10
    required: bool = True
    description: str = ''

    def __post_init__(self):
        """Check the QoS kind, trigger and message type form."""
        if self.qos not in QOS_KINDS:
            raise ValueError(f'port {self.name}: qos must be one of {QOS_KINDS}, got {self.qos!r}')
        if self.trigger not in TRIGGERS:
            raise ValueError(f'port {self.name}: trigger must be one of {TRIGGERS}, '
                             f'got {self.trigger!r}')
        if self.msg_type.count('/') != 2:
            raise ValueError(f'port {self.name}: msg_type must read package/msg/Type, '
                             f'got {self.msg_type!r}')
        if self.depth < 1:
            raise ValueError(f'port {self.name}: depth must be >= 1')


@dataclass(frozen=True)
class DemoSpec:
    """How ``make demo`` replays, records, scores and plots a plugin.

    Attributes
    ----------
    replay_topics:
        Topics of the sample bag this plugin's node consumes (absolute, as in the bag).
    record_topics:
        Output topics the demo records (absolute, as ``config/sage_irp.yaml`` names them).
    truth_key:
        Key of the list of this plugin's inputs in the bag's ground truth (``<bag>_truth.json``).
    score:
        ``'module:function'``: ``score(recorded, truth) -> {'answered': int, 'quality':
        {'metric': str, 'value': float, 'n': int, ...}}``, where ``recorded`` maps each topic
        to ``[(receive_ns, msg), ...]``.
    plot_steps:
        ``'module:function'``: ``plot_steps(ax, records, truth)`` draws steps per input on a
        matplotlib axis from the plugin's telemetry records; None: a bar per run.
    answer_topics:
        The replayed topics whose every message triggers a run and so must be answered (the
        goals); None: all of ``replay_topics``. Topics only kept by the node (a latched map, a
        start pose) are replayed but not counted as inputs.
    stream:
        The inputs are chunks of a stream (microphone audio): the node keeps every chunk and
        answers a segment of many (an utterance) when it ends, so an input is accounted for
        when it is received, and the answers are counted by ``score``; the node reports
        ``in_speech`` on ``/diagnostics`` until its last segment is answered.
    params:
        ``(name, value)`` parameters the demo sets on the node beyond the config file.

    """

    replay_topics: Tuple[str, ...]
    record_topics: Tuple[str, ...]
    truth_key: str
    score: str
    plot_steps: Optional[str] = None
    answer_topics: Optional[Tuple[str, ...]] = None
    stream: bool = False
    params: Tuple[Tuple[str, str], ...] = ()

    @property
    def input_topics(self) -> Tuple[str, ...]:
        """The replayed topics whose every message asks for an answer (a run)."""
        return self.replay_topics if self.answer_topics is None else self.answer_topics


@dataclass(frozen=True)
class PluginSpec:
    """Everything the rest of the package needs to know about one plugin.

    Attributes
    ----------
    name:
        Registry key and launch name (``plugins:=vision,language``).
    kind:
        The plugin kind of telemetry (``core.PLUGIN_KINDS``).
    description:
        One line.
    node:
        ``'module:Class'`` of the node class (an ``IRPNodeHost`` subclass).
    executable:
        The executable in ``lib/sage_irp_ros`` (``ros2 run sage_irp_ros <executable>``).
    node_name:
        Default node name; also the node's section of ``config/sage_irp.yaml``.
    plugin:
        ``'module:function'`` building the plugin with its shipped weights:
        ``factory(device='cpu', precision='fp32') -> IRPPlugin``.
    inputs, outputs:
        The node's topics (:class:`Port`).
    devices:
        Device types the plugin runs on (``cpu``, ``cuda``); another one falls back to cpu
        with a warning (or fails, with ``device_fallback: false``).
    precisions:
        Precisions it supports (``fp32``, ``fp16``); ``fp16`` also needs a CUDA device.
    demo:
        How ``make demo`` uses it; None: not in the demo.
    bench:
        ``make bench`` command of its own benchmark (script and arguments, run with the venv's
        python from the repository root); None: none.
    workload:
        ``'module:function'`` giving the orchestrator benchmark's workload:
        ``workload(cycles) -> (plugin, HaltConfig, items, metric)``; None: not in it.
    fixture:
        True for test fixtures (not robot features: left out of the demo and defaults).
    priority:
        Factor of the plugin's trust in the orchestrator's allocation (> 0, default 1): below
        1 it yields ATP to the others (memory's sleep, 0.25); its floor is still guaranteed.

    """

    name: str
    kind: str
    description: str
    node: str
    executable: str
    node_name: str
    plugin: str
    inputs: Tuple[Port, ...]
    outputs: Tuple[Port, ...] = ()
    devices: Tuple[str, ...] = ('cpu',)
    precisions: Tuple[str, ...] = ('fp32',)
    demo: Optional[DemoSpec] = None
    bench: Optional[Tuple[str, ...]] = None
    workload: Optional[str] = None
    fixture: bool = False
    priority: float = 1.0

    def __post_init__(self):
        """Check names: unique port names, at least one triggering input, known devices."""
        if not self.name.isidentifier():
            raise ValueError(f'plugin name must be an identifier, got {self.name!r}')
        names = [p.name for p in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f'plugin {self.name}: port names repeat: {names}')
        if not self.inputs:
            raise ValueError(f'plugin {self.name}: at least one input is needed')
        bad = set(self.devices) - {'cpu', 'cuda'}
        if bad or 'cpu' not in self.devices:
            raise ValueError(f'plugin {self.name}: devices must include cpu and be cpu/cuda')
        if set(self.precisions) - {'fp32', 'fp16'} or 'fp32' not in self.precisions:
            raise ValueError(f'plugin {self.name}: precisions must include fp32')
        if not (self.priority > 0 and self.priority < float('inf')):
            raise ValueError(f'plugin {self.name}: priority must be finite and > 0')

    def port(self, name: str) -> Port:
        """Return the input or output port called ``name``."""
        for p in self.inputs + self.outputs:
            if p.name == name:
                return p
        raise KeyError(f'plugin {self.name} has no port {name!r}')

    def node_class(self):
        """Import and return the node class (imports rclpy and the model's modules)."""
        return load(self.node)

    def make_plugin(self, device: str = 'cpu', precision: str = 'fp32'):
        """Build the plugin with its shipped weights (no ROS)."""
        return load(self.plugin)(device=device, precision=precision)


def load(target: str):
    """Import ``'module:attribute'`` (the attribute may be dotted) and return it."""
    module, _, attr = target.partition(':')
    if not module or not attr:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    obj = importlib.import_module(module)
    for part in attr.split('.'):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------ the entries

_IMAGE = 'sensor_msgs/msg/Image'
_STRING = 'std_msgs/msg/String'
_FLOATS = 'std_msgs/msg/Float32MultiArray'

BUILTIN: Tuple[PluginSpec, ...] = (
    PluginSpec(
        name='vision', kind='vision',
        description='camera frames segmented by latent refinement (class mask, overlay)',
        node='sage_irp_ros.plugins.vision.node:VisionIRPNode',
        executable='vision_irp_node', node_name='vision_irp_node',
        plugin='sage_irp_ros.plugins.vision.plugin:load_default',
        inputs=(Port('input', _IMAGE, 'image', qos=QOS_SENSOR, depth=5,
                     description='camera image (rgb8, bgr8, mono8, rgba8, bgra8; any size)'),),
        outputs=(Port('output', _IMAGE, 'mask', description='mono8 class mask, input size'),
                 Port('overlay', _IMAGE, 'overlay',
                      description='rgb8 colour overlay (published only while subscribed)'),
                 Port('confidence', 'sage_irp_ros/msg/FrameConfidence', 'confidence',
                      description="the frame's confidence and unknown flag")),
        devices=('cpu', 'cuda'), precisions=('fp32', 'fp16'),
        demo=DemoSpec(replay_topics=('/camera/image_raw',),
                      record_topics=('/vision/mask', '/vision/overlay'), truth_key='frames',
                      score='sage_irp_ros.plugins.vision.demo:score',
                      plot_steps='sage_irp_ros.plugins.vision.demo:plot_steps'),
        bench=('bench/vision_bench.py', '--n', '200'),
        workload='sage_irp_ros.plugins.vision.demo:workload'),
    PluginSpec(
        name='language', kind='language',
        description='masked utterances repaired by iterative unmasking (text, meaning latent)',
        node='sage_irp_ros.plugins.language.node:LanguageIRPNode',
        executable='language_irp_node', node_name='language_irp_node',
        plugin='sage_irp_ros.plugins.language.plugin:load_default',
        inputs=(Port('input', _STRING, 'text_in',
                     description='utterance with [MASK] for each lost word'),),
        outputs=(Port('output', _STRING, 'text_repaired', description='repaired text'),
                 Port('meaning', _FLOATS, 'text_meaning',
                      description='meaning latent (L2-normalised)')),
        devices=('cpu', 'cuda'), precisions=('fp32', 'fp16'),
        demo=DemoSpec(replay_topics=('/speech/text',),
                      record_topics=('/language/text_repaired', '/language/meaning'),
                      truth_key='utterances',
                      score='sage_irp_ros.plugins.language.demo:score'),
        bench=('bench/language_bench.py',),
        workload='sage_irp_ros.plugins.language.demo:workload'),
    PluginSpec(
        name='fixture', kind='custom',
        description='test fixture: smooths Float32MultiArray signals (noisy variant with '
                    'noise > 0)',
        node='sage_irp_ros.plugins.fixture.node:FixtureIRPNode',
        executable='fixture_irp_node', node_name='fixture_irp_node',
        plugin='sage_irp_ros.plugins.fixture:make_plugin',
        inputs=(Port('input', _FLOATS, 'input', description='signal to smooth'),),
        outputs=(Port('output', _FLOATS, 'output', description='smoothed signal'),),
        workload='sage_irp_ros.plugins.fixture:workload',
        fixture=True),
    PluginSpec(
        name='control', kind='control',
        description='paths on an occupancy grid refined until feasible (nav_msgs/Path, status, '
                    'markers)',
        node='sage_irp_ros.plugins.control.node:ControlIRPNode',
        executable='control_irp_node', node_name='control_irp_node',
        plugin='sage_irp_ros.plugins.control.plugin:load_default',
        inputs=(Port('map', 'nav_msgs/msg/OccupancyGrid', 'map', qos=QOS_LATCHED,
                     trigger=TRIGGER_NONE, depth=1,
                     description='occupancy grid (latched, as map_server publishes it)'),
                Port('start', 'geometry_msgs/msg/PoseStamped', 'start_pose',
                     trigger=TRIGGER_NONE, depth=1, required=False,
                     description='start pose in the map frame (start_source pose)'),
                Port('odom', 'nav_msgs/msg/Odometry', 'odom', trigger=TRIGGER_NONE, depth=1,
                     required=False,
                     description='start from odometry in the map frame (start_source odometry)'),
                Port('input', 'geometry_msgs/msg/PoseStamped', 'goal_pose', depth=1,
                     description='the goal: a pose in the map frame; each goal triggers a '
                                 'run')),
        outputs=(Port('output', 'nav_msgs/msg/Path', 'plan',
                      description='best path of the run, map frame'),
                 Port('status', 'sage_irp_ros/msg/PathStatus', 'plan_status',
                      description='feasible, clearance, length, curvature, steps; refusals'),
                 Port('markers', 'visualization_msgs/msg/MarkerArray', 'plan_markers',
                      description='rviz markers of the path (and iterates); only while '
                                  'subscribed')),
        devices=('cpu', 'cuda'), precisions=('fp32',),
        demo=DemoSpec(replay_topics=('/map', '/start_pose', '/goal_pose'),
                      answer_topics=('/goal_pose',),
                      record_topics=('/control/plan', '/control/plan_status',
                                     '/control/plan_markers'),
                      truth_key='control_goals',
                      score='sage_irp_ros.plugins.control.demo:score',
                      plot_steps='sage_irp_ros.plugins.control.demo:plot_steps'),
        bench=('bench/control_bench.py',)),
    PluginSpec(
        name='audio', kind='audio',
        description='microphone speech enhanced by mask refinement, recognised (pocketsphinx); '
                    'low-confidence words masked for the language node',
        node='sage_irp_ros.plugins.audio.node:AudioIRPNode',
        executable='audio_irp_node', node_name='audio_irp_node',
        plugin='sage_irp_ros.plugins.audio.plugin:load_default',
        inputs=(Port('input', 'std_msgs/msg/Int16MultiArray', 'audio/raw', qos=QOS_SENSOR,
                     trigger=TRIGGER_EACH, depth=100, required=False,
                     description='microphone chunks, interleaved int16 at the sample_rate and '
                                 'channels parameters'),
                Port('stamped', 'sage_irp_ros/msg/AudioChunk', 'audio/stamped', qos=QOS_SENSOR,
                     trigger=TRIGGER_EACH, depth=100, required=False,
                     description='microphone chunks with their capture time, rate, channels '
                                 'and encoding')),
        outputs=(Port('output', 'sage_irp_ros/msg/Transcript', 'speech/transcript',
                      description='words with confidence and timing, enhancement steps'),
                 Port('text', _STRING, 'speech/transcript_text', description='the transcript'),
                 Port('partial', 'sage_irp_ros/msg/Transcript', 'speech/partial',
                      description='what has been said so far while an utterance goes on '
                                  '(partial_interval_s > 0)'),
                 Port('masked', _STRING, 'speech/text',
                      description='the transcript, low-confidence words as [MASK] (the '
                                  'language node\'s input)')),
        devices=('cpu', 'cuda'), precisions=('fp32', 'fp16'),
        # In the replay demo the transcripts stay apart from the bag's own masked texts (the
        # language node's input); python -m sage_irp_ros.plugins.audio.demo shows the repairs.
        demo=DemoSpec(replay_topics=('/audio/raw',),
                      record_topics=('/speech/transcript', '/speech/heard'),
                      truth_key='audio.transcript',
                      score='sage_irp_ros.plugins.audio.demo:score', stream=True,
                      params=(('masked_topic', '/speech/heard'),)),
        bench=('bench/audio_bench.py',)),
    PluginSpec(
        name='memory', kind='memory',
        description='experiences of the other plugins stored (SQLite), consolidated while idle '
                    '(sleep, a refinement), recalled for their warm starts',
        node='sage_irp_ros.plugins.memory.node:MemoryIRPNode',
        executable='memory_irp_node', node_name='memory_irp_node',
        plugin='sage_irp_ros.plugins.memory.sleep:make_plugin',
        inputs=(Port('input', 'sage_irp_ros/msg/Experience', 'irp/experience',
                     trigger=TRIGGER_EACH, depth=100, required=False,
                     description='experiences of plugin nodes in other processes (memory: '
                                 'topic); in one process they come through the mailbox'),),
        bench=('bench/memory_bench.py',),
        priority=0.25),
)

_extra: Dict[str, PluginSpec] = {}


def register(spec: PluginSpec, replace: bool = False) -> PluginSpec:
    """Add ``spec`` to the registry (a plugin from another package, or a test's)."""
    if not isinstance(spec, PluginSpec):
        raise TypeError(f'expected a PluginSpec, got {type(spec).__name__}')
    if not replace and spec.name in _all(load_extra=False):
        raise ValueError(f'plugin {spec.name!r} is already registered')
    _extra[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a plugin added with :func:`register` (tests)."""
    _extra.pop(name, None)


_loaded_modules: set = set()


def _load_extra_modules() -> None:
    names = [m.strip() for m in os.environ.get(ENV_MODULES, '').split(',') if m.strip()]
    try:
        from importlib.metadata import entry_points
        eps = entry_points()
        group = (eps.select(group=ENTRY_POINT_GROUP) if hasattr(eps, 'select')
                 else eps.get(ENTRY_POINT_GROUP, ()))
        names += [ep.value.partition(':')[0] for ep in group]
    except Exception:  # noqa: BLE001 - broken metadata must not hide the built-in plugins
        pass
    for name in names:
        if name in _loaded_modules:
            continue
        _loaded_modules.add(name)
        module = importlib.import_module(name)
        for spec in getattr(module, 'PLUGIN_SPECS', ()):
            if spec.name not in _extra:
                register(spec)


def _all(load_extra: bool = True) -> Dict[str, PluginSpec]:
    if load_extra:
        _load_extra_modules()
    out = {s.name: s for s in BUILTIN}
    out.update(_extra)
    return out


def specs(include_fixtures: bool = True) -> List[PluginSpec]:
    """Return every registered plugin, built-in ones first."""
    return [s for s in _all().values() if include_fixtures or not s.fixture]


def names(include_fixtures: bool = True) -> List[str]:
    """Return the names of every registered plugin."""
    return [s.name for s in specs(include_fixtures)]


def get(name: str) -> PluginSpec:
    """Return the plugin called ``name``; a clear error names the known ones."""
    table = _all()
    if name not in table:
        raise KeyError(f'unknown plugin {name!r}; registered: {", ".join(sorted(table))}')
    return table[name]


def kind_priorities() -> Dict[str, float]:
    """Return ``{kind: priority}`` of the plugins whose priority is not 1 (the orchestrator's)."""
    out: Dict[str, float] = {}
    for s in specs():
        if s.priority != 1.0:
            out.setdefault(s.kind, s.priority)
    return out


def parse_list(text: str) -> List[str]:
    """Parse ``'vision, language'`` into names, checking each (duplicates removed)."""
    out: List[str] = []
    for n in (p.strip() for p in text.split(',')):
        if n and n not in out:
            get(n)
            out.append(n)
    return out


def resolve_device(spec: PluginSpec, device: str, precision: str,
                   cuda_available: Optional[bool] = None) -> Tuple[str, str, List[str]]:
    """Return the device and precision ``spec`` will run at, and why they differ if they do.

    ``device`` is ``cpu``, ``cuda`` or ``cuda:N``; ``precision`` ``fp32`` or ``fp16``. A device
    the plugin does not support, CUDA when none is available, or a precision the plugin or the
    device cannot run (fp16 needs CUDA) falls back to ``cpu`` / ``fp32``; each fallback comes
    with a sentence saying so. Unknown values raise ``ValueError``.
    """
    dev_type = device.split(':', 1)[0]
    if dev_type not in ('cpu', 'cuda') or (dev_type == 'cpu' and device != 'cpu'):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev_type == 'cuda' and ':' in device and not device.split(':', 1)[1].isdigit():
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if precision not in ('fp32', 'fp16'):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    notes: List[str] = []
    if dev_type == 'cuda':
        if 'cuda' not in spec.devices:
            notes.append(f'the {spec.name} plugin runs on cpu only; {device} ignored')
            device = 'cpu'
        else:
            if cuda_available is None:
                cuda_available = _cuda_available(device)
            if not cuda_available:
                notes.append(f'{device} requested but no CUDA device is available; '
                             'running on cpu')
                device = 'cpu'
    if precision == 'fp16':
        if 'fp16' not in spec.precisions:
            notes.append(f'the {spec.name} plugin runs in fp32 only; fp16 ignored')
            precision = 'fp32'
        elif device == 'cpu':
            notes.append('fp16 needs a CUDA device; running in fp32 on cpu')
            precision = 'fp32'
    return device, precision, notes


def _cuda_available(device: str) -> bool:
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    index = int(device.split(':', 1)[1]) if ':' in device else 0
    return index < torch.cuda.device_count()

