"""``language_irp_node``: repairs masked text by iterative unmasking (the language plugin).

Subscribes to ``std_msgs/String`` utterances in which each lost word is marked ``[MASK]`` (a
run of n lost words: n masks) and publishes the repaired text on ``output_topic`` and its
meaning latent (``std_msgs/Float32MultiArray``, L2-normalised) on ``meaning_topic``, plus
telemetry. Text with nothing to repair passes through after zero steps.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import numpy as np
from std_msgs.msg import Float32MultiArray, Header, String

from sage_irp_ros.core import HaltConfig
from sage_irp_ros.plugins.language.plugin import DEFAULT_TOKENIZER, DEFAULT_WEIGHTS, LanguageIRP
from sage_irp_ros.ros import conversions
from sage_irp_ros.ros.host import IRPNodeHost, descriptor, run_node


class LanguageIRPNode(IRPNodeHost):
    """The language plugin behind the node host."""

    input_type = String
    sensor_input = False
    default_input_topic = 'text_in'
    default_output_topic = 'text_repaired'

    def __init__(self, node_name: str = 'language_irp_node', **kwargs: Any):
        """Create the node (``node_name`` may be overridden by ``__node:=``)."""
        super().__init__(node_name, **kwargs)

    def declare_plugin_parameters(self) -> None:
        """Declare the model files, meaning topic and text-length limit."""
        self.declare_parameter('model_path', '', descriptor(
            'Checkpoint of the masked language model; empty = the weights shipped with the '
            'package', read_only=True))
        self.declare_parameter('tokenizer_path', '', descriptor(
            'Vocabulary file of the model; empty = the one shipped with the package',
            read_only=True))
        self.declare_parameter('meaning_topic', 'text_meaning', descriptor(
            'Topic of the meaning latent (Float32MultiArray)', read_only=True))
        self.declare_parameter('max_input_chars', 2000, descriptor(
            'Longest accepted text, characters', read_only=True, int_range=(1, 1 << 20)))

    def create_plugin(self) -> LanguageIRP:
        """Load the model (CPU, fp32: the model is small and runs there)."""
        device = self.get_parameter('device').value
        precision = self.get_parameter('precision').value
        if device != 'cpu' or precision != 'fp32':
            raise ValueError(f'the language plugin runs on cpu in fp32; got device={device!r} '
                             f'precision={precision!r}')
        weights = self.get_parameter('model_path').value or DEFAULT_WEIGHTS
        tokenizer = self.get_parameter('tokenizer_path').value or DEFAULT_TOKENIZER
        return LanguageIRP.from_files(weights, tokenizer)

    def halt_defaults(self) -> HaltConfig:
        """Use the plugin's own halting (``stable``, then ``max_steps``)."""
        return self.plugin.halt_config()

    def decode(self, msg) -> Tuple[Any, Optional[Mapping[str, Any]]]:
        """Check the text (non-empty, not oversize)."""
        return conversions.text(msg, self.get_parameter('max_input_chars').value), None

    def create_outputs(self) -> None:
        """Create the repaired-text and meaning publishers."""
        self._text_pub = self.create_output_publisher(String,
                                                      self.get_parameter('output_topic').value)
        self._meaning_pub = self.create_output_publisher(
            Float32MultiArray, self.get_parameter('meaning_topic').value)

    def publish_output(self, output: str, header: Header, result, x0) -> None:
        """Publish the repaired text and its meaning latent."""
        self._text_pub.publish(String(data=output))
        meaning = self.plugin.meaning(result.state).astype(np.float32)
        self._meaning_pub.publish(Float32MultiArray(data=meaning.tolist()))

    def run_metadata(self, output: str, result) -> Mapping[str, Any]:
        """Report how many masks the input had."""
        return {'masked_tokens': len(result.state.meta['masked'])}

    def example_input(self):
        """Return a short masked utterance, to calibrate the step cost."""
        return 'please put the [MASK] on the [MASK] table', None


def main(args=None) -> int:
    """Run the language node."""
    return run_node(LanguageIRPNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
