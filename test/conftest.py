"""Shared test set-up: ROS isolation, an rclpy context per test, node processes."""

import os
import sys
import tempfile
import threading
import time

import pytest
from hypothesis import settings

from sage_irp_ros.tools.procs import ChildProcess, free_log_path

# CI runs the property tests derandomized (the same examples every run: a red CI is a real
# regression, not a new random draw); locally they draw fresh examples.
settings.register_profile('ci', derandomize=True)
if os.environ.get('CI'):
    settings.load_profile('ci')

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

# Isolate this test process's DDS traffic before rclpy is imported anywhere: a domain of its
# own, localhost discovery only, logs in a temporary folder; ROS_HOME (the default trust file
# and memory store live under it) in a temporary folder too, not the user's ~/.ros.
os.environ['ROS_DOMAIN_ID'] = str(1 + os.getpid() % 100)
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_LOG_DIR', tempfile.mkdtemp(prefix='sage_irp_roslog_'))
os.environ.setdefault('ROS_HOME', tempfile.mkdtemp(prefix='sage_irp_roshome_'))
os.environ.pop('ROS_LOCALHOST_ONLY', None)


@pytest.fixture(scope='module')
def one_torch_thread():
    """Run a module's model tests on one torch thread (as the benchmarks do), then restore."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def wait_for(predicate, timeout=10.0, period=0.02):
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    end = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < end:
        time.sleep(period)
        value = predicate()
    return value


def diag_value(diags, key):
    """Return the newest value of ``key`` in a list of received DiagnosticArray messages."""
    for arr in reversed(diags):
        for st in arr.status:
            for kv in st.values:
                if kv.key == key:
                    return kv.value
    return None


class RosHarness:
    """An rclpy context with one node spun in a background thread."""

    def __init__(self, name='test_harness'):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - shutdown races end the thread
            pass

    def add_node(self, node):
        self.executor.add_node(node)
        return node

    def collect(self, msg_type, topic, qos=10):
        """Subscribe to ``topic`` and return the list the messages land in."""
        box = []
        self.node.create_subscription(msg_type, topic, box.append, qos)
        return box

    def close(self):
        self.context.try_shutdown()
        self._thread.join(timeout=5)
        self.executor.shutdown()


@pytest.fixture
def ros():
    h = RosHarness()
    yield h
    h.close()


class NodeProcess(ChildProcess):
    """A plugin node in its own process, stopped with SIGINT like ``ros2 launch`` does.

    The process harness is the demo's (:class:`sage_irp_ros.tools.procs.ChildProcess`); this
    adds the node's command line (``python -m module``, parameters, node name) and a log file
    in ``tmp_path`` that never overwrites another test's.
    """

    def __init__(self, module, params=None, name=None, tmp_path=None, args=()):
        argv = [sys.executable, '-m', module, *args, '--ros-args']
        for k, v in (params or {}).items():
            argv += ['-p', f'{k}:={v}']
        if name:
            argv += ['-r', f'__node:={name}']
        folder = str(tmp_path or tempfile.mkdtemp())
        stem = (name or module.rsplit('.', 1)[-1]).strip('/').replace('/', '_')
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        super().__init__(stem, argv, log_path=free_log_path(folder, stem), cwd=ROOT, env=env)

    def stop(self, timeout=10.0):
        """SIGINT the node; return its exit code (kill it if it hangs)."""
        return super().stop(timeout)


@pytest.fixture
def node_process(tmp_path):
    procs = []

    def start(module, params=None, name=None, args=()):
        p = NodeProcess(module, params, name, tmp_path, args)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()
