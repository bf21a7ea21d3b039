"""The shipped Fast DDS profile for camera-size images (issue #15, Transport).

``config/fastdds_camera.xml`` gives every participant a shared-memory transport with 16 MiB
segments (several 640x480 rgb8 frames) and UDPv4 (discovery, other machines); with Fast DDS's
defaults a 921,600-byte image does not fit a 512 KiB segment and most are lost over fragmented
UDP at 30 Hz. :func:`apply_camera_profile` points ``FASTDDS_DEFAULT_PROFILES_FILE``
(Fast DDS 3: Jazzy and newer) or, where ``ROS_DISTRO`` is ``humble`` or ``iron``,
``FASTRTPS_DEFAULT_PROFILES_FILE`` (Fast DDS 2) at it, unless either is already set (the user's
own profile wins). Only one is set: Fast DDS 3 warns on every start when the ``FASTRTPS_`` one
is. Call it before the first participant is created (before ``rclpy.init``); child processes
inherit it through the environment.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, MutableMapping, Optional

PROFILE_VARS = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
_REL = os.path.join('config', 'fastdds_camera.xml')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def camera_profile() -> str:
    """Path of the shipped profile: the installed share copy, else the checkout's."""
    try:
        from ament_index_python.packages import get_package_share_directory
        path = os.path.join(get_package_share_directory('sage_irp_ros'), _REL)
        if os.path.isfile(path):
            return path
    except Exception:  # noqa: BLE001 - no ament index: the checkout's file
        pass
    return os.path.join(_ROOT, _REL)


def profile_var(env) -> str:
    """Name the variable this distribution's Fast DDS reads (``ROS_DISTRO``; default 3.x)."""
    return PROFILE_VARS[1] if env.get('ROS_DISTRO') in ('humble', 'iron') else PROFILE_VARS[0]


def camera_profile_env(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Return what to add to ``env`` (default ``os.environ``): the profile variable.

    Nothing when the user set a profile of their own or the shipped file is missing.
    """
    env = os.environ if env is None else env
    if any(env.get(var) for var in PROFILE_VARS):
        return {}
    path = camera_profile()
    return {profile_var(env): path} if os.path.isfile(path) else {}


def apply_camera_profile(env: Optional[MutableMapping[str, str]] = None) -> Optional[str]:
    """Set the profile variable in ``env`` (default ``os.environ``) unless one is set.

    Returns the profile now in effect (the user's when they set one), or None when the shipped
    file is missing and nothing was set.
    """
    env = os.environ if env is None else env
    env.update(camera_profile_env(env))
    return next((env[var] for var in PROFILE_VARS if env.get(var)), None)
