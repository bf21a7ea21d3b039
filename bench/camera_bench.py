"""Camera path of ``vision_irp_node`` as a robot runs it (issue #15): masks/s and latency.

Three processes, as on a robot: a publisher sends rgb8 ``sensor_msgs/Image`` frames at a fixed
rate (sensor-data QoS, the header stamped at publication), ``vision_irp_node`` segments them
(no orchestrator: ``default_atp: 0``, unlimited runs), and this process subscribes to the mask
and measures masks/s out and latency (header stamp to receipt, one clock) p50/p95/max, and the
node process's CPU % from ``/proc/<pid>/stat``. Each size runs for ``--seconds`` after a warm-up.

Environment: what the README gives (``tools/env.sh``: AMENT_PREFIX_PATH=.venv and the shipped
Fast DDS profile ``config/fastdds_camera.xml`` unless a profile is already set), a private
``ROS_DOMAIN_ID``, and what ``--env NAME=VALUE`` adds (recorded in the output). ``--no-profile``
leaves the profile out (the middleware's default transport, as before issue #15's fix).

Writes (merged into the file when it exists, other keys kept) ``out/bench/reliability.json``:
``camera_fps_640x480``, ``camera_latency_p50_ms_640x480``, ``camera_latency_p95_ms_640x480``,
``camera_latency_max_ms_640x480``, ``camera_cpu_pct_640x480``, ``camera_frames_in_640x480``,
and the same for ``64x64``, plus ``camera_bench`` (how it was measured).

    OMP_NUM_THREADS=1 AMENT_PREFIX_PATH=$PWD/.venv .venv/bin/python bench/camera_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'out', 'bench', 'reliability.json')
sys.path.insert(0, ROOT)
from sage_irp_ros.transport import PROFILE_VARS, apply_camera_profile  # noqa: E402

NODE = 'sage_irp_ros.plugins.vision.node'
TOPIC_IN, TOPIC_MASK = '/bench/image_raw', '/bench/mask'


def cpu_name() -> str:
    """The CPU's model name and the number of cores this process may use."""
    name = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    name = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return f'{name}, {len(os.sched_getaffinity(0))} cores'


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (``/proc/<pid>/stat``)."""
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def frames(width: int, height: int, n: int = 8) -> list:
    """``n`` scenes of the vision task, scaled (nearest) to width x height."""
    from sage_irp_ros.plugins.vision.scenes import held_out
    imgs = held_out('hard', n, task=_task())[0]
    ys = (np.arange(height) * imgs.shape[1] // height)
    xs = (np.arange(width) * imgs.shape[2] // width)
    return [np.ascontiguousarray(im[ys][:, xs]) for im in imgs]


def _task() -> str:
    from sage_irp_ros.plugins.vision.plugin import DEFAULT_WEIGHTS
    with open(os.path.splitext(DEFAULT_WEIGHTS)[0] + '.json', encoding='utf-8') as f:
        return json.load(f)['config'].get('task', 'shapes')


def publisher(width: int, height: int, rate: float, seconds: float) -> int:
    """Publish rgb8 frames at ``rate`` Hz for ``seconds``; print how many were sent."""
    import array

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node('camera_bench_publisher')
    pub = node.create_publisher(Image, TOPIC_IN, qos_profile_sensor_data)
    msgs = []
    for im in frames(width, height):
        m = Image(height=height, width=width, encoding='rgb8', step=width * 3)
        m.header.frame_id = 'camera'
        m.data = array.array('B', im.tobytes())
        msgs.append(m)
    deadline = time.monotonic() + 10.0  # wait for the node's subscription
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    period, sent = 1.0 / rate, 0
    t0 = time.monotonic()
    while True:
        t_next = t0 + sent * period
        if t_next - t0 >= seconds:
            break
        time.sleep(max(0.0, t_next - time.monotonic()))
        m = msgs[sent % len(msgs)]
        m.header.stamp = node.get_clock().now().to_msg()
        pub.publish(m)
        sent += 1
    print(json.dumps({'sent': sent}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def measure(args, env) -> dict:
    """Start the node, then for each size a publisher; collect the masks. Return the figures."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    rclpy.init()
    sub_node = rclpy.create_node('camera_bench_subscriber')
    got = []

    def on_mask(msg):
        now = time.time_ns()
        got.append((now - (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)) * 1e-6)

    sub_node.create_subscription(Image, TOPIC_MASK, on_mask, 50)
    ex = SingleThreadedExecutor()
    ex.add_node(sub_node)
    node_cmd = [sys.executable, '-m', NODE, '--ros-args', '-p', f'input_topic:={TOPIC_IN}',
                '-p', f'output_topic:={TOPIC_MASK}', '-p', 'default_atp:=0.0',
                '-p', 'overlay_topic:=/bench/overlay', '-p', 'confidence_topic:=/bench/confidence']
    node = subprocess.Popen(node_cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pub_env = dict(env)
    if args.publisher_without_profile:  # a camera driver started outside env.sh / the launch
        for var in PROFILE_VARS:
            pub_env.pop(var, None)
    results = {}
    try:
        deadline = time.monotonic() + 60.0
        while sub_node.count_publishers(TOPIC_MASK) == 0:
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('vision node did not start: ' + node.stderr.read()[-2000:])
            ex.spin_once(timeout_sec=0.1)
        for w, h in args.sizes:
            total = args.warmup + args.seconds
            pub = subprocess.Popen([sys.executable, __file__, '--publisher', f'{w}x{h}',
                                    '--rate', str(args.rate), '--seconds', str(total)],
                                   env=pub_env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            t_start = time.monotonic()
            while not got and time.monotonic() - t_start < 30.0:  # first mask: publisher up
                if pub.poll() is not None:
                    raise RuntimeError(f'publisher for {w}x{h} exited ({pub.returncode})')
                ex.spin_once(timeout_sec=0.05)
            t_first = time.monotonic()
            while time.monotonic() - t_first < args.warmup:
                ex.spin_once(timeout_sec=0.05)
            got.clear()
            c0, t0 = cpu_seconds(node.pid), time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                ex.spin_once(timeout_sec=0.05)
            c1, t1 = cpu_seconds(node.pid), time.monotonic()
            lat = np.array(got)
            out, _ = pub.communicate(timeout=60)
            sent = json.loads(out.strip().splitlines()[-1])['sent'] if out.strip() else 0
            key = f'{w}x{h}'
            results[key] = {
                'fps': round(len(lat) / (t1 - t0), 2),
                'latency_p50_ms': round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                'latency_p95_ms': round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
                'latency_max_ms': round(float(lat.max()), 1) if len(lat) else None,
                'cpu_pct': round(100.0 * (c1 - c0) / (t1 - t0), 1),
                'frames_sent': sent, 'masks_measured': int(len(lat)),
            }
            print(key, results[key], flush=True)
            # drain what is still in flight before the next size
            t_drain = time.monotonic()
            while time.monotonic() - t_drain < 1.0:
                ex.spin_once(timeout_sec=0.05)
            got.clear()
    finally:
        node.terminate()
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        ex.shutdown()
        sub_node.destroy_node()
        rclpy.try_shutdown()
    return results


def main(argv=None) -> int:
    """Measure and write (merge into) ``out/bench/reliability.json``."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--publisher', help=argparse.SUPPRESS)
    ap.add_argument('--rate', type=float, default=30.0, help='frames per second in')
    ap.add_argument('--seconds', type=float, default=10.0, help='measured seconds per size')
    ap.add_argument('--warmup', type=float, default=3.0, help='seconds before measuring')
    ap.add_argument('--sizes', default='640x480,64x64', help='WxH,... (default %(default)s)')
    ap.add_argument('--env', action='append', default=[], metavar='NAME=VALUE',
                    help='extra environment for the three processes (e.g. a DDS transport)')
    ap.add_argument('--no-profile', action='store_true',
                    help="without the shipped Fast DDS profile (the middleware's defaults)")
    ap.add_argument('--publisher-without-profile', action='store_true',
                    help='the publisher (camera) process without the profile, the rest with it')
    ap.add_argument('--out', default=OUT)
    args = ap.parse_args(argv)
    if args.publisher:
        w, h = (int(v) for v in args.publisher.split('x'))
        return publisher(w, h, args.rate, args.seconds)
    args.sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes.split(',')]
    extra = dict(e.split('=', 1) for e in args.env)
    os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
    os.environ.setdefault('AMENT_PREFIX_PATH', os.path.join(ROOT, '.venv'))
    os.environ.update(extra)
    if args.no_profile:
        for var in PROFILE_VARS:
            os.environ.pop(var, None)
    else:
        apply_camera_profile()
    env = dict(os.environ)
    results = measure(args, env)
    data = {}
    if os.path.exists(args.out):
        with open(args.out, encoding='utf-8') as f:
            data = json.load(f)
    for size, r in results.items():
        data[f'camera_fps_{size}'] = r['fps']
        for k in ('latency_p50_ms', 'latency_p95_ms', 'latency_max_ms', 'cpu_pct'):
            data[f'camera_{k}_{size}'] = r[k]
        data[f'camera_frames_sent_{size}'] = r['frames_sent']
    data['camera_bench'] = {
        'command': 'OMP_NUM_THREADS=1 AMENT_PREFIX_PATH=$PWD/.venv .venv/bin/python '
                   'bench/camera_bench.py ' + ' '.join(sys.argv[1:]),
        'cpu': cpu_name(), 'rate_hz': args.rate, 'seconds_per_size': args.seconds,
        'warmup_s': args.warmup, 'extra_env': extra,
        'profile': {v: os.environ[v] for v in PROFILE_VARS if os.environ.get(v)} or None,
        'publisher_without_profile': args.publisher_without_profile,
        'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
        'node': 'vision_irp_node, default_atp 0 (unlimited), no orchestrator, '
                'overlay not subscribed', 'results': results,
        'floors': {'camera_fps_640x480': '>= 25', 'camera_latency_p95_ms_64x64': '< 50'},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, args.out)
    print(json.dumps({k: v for k, v in data.items() if k.startswith('camera_')
                      and k != 'camera_bench'}, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
