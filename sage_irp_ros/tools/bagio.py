"""Shared pieces of the bag tools: the type store, QoS conversions, message classes by name.

The bags are rosbag2 bags (metadata version 9, mcap storage) written and read with the
``rosbags`` package, so no ``rosbag2_py`` is needed. Messages stay serialized CDR bytes from end
to end: the recorder receives them raw and writes them as they are, the replayer publishes the
stored bytes; only the message *definitions* come from the type store (ROS 2 Kilted's standard
types plus this package's ``msg/*.msg``).
"""

from __future__ import annotations

import glob
import importlib
import os
from typing import Optional

from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

PACKAGE = 'sage_irp_ros'
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def msg_dir() -> Optional[str]:
    """Return the folder of this package's ``.msg`` files (installed share/ or the source tree)."""
    try:
        from ament_index_python.packages import get_package_share_directory
        share = os.path.join(get_package_share_directory(PACKAGE), 'msg')
        if glob.glob(os.path.join(share, '*.msg')):
            return share
    except Exception:  # noqa: BLE001 - no ament index (plain checkout): use the source tree
        pass
    src = os.path.join(_ROOT, 'msg')
    return src if glob.glob(os.path.join(src, '*.msg')) else None


def make_typestore():
    """Return a ``rosbags`` type store: ROS 2 Kilted's types plus ``sage_irp_ros/msg/*``."""
    store = get_typestore(Stores.ROS2_KILTED)
    folder = msg_dir()
    if folder is not None:
        types = {}
        for path in sorted(glob.glob(os.path.join(folder, '*.msg'))):
            name = f'{PACKAGE}/msg/{os.path.splitext(os.path.basename(path))[0]}'
            with open(path, encoding='utf-8') as f:
                types.update(get_types_from_msg(f.read(), name))
        store.register(types)
    return store


def message_class(msgtype: str):
    """Return the rclpy message class of ``pkg/msg/Name`` (e.g. ``sensor_msgs/msg/Image``)."""
    parts = msgtype.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3:
        raise ValueError(f'not a message type name: {msgtype!r}')
    try:
        return getattr(importlib.import_module(f'{parts[0]}.{parts[1]}'), parts[2])
    except (ImportError, AttributeError) as exc:
        raise ValueError(f'message type {msgtype} is not installed: {exc}') from exc


def type_name_of(cls) -> str:
    """Return ``pkg/msg/Name`` of an rclpy message class."""
    return f'{cls.__module__.split(".")[0]}/msg/{cls.__name__}'


_TIME_ZERO = QosTime(sec=0, nsec=0)
_TIME_INFINITE = QosTime(sec=2147483647, nsec=4294967295)


def bag_qos(reliable: bool, depth: int, transient_local: bool = False) -> Qos:
    """Return a rosbag2 QoS record (stored as a topic's offered QoS in the bag's metadata)."""
    return Qos(history=QosHistory.KEEP_LAST, depth=int(depth),
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=(QosDurability.TRANSIENT_LOCAL if transient_local
                           else QosDurability.VOLATILE),
               deadline=_TIME_INFINITE, lifespan=_TIME_INFINITE,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_TIME_INFINITE,
               avoid_ros_namespace_conventions=False)


def rclpy_qos(offered, reliable: Optional[bool] = None, depth: Optional[int] = None):
    """Turn a topic's offered QoS (a list of rosbags ``Qos``) into an rclpy ``QoSProfile``.

    Reliability and durability follow the first offered profile (reliable, volatile when none
    is stored); ``reliable`` and ``depth`` override.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    q = offered[0] if offered else None
    rel = reliable if reliable is not None else (
        q is None or q.reliability != QosReliability.BEST_EFFORT)
    transient = q is not None and q.durability == QosDurability.TRANSIENT_LOCAL
    if depth is None:
        depth = q.depth if q is not None and q.depth > 0 else 10
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=int(depth),
        reliability=ReliabilityPolicy.RELIABLE if rel else ReliabilityPolicy.BEST_EFFORT,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient
                    else DurabilityPolicy.VOLATILE))
