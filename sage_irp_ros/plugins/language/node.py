"""``language_irp_node``: repairs masked text by iterative unmasking (the language plugin).

Subscribes to ``std_msgs/String`` utterances in which each lost word is marked ``[MASK]`` (a
run of n lost words: n masks) or, when the sender heard something, ``[MASK:heard]`` (repaired
only to a word that sounds like ``heard``, kept unless the model is ``guess_margin`` nats
surer) or ``[MASK:heard|alt|alt]`` (only the listed alternatives may replace ``heard``, by
``alternatives_margin`` nats) and publishes the repaired text on ``output_topic`` and its
meaning latent (``std_msgs/Float32MultiArray``, L2-normalised) on ``meaning_topic``, plus
telemetry. Text with nothing to repair passes through after zero steps.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import numpy as np
from std_msgs.msg import Float32MultiArray, Header, String

from sage_irp_ros.plugins.language.model import Vocab, load_checkpoint
from sage_irp_ros.plugins.language.plugin import DEFAULT_TOKENIZER, DEFAULT_WEIGHTS, LanguageIRP
from sage_irp_ros.ros import conversions
from sage_irp_ros.ros.host import IRPNodeHost, descriptor, run_node


class LanguageIRPNode(IRPNodeHost):
    """The language plugin behind the node host."""

    plugin_name = 'language'

    def declare_plugin_parameters(self) -> None:
        """Declare the model files, meaning topic and text-length limit."""
        self.declare_parameter('model_path', '', descriptor(
            'Checkpoint of the masked language model; empty = the weights shipped with the '
            'package', read_only=True))
        self.declare_parameter('tokenizer_path', '', descriptor(
            'Vocabulary file of the model; empty = the one shipped with the package',
            read_only=True))
        self.declare_parameter('max_input_chars', 2000, descriptor(
            'Longest accepted text, characters', read_only=True, int_range=(1, 1 << 20)))
        self.declare_parameter('guess_margin', LanguageIRP.GUESS_MARGIN, descriptor(
            'Nats by which a fill must beat the heard word of a [MASK:heard] to replace it',
            read_only=True, float_range=(0.0, 100.0)))
        self.declare_parameter('alternatives_margin', LanguageIRP.ALTERNATIVES_MARGIN,
                               descriptor('Nats by which a fill must beat the heard word of a '
                                          '[MASK:heard|alt|alt] (only the listed words may '
                                          'fill it) to replace it', read_only=True,
                                          float_range=(0.0, 100.0)))
        self.declare_parameter('acoustic_weight', LanguageIRP.ACOUSTIC_WEIGHT, descriptor(
            "Weight of the sender's probabilities of listed words ([MASK:w=0.3|v=0.7]) beside "
            "the model's log-probabilities", read_only=True, float_range=(0.0, 100.0)))

    def create_plugin(self) -> LanguageIRP:
        """Load the model on ``self.device`` at ``self.precision``."""
        vocab = self.load_file_parameter('tokenizer_path', DEFAULT_TOKENIZER, Vocab.from_file)
        net = self.load_file_parameter('model_path', DEFAULT_WEIGHTS,
                                       lambda p: load_checkpoint(p)[0])
        return LanguageIRP(net, vocab, device=self.device, precision=self.precision,
                           guess_margin=self.get_parameter('guess_margin').value,
                           alternatives_margin=self.get_parameter('alternatives_margin').value,
                           acoustic_weight=self.get_parameter('acoustic_weight').value)

    def decode(self, msg) -> Tuple[Any, Optional[Mapping[str, Any]]]:
        """Check the text (non-empty, not oversize)."""
        return conversions.text(msg, self.get_parameter('max_input_chars').value), None

    def publish_output(self, output: str, header: Header, result, x0) -> None:
        """Publish the repaired text and its meaning latent."""
        self.outputs['output'].publish(String(data=output))
        meaning = self.plugin.meaning(result.state).astype(np.float32)
        self.outputs['meaning'].publish(Float32MultiArray(data=meaning.tolist()))

    def run_metadata(self, output: str, result) -> Mapping[str, Any]:
        """Report how many masks the input had."""
        return {'masked_tokens': len(result.state.meta['masked'])}

    def example_input(self):
        """Return a short masked utterance, to calibrate the step cost."""
        return 'please put the [MASK] on the [MASK:table]', None


def main(args=None) -> int:
    """Run the language node."""
    return run_node(LanguageIRPNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
