"""Mailbox vs rclpy topic in one process: hand-off latency and copies (issue #14).

Two payloads: (a) a vision latent, a float32 torch tensor (1, 16, 32, 32), and (b) a 640x480
rgb8 camera frame (uint8 numpy array). Each is handed over N times (one at a time: the next
only after the previous arrived) through

- the mailbox with a callback subscriber (the memory node's way: called in the poster's
  thread),
- the mailbox polled by another thread (a consumer blocked in ``poll``),
- an rclpy topic between two nodes of this process (publisher and subscription, the default
  DDS, reliable, depth 10, the subscriber's executor spinning in another thread), with the
  package's own conversions: the latent as ``sage_irp_ros/Experience`` (``experience_to_msg``
  / ``experience_from_msg``, then ``torch.from_numpy``), the frame as ``sensor_msgs/Image``
  (``rgb_to_image`` / ``image_to_rgb``).

Latency: from the sender holding the object to the receiver holding a usable one (tensor /
array), median and p95 over N; for the topic also the transport alone (publish to callback).
Copies: measured where Python can see them (is the received object the sent one; does a
buffer share memory with the one before it), and, for the middleware, the transport time
expressed in copies of the payload (``transport_memcpy_equivalents``: (transport of the payload
- transport of a tiny message) / one ``memcpy`` of the payload) since its copies are not
visible from Python.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python bench/mailbox_bench.py [--n 300] [--out
out/bench/mailbox.json]`` (``tools/env.sh`` or ``AMENT_PREFIX_PATH=.venv``).
"""

import argparse
import json
import os
import platform
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('ROS_DOMAIN_ID', str(150 + os.getpid() % 80))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

import rclpy  # noqa: E402
import torch  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sage_irp_ros.core.mailbox import Mailbox  # noqa: E402
from sage_irp_ros.msg import Experience  # noqa: E402
from sage_irp_ros.ros.conversions import (  # noqa: E402
    experience_from_msg,
    experience_to_msg,
    image_to_rgb,
    rgb_to_image,
)

WARMUP = 20


def stats_us(ns):
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {'median_us': round(float(np.median(a)), 2),
            'p95_us': round(float(np.percentile(a, 95)), 2),
            'min_us': round(float(a.min()), 2), 'n': int(a.size)}


