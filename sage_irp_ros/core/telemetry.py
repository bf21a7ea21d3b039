"""Telemetry records (IRP_SPEC section 5): build them, validate them, write them.

A record is a plain ``dict`` that validates against ``schema/telemetry.schema.json`` (JSON Schema
2020-12). JSON cannot carry inf or NaN, so validation first serialises with
``allow_nan=False``; a record that fails is rejected with a reason, never silently dropped.

The host-side facts of a run (which grant paid it, the prices, the model and device) are a
:class:`RunInfo`, carried as the record's typed ``run`` object; ``metadata`` is left to
plugin-specific extras.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import jsonschema

from sage_irp_ros.core.loop import Trace
from sage_irp_ros.core.plugin import PLUGIN_KINDS
from sage_irp_ros.core.trust import finite

SCHEMA_NAME = 'telemetry.schema.json'
_UINT64_MAX = 2 ** 64 - 1  # cycle and dropped_inputs are uint64 in the IRPTelemetry message


@dataclass(frozen=True)
class RunInfo:
    """The host-side facts of one run, the record's ``run`` object (typed fields of the message).

    Attributes
    ----------
    cycle:
        The orchestrator cycle whose grant paid the run; None when it ran on the node's
        default budget.
    trust_weight:
        The orchestrator's trust weight sent with that grant; None without a grant.
    atp_per_step:
        Price of one step in ATP (the step-cost meter's price when the run ended).
    atp_per_input:
        Fixed price of one input in ATP (the meter's per-input price when the run ended): what
        a run costs beyond its steps (encoding, initial energy, halting checks, decoding).
    dropped_inputs:
        Inputs the node has dropped as stale so far (a running total).
    model_version, device, precision:
        The plugin's model / algorithm version, the device it ran on, its numeric precision.

    Raises ValueError for values no record (or message) can carry: a negative or NaN number, a
    count or cycle that is not an integer in the uint64 range, a string field that is not a
    string or holds a NUL character.
    """

    cycle: Optional[int]
    trust_weight: Optional[float]
    atp_per_step: float
    atp_per_input: float = 0.0
    dropped_inputs: int = 0
    model_version: str = ''
    device: str = ''
    precision: str = ''

    def __post_init__(self):
        """Reject values that cannot be telemetry."""
        for name in ('cycle', 'dropped_inputs'):
            v = getattr(self, name)
            if v is None and name == 'cycle':
                continue
            if (isinstance(v, bool) or not isinstance(v, numbers.Integral)
                    or not 0 <= v <= _UINT64_MAX):
                raise ValueError(f'RunInfo.{name} must be an integer in [0, 2**64), got {v!r}')
        for name in ('trust_weight', 'atp_per_step', 'atp_per_input'):
            v = getattr(self, name)
            if v is None and name == 'trust_weight':
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0:
                raise ValueError(f'RunInfo.{name} must be a number >= 0, got {v!r}')
        for name in ('model_version', 'device', 'precision'):
            v = getattr(self, name)
            if not isinstance(v, str) or '\x00' in v:  # a ROS string ends at a NUL
                raise ValueError(f'RunInfo.{name} must be a string without NUL, got {v!r}')

    def as_dict(self) -> dict:
        """Return the record's ``run`` object (numbers clipped to the finite range)."""
        return {
            'cycle': None if self.cycle is None else int(self.cycle),
            'trust_weight': None if self.trust_weight is None else finite(
                float(self.trust_weight)),
            'atp_per_step': finite(float(self.atp_per_step)),
            'atp_per_input': finite(float(self.atp_per_input)),
            'dropped_inputs': int(self.dropped_inputs),
            'model_version': self.model_version,
            'device': self.device,
            'precision': self.precision,
        }


def schema_path() -> str:
    """Return the file path of the telemetry schema."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'schema',
                        SCHEMA_NAME)


_validator = None
_validator_lock = threading.Lock()


def _get_validator() -> jsonschema.Draft202012Validator:
    global _validator
    with _validator_lock:
        if _validator is None:
            with open(schema_path(), encoding='utf-8') as f:
                schema = json.load(f)
            jsonschema.Draft202012Validator.check_schema(schema)
            _validator = jsonschema.Draft202012Validator(schema)
        return _validator


class TelemetryError(ValueError):
    """A record that is not valid telemetry."""


def validate_record(record: Mapping[str, Any]) -> str:
    """Validate ``record``; return its JSON text or raise :class:`TelemetryError`."""
    try:
        text = json.dumps(record, allow_nan=False, separators=(',', ':'))
    except (TypeError, ValueError) as exc:
        raise TelemetryError(f'record is not JSON-serialisable without inf/NaN: {exc}') from exc
    errors = sorted(_get_validator().iter_errors(record), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = '/'.join(str(p) for p in e.path) or '<record>'
        raise TelemetryError(f'{where}: {e.message}'
                             + (f' (+{len(errors) - 1} more)' if len(errors) > 1 else ''))
    return text


def process_memory_mb() -> Optional[float]:
    """Resident memory of this process in MiB, or None where it cannot be read."""
    try:
        with open('/proc/self/statm', encoding='ascii') as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf('SC_PAGE_SIZE') / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def make_record(kind: str, trace: Trace, *, entity_id: Optional[str] = None,
                metadata: Optional[Mapping[str, Any]] = None,
                lrc_context: Optional[Mapping[str, Any]] = None,
                memory_mb: Optional[float] = None,
                gpu_util: Optional[float] = None,
                run: Optional[RunInfo] = None) -> dict:
    """Build the telemetry record of one run from its :class:`Trace`.

    ``run`` (the host-side facts) becomes the record's ``run`` object; without it the record
    has no ``run``. ``metadata`` holds plugin-specific extras; ``trace.error`` (when set) is
    copied into ``metadata['error']``. Numbers are clipped to the finite range, so the record
    always serialises.
    """
    if kind not in PLUGIN_KINDS:
        raise ValueError(f'plugin kind must be one of {PLUGIN_KINDS}, got {kind!r}')
    if run is not None and not isinstance(run, RunInfo):
        raise TypeError(f'run must be a RunInfo or None, got {type(run).__name__}')
    meta = dict(metadata) if metadata else {}
    if trace.error:
        meta['error'] = trace.error
    granted = trace.atp_granted
    budget = {
        'ATP_granted': None if granted is None or math.isinf(granted) else finite(granted),
        'ATP_spent': finite(trace.atp_spent),
        'time_ms': finite(trace.time_ms),
        'memory_mb': None if memory_mb is None else finite(memory_mb),
        'gpu_util': None if gpu_util is None else finite(gpu_util),
    }
    record = {
        'plugin': kind,
        'entity_id': entity_id,
        'step_idx': trace.steps,
        'E': finite(trace.energy),
        'dE': finite(trace.d_energy),
        'E_trace': [finite(e) for e in trace.energies],
        'steps': trace.steps,
        'halt_reason': trace.halt_reason,
        'trust': trace.trust().as_dict(),
        'budget': budget,
        'LRC_context': dict(lrc_context) if lrc_context else None,
        'metadata': meta or None,
    }
    if run is not None:
        record['run'] = run.as_dict()
    return record


class JsonlSink:
    """Append valid records to a JSON Lines file (thread-safe); count and report rejects.

    ``on_reject(reason, record)`` is called for each record that fails validation (the node
    host logs it); the count is in :attr:`rejected`.
    """

    def __init__(self, path: str,
                 on_reject: Optional[Callable[[str, Mapping[str, Any]], None]] = None):
        """Open ``path`` for appending (its folder is created)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._f = open(path, 'a', encoding='utf-8')
        self._lock = threading.Lock()
        self._on_reject = on_reject
        self.written = 0
        self.rejected = 0

    def write(self, record: Mapping[str, Any]) -> bool:
        """Validate and append ``record``; return False (and count it) when it is invalid."""
        try:
            text = validate_record(record)
        except TelemetryError as exc:
            with self._lock:
                self.rejected += 1
            if self._on_reject is not None:
                self._on_reject(str(exc), record)
            return False
        with self._lock:
            self._f.write(text + '\n')
            self._f.flush()
            self.written += 1
        return True

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._f.close()

    def __enter__(self):
        """Use as a context manager."""
        return self

    def __exit__(self, *exc):
        """Close on exit."""
        self.close()
