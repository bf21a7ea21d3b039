"""Trust metrics of one run (IRP_SPEC section 4). Every value is finite, always."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

_BIG = sys.float_info.max
_TINY = 1e-12


def finite(x: float) -> float:
    """Return ``x`` clipped to the finite float range (NaN becomes 0.0)."""
    if math.isnan(x):
        return 0.0
    return min(max(x, -_BIG), _BIG)


@dataclass(frozen=True)
class TrustMetrics:
    """The four per-run trust metrics; field names follow the telemetry schema."""

    monotonicity_ratio: float
    dE_variance: float
    convergence_rate: float
    contribution_to_H: float

    def as_dict(self) -> dict:
        """Return the metrics as the telemetry ``trust`` object."""
        return asdict(self)


def trust_metrics(energies: Sequence[float], tol: float = 1e-9) -> TrustMetrics:
    """Compute the trust metrics from the energies of a run (``E_0 .. E_final``, all finite).

    A step counts as monotone when ``dE <= tol * max(1, |E_0|)``: a change within rounding is not
    an increase.
    """
    steps = len(energies) - 1
    if steps <= 0:
        return TrustMetrics(1.0, 0.0, 0.0, 0.0)
    e = [float(v) for v in energies]
    d = [finite(b - a) for a, b in zip(e[:-1], e[1:], strict=True)]
    thresh = tol * max(1.0, abs(e[0]))
    mono = sum(1 for x in d if x <= thresh) / steps
    if steps >= 2:
        # Scale before squaring so huge energy changes cannot overflow.
        scale = max(abs(x) for x in d) or 1.0
        ds = [x / scale for x in d]
        mean = sum(ds) / steps
        var = finite(sum((x - mean) ** 2 for x in ds) / steps * scale * scale)
    else:
        var = 0.0
    rate = finite(finite(e[0] - e[-1]) / steps)
    contrib = finite(finite(e[-1] - e[0]) / max(abs(e[0]), _TINY))
    return TrustMetrics(float(mono), float(var), float(rate), float(contrib))
