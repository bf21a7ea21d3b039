"""Test fixture node: the smoothing fixture plugin behind the node host.

It exists to test the host (and later the orchestrator) over real DDS with a plugin whose
behaviour is known. Input and output are ``std_msgs/Float32MultiArray`` signals.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import numpy as np
from std_msgs.msg import Float32MultiArray, Header

from sage_irp_ros.plugins.fixture import NoisyFixture, SmoothingFixture
from sage_irp_ros.ros import conversions
from sage_irp_ros.ros.host import IRPNodeHost, descriptor, run_node


class FixtureIRPNode(IRPNodeHost):
    """Test fixture node: smooths ``Float32MultiArray`` signals (noisy variant with noise > 0)."""

    input_type = Float32MultiArray
    sensor_input = False
    default_eps = 1e-3
    default_k = 2
    default_max_steps = 100

    def __init__(self, node_name: str = 'fixture_irp_node', **kwargs: Any):
        """Create the node (``node_name`` may be overridden by ``__node:=``)."""
        super().__init__(node_name, **kwargs)

    def declare_plugin_parameters(self) -> None:
        """Declare the fixture's parameters."""
        self.declare_parameter('lam', 4.0, descriptor('Smoothing weight', read_only=True,
                                                       float_range=(0.0, 1e3)))
        self.declare_parameter('lr', 0.1, descriptor('Gradient step size', read_only=True,
                                                      float_range=(1e-6, 10.0)))
        self.declare_parameter('noise', 0.0, descriptor(
            'Noise added per step (> 0 makes the misbehaving fixture)', read_only=True,
            float_range=(0.0, 1e3)))
        self.declare_parameter('max_input_len', 65536, descriptor(
            'Longest accepted signal', read_only=True, int_range=(1, 1 << 24)))

    def create_plugin(self):
        """Build the fixture plugin."""
        g = self.get_parameter
        kw = dict(lam=g('lam').value, lr=g('lr').value, max_len=g('max_input_len').value)
        noise = g('noise').value
        return NoisyFixture(noise=noise, **kw) if noise > 0 else SmoothingFixture(**kw)

    def decode(self, msg) -> Tuple[Any, Optional[Mapping[str, Any]]]:
        """Check and convert the signal."""
        return conversions.float_array(msg, self.get_parameter('max_input_len').value), None

    def create_outputs(self) -> None:
        """Publish the smoothed signal on ``output_topic``."""
        self._out = self.create_output_publisher(Float32MultiArray,
                                                 self.get_parameter('output_topic').value)

    def publish_output(self, output: np.ndarray, header: Header, result, x0) -> None:
        """Publish the smoothed signal."""
        self._out.publish(Float32MultiArray(data=output.astype(np.float32).tolist()))

    def example_input(self):
        """Return a noisy sine to calibrate the step cost."""
        t = np.linspace(0.0, 6.0, 256)
        return np.sin(t) + 0.3 * np.cos(37.0 * t), None


def main(args=None) -> int:
    """Run the fixture node."""
    return run_node(FixtureIRPNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