def buffer_of(obj):
    """A numpy view of an object's data (tensor, array, bytes, array.array)."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, np.ndarray):
        return obj
    return np.frombuffer(obj, dtype=np.uint8)


def shares(a, b):
    return bool(np.shares_memory(buffer_of(a).view(np.uint8).reshape(-1),
                                 buffer_of(b).view(np.uint8).reshape(-1)))


def memcpy_ns(payload, n):
    src = buffer_of(payload).view(np.uint8).reshape(-1)
    dst = np.empty_like(src)
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        np.copyto(dst, src)
        out.append(time.perf_counter_ns() - t)
    return float(np.median(out))


# ----------------------------------------------------------------------------- mailbox

def mailbox_callback(make, n):
    box = Mailbox()
    got = {}

    def on(obj):
        got['t'] = time.perf_counter_ns()
        got['obj'] = obj
    box.subscribe('bench', on)
    lat, same = [], True
    for i in range(n + WARMUP):
        obj = make()
        t0 = time.perf_counter_ns()
        box.post('bench', obj)
        if i >= WARMUP:
            lat.append(got['t'] - t0)
        same &= got['obj'] is obj and shares(got['obj'], obj)
    st = box.stats()['bench']
    return {**stats_us(lat), 'same_object': same, 'copies': 0 if same else None,
            'counters': {k: st[k] for k in ('posted', 'delivered', 'dropped')}}


def mailbox_poll(make, n):
    box = Mailbox()
    ch = box.channel('bench', depth=4)
    received = []
    done = threading.Event()

    def consumer():
        while not done.is_set():
            for obj in ch.poll(timeout=0.5):
                received.append((time.perf_counter_ns(), obj))

    th = threading.Thread(target=consumer, daemon=True)
    th.start()
    lat, same = [], True
    for i in range(n + WARMUP):
        obj = make()
        k = len(received)
        t0 = time.perf_counter_ns()
        ch.post(obj)
        while len(received) == k:
            time.sleep(0)
        t1, got = received[k]
        if i >= WARMUP:
            lat.append(t1 - t0)
        same &= got is obj and shares(got, obj)
    done.set()
    th.join()
    st = ch.stats()
    return {**stats_us(lat), 'same_object': same, 'copies': 0 if same else None,
            'counters': {k: st[k] for k in ('posted', 'delivered', 'dropped')}}


# ----------------------------------------------------------------------------- topic

class TopicPair:
    """A publisher node and a subscriber node in this process, the subscriber spun in a thread."""

    def __init__(self, context, msg_type, topic, decode):
        self.pub_node = rclpy.create_node('bench_pub', context=context)
        self.sub_node = rclpy.create_node('bench_sub', context=context)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.pub_node.create_publisher(msg_type, topic, qos)
        self.decode = decode
        self.box = []
        self.sub = self.sub_node.create_subscription(msg_type, topic, self._on, qos)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.sub_node)
        self.stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        end = time.monotonic() + 20
        while self.pub.get_subscription_count() == 0 and time.monotonic() < end:
            time.sleep(0.01)
        if self.pub.get_subscription_count() == 0:
            raise RuntimeError('publisher and subscription did not match')

    def _spin(self):
        while not self.stop:
            self.executor.spin_once(timeout_sec=0.05)

    def _on(self, msg):
        t_in = time.perf_counter_ns()
        out = self.decode(msg)
        self.box.append((t_in, time.perf_counter_ns(), msg, out))

    def close(self):
        self.stop = True
        self.thread.join()
        self.executor.shutdown()
        self.pub_node.destroy_node()
        self.sub_node.destroy_node()


def topic_run(context, msg_type, make, encode, decode, n, topic):
    pair = TopicPair(context, msg_type, topic, decode)
    total, transport, encode_ns, decode_ns = [], [], [], []
    seen = {}
    try:
        for i in range(n + WARMUP):
            obj = make()
            k = len(pair.box)
            t0 = time.perf_counter_ns()
            msg = encode(obj)
            t1 = time.perf_counter_ns()
            pair.pub.publish(msg)
            end = time.monotonic() + 5
            while len(pair.box) == k:
                if time.monotonic() > end:
                    raise RuntimeError('a message was not delivered within 5 s')
                time.sleep(0)
            t_in, t_out, got_msg, out = pair.box[k]
            if i >= WARMUP:
                total.append(t_out - t0)
                transport.append(t_in - t1)
                encode_ns.append(t1 - t0)
                decode_ns.append(t_out - t_in)
            if i == n + WARMUP - 1:
                seen = {'obj': obj, 'msg': msg, 'got_msg': got_msg, 'out': out}
    finally:
        pair.close()
    return total, transport, encode_ns, decode_ns, seen


def latent_case(context, n):
    def make():
        return torch.randn(1, 16, 32, 32)

    header = Header(frame_id='bench')
    key = np.ones(64, np.float32)

    def encode(t):
        return experience_to_msg({'plugin': 'vision', 'key': key, 'latent': t,
                                  'summary': {}, 'steps': 1, 'energy': 0.0}, header)

    def decode(m):
        return torch.from_numpy(experience_from_msg(m)['latent'])

    def tiny():
        return torch.zeros(1)

    total, transport, enc, dec, seen = topic_run(context, Experience, make, encode, decode, n,
                                                 'bench/latent')
    _, transport_tiny, _, _, _ = topic_run(context, Experience, tiny, encode, decode, n,
                                           'bench/latent_tiny')
    obj, msg, got_msg, out = seen['obj'], seen['msg'], seen['got_msg'], seen['out']
    visible = {
        'encode (tensor -> message field)': not shares(msg.latent, obj),
        'middleware (published message -> received message)': not shares(got_msg.latent,
                                                                           msg.latent),
        'decode (message field -> tensor)': not shares(out, got_msg.latent),
    }
    assert torch.equal(out, obj)
    return make(), total, transport, enc, dec, transport_tiny, visible, 'sage_irp_ros/Experience'


def frame_case(context, n):
    rng = np.random.default_rng(0)
    frame0 = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)

    def make():
        return frame0.copy()

    header = Header(frame_id='camera')

    def encode(a):
        return rgb_to_image(a, header)

    def decode(m):
        return image_to_rgb(m)

    def tiny():
        return np.zeros((1, 1, 3), np.uint8)

    total, transport, enc, dec, seen = topic_run(context, Image, make, encode, decode, n,
                                                 'bench/frame')
    _, transport_tiny, _, _, _ = topic_run(context, Image, tiny, encode, decode, n,
                                           'bench/frame_tiny')
    obj, msg, got_msg, out = seen['obj'], seen['msg'], seen['got_msg'], seen['out']
    visible = {
        'encode (array -> message field)': not shares(msg.data, obj),
        'middleware (published message -> received message)': not shares(got_msg.data,
                                                                           msg.data),
        'decode (message field -> array)': not shares(out, got_msg.data),
    }
    assert np.array_equal(out, obj)
    return make(), total, transport, enc, dec, transport_tiny, visible, 'sensor_msgs/Image'


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=300, help='hand-offs per path (>= 200)')
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'bench', 'mailbox.json'))
    opts = ap.parse_args()
    torch.set_num_threads(1)
    context = rclpy.Context()
    rclpy.init(context=context)
    result = {
        'command': 'OMP_NUM_THREADS=1 .venv/bin/python bench/mailbox_bench.py'
                   + (f' --n {opts.n}' if opts.n != 300 else ''),
        'machine': {'python': platform.python_version(), 'numpy': np.__version__,
                    'torch': torch.__version__, 'cpu': platform.processor() or platform.machine(),
                    'cores': os.cpu_count(),
                    'rmw': rclpy.utilities.get_rmw_implementation_identifier()},
        'n': opts.n, 'warmup': WARMUP, 'cases': {}}
    try:
        for name, case in (('latent', latent_case), ('frame', frame_case)):
            payload, total, transport, enc, dec, tiny, visible, msg_type = case(context, opts.n)

            def make(p=payload):
                return p.clone() if isinstance(p, torch.Tensor) else p.copy()
            nbytes = buffer_of(payload).nbytes
            mc = memcpy_ns(payload, 200)
            tr, tr_tiny = np.median(transport), np.median(tiny)
            result['cases'][name] = {
                'payload': {'type': type(payload).__name__, 'shape': list(payload.shape),
                            'dtype': str(payload.dtype).replace('torch.', ''),
                            'bytes': int(nbytes)},
                'memcpy_us': round(mc / 1e3, 2),
                'mailbox_callback': mailbox_callback(make, opts.n),
                'mailbox_poll_thread': mailbox_poll(make, opts.n),
                'topic': {
                    'message': msg_type, **stats_us(total),
                    'transport': stats_us(transport), 'encode': stats_us(enc),
                    'decode': stats_us(dec), 'transport_tiny_message': stats_us(tiny),
                    'copies_python_visible': int(sum(visible.values())),
                    'copy_at': visible,
                    'transport_memcpy_equivalents': round(float((tr - tr_tiny) / mc), 1),
                },
            }
            print(name, json.dumps(result['cases'][name]), flush=True)
    finally:
        rclpy.try_shutdown(context=context)
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {opts.out}')


if __name__ == '__main__':
    main()
