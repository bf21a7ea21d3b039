"""Test-only plugins with scripted energies, for exercising the loop's rules exactly."""

import math

from sage_irp_ros.core import IRPPlugin, IRPState


class ScriptedPlugin(IRPPlugin):
    """Test fixture: state ``i`` has energy ``energies[i]``; the result is the final index.

    ``on_step(i)`` (optional) is called before step ``i`` runs; ``raise_at`` makes step ``i``
    raise; ``halt_at`` maps a state index to a plugin-specific halting reason.
    """

    kind = 'custom'
    version = 'scripted-test'

    def __init__(self, energies, on_step=None, raise_at=None, halt_at=None):
        self.energies = list(energies)
        self.on_step = on_step
        self.raise_at = raise_at
        self.halt_at = halt_at or {}

    def init_state(self, x0, ctx=None):
        return IRPState(payload=0)

    def energy(self, state):
        i = state.payload
        return self.energies[min(i, len(self.energies) - 1)]

    def step(self, state, schedule):
        assert schedule.step_idx == state.payload
        assert schedule.steps_left >= 1
        if self.on_step is not None:
            self.on_step(state.payload)
        if self.raise_at == state.payload:
            raise RuntimeError('scripted failure')
        return state.evolve(state.payload + 1)

    def halt(self, state, energies):
        return self.halt_at.get(state.payload)

    def result(self, state):
        return state.payload


def geometric(n, e0=100.0, r=0.5):
    """Energies falling geometrically (a well-behaved refiner)."""
    return [e0 * r ** i for i in range(n)]


NAN = math.nan
