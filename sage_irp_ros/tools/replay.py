"""``sage_irp_replay``: play a rosbag2 bag (mcap or sqlite3) onto real topics, without ros2 bag.

Reads the bag with ``rosbags`` and publishes each message's stored CDR bytes unchanged (headers
and stamps as recorded) on its topic, with the bag's original timing divided by ``--rate``, the
QoS the recording publisher offered (reliable/best effort, depth, durability; ``--reliable``
forces reliable), optionally only some topics (``--topics``) and looped (``--loop``). At the end
it waits until every reliable subscriber acknowledged what it was sent, so the tail is not lost
when the process exits. On a ROS 2 machine ``ros2 bag play`` plays the same bags.

Usage::

    sage_irp_replay data/sample_bag --rate 2 --topics /camera/image_raw /speech/text
    python -m sage_irp_ros.tools.replay BAG [--rate R] [--loop [N]] [--wait-subscribers S]

By default it waits up to 5 s for a subscriber on every topic before playing (the first messages
would otherwise be published before anyone matched and be lost); ``--wait-subscribers 0`` plays
at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

from rosbags.rosbag2 import Reader

from sage_irp_ros.tools.bagio import message_class, rclpy_qos

#: History depth of ``--reliable`` publishers at least (the bag's own depth when larger).
RELIABLE_DEPTH = 100

#: Default wait for subscribers before playing (messages sent before a match are lost).
WAIT_SUBSCRIBERS_S = 5.0


@dataclass
class ReplayStats:
    """What a replay published, per topic."""

    messages: Dict[str, int] = field(default_factory=dict)
    bytes: Dict[str, int] = field(default_factory=dict)
    loops: int = 0
    wall_s: float = 0.0
    acked: bool = True

    def as_dict(self) -> dict:
        """Return the statistics as a JSON-ready dict."""
        return {'messages': dict(self.messages), 'bytes': dict(self.bytes), 'loops': self.loops,
                'wall_s': round(self.wall_s, 3), 'acked': self.acked}


def bag_topics(path: str) -> Dict[str, str]:
    """Return ``{topic: message type}`` of a bag."""
    with Reader(path) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def replay(node, path: str, *, rate: float = 1.0, topics: Optional[Sequence[str]] = None,
           loop: int = 1, reliable: bool = False, wait_subscribers_s: float = WAIT_SUBSCRIBERS_S,
           ack_timeout_s: float = 5.0,
           progress: Optional[Callable[[str, int], None]] = None,
           should_stop: Optional[Callable[[], bool]] = None) -> ReplayStats:
    """Publish the messages of bag ``path`` with ``node``'s publishers; return what was sent.

    ``rate`` scales the speed (2 = twice as fast; 0 or less = as fast as possible),
    ``loop`` plays the bag that many times (0 = until ``should_stop`` says so),
    ``wait_subscribers_s`` waits up to that long for every topic to have a subscriber first.
    ``progress(topic, count)`` is called after each message.
    """
    stats = ReplayStats()
    with Reader(path) as reader:
        conns = [c for c in reader.connections if not topics or c.topic in topics]
        if topics:
            missing = sorted(set(topics) - {c.topic for c in conns})
            if missing:
                raise ValueError(f'topics not in the bag {path}: {missing}')
        pubs = {}
        reliable_pubs = []
        for c in conns:
            if c.topic in pubs:
                continue
            qos = rclpy_qos(c.ext.offered_qos_profiles, reliable=True if reliable else None)
            if reliable and qos.depth < RELIABLE_DEPTH:
                # reliable but keep-last: a slow subscriber loses what the history overwrote
                qos.depth = RELIABLE_DEPTH
            pub = node.create_publisher(message_class(c.msgtype), c.topic, qos)
            pubs[c.topic] = pub
            if qos.reliability.name == 'RELIABLE':
                reliable_pubs.append(pub)
            stats.messages[c.topic] = 0
            stats.bytes[c.topic] = 0
        if wait_subscribers_s > 0:
            end = time.monotonic() + wait_subscribers_s
            while (time.monotonic() < end
                   and any(p.get_subscription_count() == 0 for p in pubs.values())):
                time.sleep(0.02)
            idle = sorted(t for t, p in pubs.items() if p.get_subscription_count() == 0)
            if idle:
                node.get_logger().warning(
                    f'no subscriber after {wait_subscribers_s:g} s on {", ".join(idle)}: '
                    'playing anyway')
        t_start = time.monotonic()
        n = 0
        while loop <= 0 or n < loop:
            if should_stop is not None and should_stop():
                break
            t0_wall = time.monotonic()
            t0_bag = None
            for conn, t_bag, data in reader.messages(connections=conns):
                if should_stop is not None and should_stop():
                    break
                if t0_bag is None:
                    t0_bag = t_bag
                if rate > 0:
                    delay = t0_wall + (t_bag - t0_bag) * 1e-9 / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                pubs[conn.topic].publish(bytes(data))
                stats.messages[conn.topic] += 1
                stats.bytes[conn.topic] += len(data)
                if progress is not None:
                    progress(conn.topic, stats.messages[conn.topic])
            n += 1
            stats.loops = n
        for pub in reliable_pubs:
            if pub.get_subscription_count() > 0:
                stats.acked &= bool(pub.wait_for_all_acked(
                    _duration(ack_timeout_s)))
        stats.wall_s = time.monotonic() - t_start
    return stats


def _duration(seconds: float):
    from rclpy.duration import Duration
    return Duration(nanoseconds=int(seconds * 1e9))


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (ROS arguments are left to rclpy)."""
    ap = argparse.ArgumentParser(prog='sage_irp_replay', description=__doc__.split('\n')[0])
    ap.add_argument('bag', help='bag folder (metadata.yaml + .mcap or .db3)')
    ap.add_argument('--rate', type=float, default=1.0,
                    help='speed factor (2 = twice as fast; 0 = as fast as possible)')
    ap.add_argument('--topics', nargs='+', default=None, help='only these topics')
    ap.add_argument('--loop', type=int, nargs='?', const=0, default=1,
                    help='play N times; --loop alone repeats until interrupted')
    ap.add_argument('--reliable', action='store_true',
                    help='publish every topic reliable, keeping at least '
                         f'{RELIABLE_DEPTH} messages for slow subscribers (default: the QoS '
                         'stored in the bag)')
    ap.add_argument('--wait-subscribers', type=float, default=WAIT_SUBSCRIBERS_S, metavar='S',
                    help='wait up to S seconds for a subscriber on every topic before playing '
                         f'(default {WAIT_SUBSCRIBERS_S:g}; 0: play at once, and messages '
                         'published before a subscriber matched are lost)')
    ap.add_argument('--summary-json', default=None,
                    help='write what was published (messages, bytes per topic) to this file')
    ap.add_argument('--quiet', action='store_true', help='no progress output')
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """Replay a bag; return 0 when every message was published (and acknowledged)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.utilities import remove_ros_args
    args = parse_args(remove_ros_args(sys.argv if argv is None else ['replay', *argv])[1:])
    rclpy.init(args=sys.argv if argv is None else None)
    node = rclpy.create_node('sage_irp_replay')
    rc = 0
    try:
        topics = bag_topics(args.bag)
        if not args.quiet:
            node.get_logger().info(f'replaying {args.bag} at rate {args.rate}: '
                                   + ', '.join(f'{t} [{m}]' for t, m in sorted(topics.items())))
        stats = replay(node, args.bag, rate=args.rate, topics=args.topics, loop=args.loop,
                       reliable=args.reliable, wait_subscribers_s=args.wait_subscribers,
                       should_stop=lambda: not rclpy.ok())
        summary = stats.as_dict()
        if args.summary_json:
            with open(args.summary_json, 'w', encoding='utf-8') as f:
                json.dump(summary, f, indent=1)
        if not args.quiet:
            node.get_logger().info(f'published {summary}')
        rc = 0 if stats.acked else 3
    except (KeyboardInterrupt, ExternalShutdownException):
        rc = 130
    except (ValueError, OSError) as exc:
        print(f'sage_irp_replay: {exc}', file=sys.stderr)
        rc = 2
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return rc


if __name__ == '__main__':
    raise SystemExit(main())
