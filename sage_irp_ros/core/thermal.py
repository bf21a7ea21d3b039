"""Device temperature and throttling from the Linux thermal framework (ROS-free).

A Jetson (and most Linux machines with sensors) lists its thermal zones under
``/sys/class/thermal/thermal_zone*/``: ``type`` (e.g. ``CPU-therm``, ``GPU-therm``), ``temp``
(millidegrees Celsius) and trip points ``trip_point_<k>_temp`` / ``trip_point_<k>_type``
(``active``, ``passive``, ``hot``, ``critical``). The kernel starts throttling a zone's
devices at its **passive** trip point (``hot`` and ``critical`` come later), so a zone at or
above its lowest passive (else hot, else critical) trip point counts as throttling here.
Unreadable or nonsensical files are skipped; a machine without zones (this CI machine, most
containers) reads as None.

The plugin nodes report the reading on ``/diagnostics``; the orchestrator shrinks its total
budget while the device throttles (``docs/ORCHESTRATOR.md``).
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

DEFAULT_ROOT = '/sys/class/thermal'
#: Trip point types that mean "the kernel throttles here", in the order they are looked for.
THROTTLE_TRIPS = ('passive', 'hot', 'critical')


@dataclass
class ThermalReading:
    """One reading of every zone: temperatures (deg C), the hottest, and who is throttling."""

    zones: Dict[str, float]
    trips: Dict[str, float]
    throttling: List[str] = field(default_factory=list)

    @property
    def max_c(self) -> float:
        """The hottest zone's temperature, deg C."""
        return max(self.zones.values())

    @property
    def hottest(self) -> str:
        """The hottest zone's name."""
        return max(self.zones, key=self.zones.get)

    def describe(self) -> str:
        """One line for logs and diagnostics."""
        if self.throttling:
            z = self.throttling[0]
            return (f'throttling: {z} at {self.zones[z]:.1f} C (trip {self.trips[z]:.1f} C)'
                    + (f' and {len(self.throttling) - 1} more' if len(self.throttling) > 1
                       else ''))
        return f'{self.hottest} {self.max_c:.1f} C (hottest of {len(self.zones)} zones)'


def _read_number(path: str) -> Optional[float]:
    try:
        with open(path, encoding='ascii', errors='replace') as f:
            v = float(f.read().strip())
    except (OSError, ValueError):
        return None
    return v if v == v and abs(v) < 1e9 else None


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding='ascii', errors='replace') as f:
            return f.read().strip()
    except OSError:
        return None


def read_thermal(root: str = DEFAULT_ROOT) -> Optional[ThermalReading]:
    """Read every ``thermal_zone*`` under ``root``; None when there is none to read.

    A zone's name is its ``type`` (``thermal_zone<N>`` when that is missing; ``type.N`` when
    two share a type). Temperatures in the files are millidegrees; zones whose temperature
    cannot be read, or reads outside -100..300 C, are skipped.
    """
    zones: Dict[str, float] = {}
    trips: Dict[str, float] = {}
    throttling: List[str] = []
    for zdir in sorted(glob.glob(os.path.join(root, 'thermal_zone*')),
                       key=lambda p: (len(p), p)):
        raw = _read_number(os.path.join(zdir, 'temp'))
        if raw is None:
            continue
        temp = raw / 1000.0
        if not -100.0 <= temp <= 300.0:
            continue
        name = _read_text(os.path.join(zdir, 'type')) or os.path.basename(zdir)
        if name in zones:
            name = f'{name}.{os.path.basename(zdir)[len("thermal_zone"):]}'
        zones[name] = temp
        by_type: Dict[str, float] = {}
        for tfile in glob.glob(os.path.join(zdir, 'trip_point_*_temp')):
            kind = _read_text(tfile[:-len('_temp')] + '_type')
            t = _read_number(tfile)
            if kind in THROTTLE_TRIPS and t is not None and t > 0:
                tc = t / 1000.0
                by_type[kind] = min(by_type.get(kind, tc), tc)
        trip = next((by_type[k] for k in THROTTLE_TRIPS if k in by_type), None)
        if trip is not None:
            trips[name] = trip
            if temp >= trip:
                throttling.append(name)
    if not zones:
        return None
    return ThermalReading(zones=zones, trips=trips, throttling=throttling)


class ThermalMonitor:
    """The device's thermal zones under ``root``, read at most once per ``period_s``.

    ``read()`` returns the newest :class:`ThermalReading` (None: no zones), reading the files
    again only when the last read is older than the period; ``changed`` says whether the last
    fresh read started or ended throttling (for a log line).
    """

    def __init__(self, root: str = DEFAULT_ROOT, period_s: float = 1.0, clock=time.monotonic):
        """Watch ``root``; nothing is read until the first :meth:`read`."""
        self.root = root
        self.period_s = float(period_s)
        self._clock = clock
        self._at = -float('inf')
        self.last: Optional[ThermalReading] = None
        self.changed = False

    @property
    def throttling(self) -> bool:
        """Whether the last reading has a zone at its throttling trip point."""
        return self.last is not None and bool(self.last.throttling)

    def read(self) -> Optional[ThermalReading]:
        """Return the newest reading (the files are read at most once per period)."""
        now = self._clock()
        self.changed = False
        if now - self._at >= self.period_s:
            self._at = now
            was = self.throttling
            self.last = read_thermal(self.root)
            self.changed = self.throttling != was
        return self.last
