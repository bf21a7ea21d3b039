"""``vision_irp_node``: camera frames segmented by latent refinement (the vision plugin).

Subscribes to a ``sensor_msgs/Image`` (rgb8, bgr8, mono8, rgba8, bgra8; any size) and publishes,
with the input's header:

- ``output_topic`` (default ``mask``): ``mono8`` class mask, one class id per pixel, at the
  input's size;
- ``overlay_topic`` (default ``overlay``): ``rgb8`` colour overlay for rviz, computed only while
  someone subscribes; its border says whether the frame is known (green) or unknown (red) and
  a bar along the top edge its confidence (full width: 1.0);
- ``confidence_topic`` (default ``confidence``): ``sage_irp_ros/FrameConfidence``, the frame's
  confidence, unknown score, threshold and flag (``VisionIRP.assess``) and what was done with
  the mask;
- telemetry, as every plugin node does, with ``confidence``, ``unknown`` and ``unknown_score``
  in its metadata.

``unknown_output`` says what to publish for a frame flagged unknown: ``mask`` (the mask as
usual), ``none`` (no mask and no overlay; the confidence message still goes out) or
``unknown`` (an all-unknown mask: every pixel ``UNKNOWN_ID`` = 255).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import numpy as np
from std_msgs.msg import Header

from sage_irp_ros.msg import FrameConfidence
from sage_irp_ros.plugins.vision.palette import UNKNOWN_ID, overlay, status_frame
from sage_irp_ros.plugins.vision.plugin import DEFAULT_WEIGHTS, VisionIRP
from sage_irp_ros.ros import conversions
from sage_irp_ros.ros.host import IRPNodeHost, descriptor, run_node

UNKNOWN_OUTPUTS = ('mask', 'none', 'unknown')


class VisionIRPNode(IRPNodeHost):
    """The vision plugin behind the node host."""

    plugin_name = 'vision'

    def declare_plugin_parameters(self) -> None:
        """Declare the model path, class names, overlay and input-size parameters."""
        self.declare_parameter('model_path', '', descriptor(
            'Checkpoint of the vision model; empty = the weights shipped with the package',
            read_only=True))
        self.declare_parameter('class_names', [''], descriptor(
            'Names of the classes, by class id; [""] = the names stored in the checkpoint',
            read_only=True))
        self.declare_parameter('overlay_alpha', 0.5, descriptor(
            'Opacity of the class colours in the overlay', float_range=(0.0, 1.0)))
        self.declare_parameter('unknown_output', 'mask', descriptor(
            'What to publish for a frame flagged unknown: "mask" (as usual), "none" (no mask, '
            'no overlay) or "unknown" (an all-unknown mask, every pixel 255)'))
        self.declare_parameter('compile_encoder', True, descriptor(
            'On a CPU device, run the encoder as a frozen TorchScript graph optimised for '
            'inference (checked against the eager encoder at load; eager when it differs)',
            read_only=True))
        self.declare_parameter('max_input_pixels', 4096 * 4096, descriptor(
            'Largest accepted image (width * height)', read_only=True,
            int_range=(1, 1 << 30)))

    def create_plugin(self) -> VisionIRP:
        """Load the model on the configured device and precision."""
        path = self.get_parameter('model_path').value or DEFAULT_WEIGHTS
        compiled = bool(self.get_parameter('compile_encoder').value)
        plugin = self.load_file_parameter(
            'model_path', DEFAULT_WEIGHTS,
            lambda p: VisionIRP.from_checkpoint(p, device=self.device,
                                                precision=self.precision,
                                                compile_encoder=compiled))
        names = [n for n in self.get_parameter('class_names').value if n]
        if names and len(names) != len(plugin.classes):
            raise ValueError(f'class_names has {len(names)} entries but the model has '
                             f'{len(plugin.classes)} classes {plugin.classes}')
        self.class_names = tuple(names) if names else plugin.classes
        self.get_logger().info(f'vision model {path}: classes {self.class_names}, encoder '
                               f"{'compiled' if plugin.encoder_compiled else 'eager'}")
        return plugin

    def decode(self, msg) -> Tuple[Any, Optional[Mapping[str, Any]]]:
        """Decode the camera image to RGB."""
        return conversions.image_to_rgb(msg, self.get_parameter('max_input_pixels').value), None

    def mask_action(self, unknown: bool) -> str:
        """``mask``, ``none`` or ``unknown``: what this frame's mask becomes."""
        mode = str(self.get_parameter('unknown_output').value)
        if mode not in UNKNOWN_OUTPUTS:
            raise ValueError(f'unknown_output must be one of {UNKNOWN_OUTPUTS}, got {mode!r}')
        return mode if unknown else 'mask'

    def publish_output(self, output: np.ndarray, header: Header, result, x0) -> None:
        """Publish the mask and the overlay (as ``unknown_output`` says), and the confidence."""
        a = self.plugin.assess(result.state)
        action = self.mask_action(a['unknown'])
        mask = np.full_like(output, UNKNOWN_ID) if action == 'unknown' else output
        if action != 'none':
            self.outputs['output'].publish(conversions.rgb_to_image(mask, header,
                                                                    encoding='mono8'))
            if self.outputs['overlay'].get_subscription_count() > 0:
                img = overlay(x0, mask, self.get_parameter('overlay_alpha').value)
                self.outputs['overlay'].publish(conversions.rgb_to_image(
                    status_frame(img, a['confidence'], a['unknown']), header))
        nan = float('nan')
        thr = a['unknown_threshold']
        self.outputs['confidence'].publish(FrameConfidence(
            header=header, confidence=float(a['confidence']),
            unknown_score=float(a['unknown_score']) if thr is not None else nan,
            unknown_threshold=float(thr) if thr is not None else nan,
            unknown=bool(a['unknown']), mask_action=action, steps=int(result.trace.steps),
            energy=float(result.trace.energy)))

    def run_metadata(self, output: np.ndarray, result) -> Mapping[str, Any]:
        """Report confidence, unknown flag and score, and the uncertain-pixel fraction."""
        a = self.plugin.assess(result.state)
        self.plugin.energy(result.state)  # the uncertain fraction (cached after a run)
        return {'uncertain_frac': float(result.state.meta['uncertain']),
                'confidence': float(a['confidence']), 'unknown': bool(a['unknown']),
                'unknown_score': float(a['unknown_score']),
                'mask_action': self.mask_action(a['unknown'])}

    def example_input(self):
        """Return a mid-grey frame, to calibrate the step cost."""
        return np.full((64, 64, 3), 128, np.uint8), None


def main(args=None) -> int:
    """Run the vision node."""
    return run_node(VisionIRPNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
