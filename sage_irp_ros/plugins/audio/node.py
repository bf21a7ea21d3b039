"""``audio_irp_node``: microphone speech enhanced by refinement, recognised, handed to language.

Inputs (``config/sage_irp.yaml``, section ``audio_irp_node``), chunks of any size, each queued
in order (trigger ``each``):

- ``input_topic`` (default ``audio/raw``): ``std_msgs/Int16MultiArray``, interleaved int16 PCM
  at the parameters ``sample_rate`` and ``channels`` (as the sample bag's ``/audio/raw``);
  stamped with the time it is received;
- ``stamped_topic`` (default ``audio/stamped``): ``sage_irp_ros/AudioChunk`` (header, sample
  rate, channels, encoding S16LE / S32LE / F32LE, data): chunks keep their capture time.

Every chunk is converted to 16 kHz mono and fed to silero-vad; silence stops there. When an
utterance ends (``min_silence_s`` of silence, ``max_utterance_s``, or no audio for
``stream_timeout_s``: the stream stopped) it is enhanced (the IRP run: the refined mask),
recognised by pocketsphinx, and published:

- ``output_topic`` (``speech/transcript``): ``sage_irp_ros/Transcript``: words with
  confidence and timing, the enhancement's steps and energies;
- ``text_topic`` (``speech/transcript_text``): ``std_msgs/String``, the transcript;
- ``partial_topic`` (``speech/partial``), with ``partial_interval_s`` > 0: ``Transcript`` s of
  what has been said so far while an utterance goes on (``cut`` ``partial``; the raw audio
  through a streaming decoder; no confidences yet), one per ``partial_interval_s`` of speech;
- ``masked_topic`` (``speech/text``, the language node's input): ``std_msgs/String``, the
  transcript with each word under ``confidence_threshold`` as ``[MASK:heard=p|alt=p|alt=p]``
  (what was heard and its rivals in the recogniser's N-best list, with its probability of
  each, so the language node repairs it only to one of them; a word without rivals stays as
  heard; ``n_best: 0``: ``[MASK:heard]``, repaired only to a word that sounds alike and kept
  unless the language model is sure; ``mask_guesses: false``: a plain ``[MASK]``).

Bad chunks (an empty or huge chunk, a sample count that does not split into the channels, an
unknown encoding, a rate or channel count out of range, non-finite floats) are refused, logged
and counted as bad input; the node goes on. Clipped chunks are counted (``clipped_chunks`` in
telemetry metadata) and used.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Deque, List, Mapping, Optional, Tuple

import numpy as np
from std_msgs.msg import Header, String

from sage_irp_ros.msg import AudioChunk, Transcript
from sage_irp_ros.plugins.audio.dsp import RATE, AudioFormatError, StreamResampler, downmix
from sage_irp_ros.plugins.audio.recognize import (
    PartialRecogniser,
    PartialTranscriber,
    Recogniser,
    masked_text,
    text_of,
)
from sage_irp_ros.plugins.audio.vad import Segmenter, Utterance, load_silero
from sage_irp_ros.ros.conversions import InputError
from sage_irp_ros.ros.host import TIMER_TRIGGER, Inputs, IRPNodeHost, descriptor, run_node

_ENCODINGS = {'S16LE': ('<i2', 2), 'S32LE': ('<i4', 4), 'F32LE': ('<f4', 4)}


def decode_chunk(data: np.ndarray, rate: int, channels: int, max_seconds: float) -> np.ndarray:
    """Check one chunk and downmix it to mono float32 at ``rate``; :class:`InputError` if not."""
    if data.size == 0:
        raise InputError('empty audio chunk')
    if data.size > max_seconds * rate * channels:
        raise InputError(f'audio chunk of {data.size} samples is over max_chunk_s '
                         f'({max_seconds} s at {rate} Hz x {channels} channels)')
    try:
        return downmix(data, rate, channels)
    except AudioFormatError as exc:
        raise InputError(str(exc)) from exc


class AudioIRPNode(IRPNodeHost):
    """The audio plugin behind the node host (VAD, enhancement IRP, recognition)."""

    plugin_name = 'audio'

    def declare_plugin_parameters(self) -> None:
        """Declare the stream format, segmentation, recognition and masking parameters."""
        p = self.declare_parameter
        p('sample_rate', 16000, descriptor('Sample rate of Int16MultiArray chunks, Hz',
                                           int_range=(1000, 384000)))
        p('channels', 1, descriptor('Interleaved channels of Int16MultiArray chunks',
                                    int_range=(1, 32)))
        p('max_chunk_s', 10.0, descriptor('Longest accepted chunk, s (longer: bad input)',
                                          float_range=(0.01, 600.0)))
        p('vad_threshold', 0.5, descriptor('silero-vad speech probability that starts an '
                                           'utterance', read_only=True, float_range=(0.05, 0.95)))
        p('min_silence_s', 0.4, descriptor('Silence that ends an utterance, s', read_only=True,
                                           float_range=(0.05, 5.0)))
        p('max_utterance_s', 20.0, descriptor('Longest utterance; longer speech is cut, s',
                                              read_only=True, float_range=(1.0, 30.0)))
        p('stream_timeout_s', 1.0, descriptor('No audio for this long ends the utterance under '
                                              'way (the stream stopped), s',
                                              float_range=(0.1, 60.0)))
        p('confidence_threshold', 0.5, descriptor('Words under this posterior become [MASK] on '
                                                  'masked_topic', float_range=(0.0, 1.0)))
        p('mask_guesses', True, descriptor('Masked words carry what was heard, [MASK:word] '
                                           '(false: a plain [MASK])'))
        p('n_best', 10, descriptor('pocketsphinx N-best hypotheses that give each word its '
                                   'alternatives, [MASK:word=p|alt=p] (0: none; a masked word '
                                   'is then [MASK:word], repaired to words that sound alike)',
                                   read_only=True, int_range=(0, 100)))
        p('keyphrase', '', descriptor('pocketsphinx keyword spotting: the phrase to listen for '
                                      '(empty: the full language model)', read_only=True))
        p('grammar', '', descriptor('pocketsphinx JSGF grammar file (empty: the language model)',
                                    read_only=True))
        p('fast_recognition', False, descriptor('Narrower pocketsphinx beams: about 3x faster, '
                                                'clearly worse WER (docs/AUDIO.md)',
                                                read_only=True))
        p('partial_interval_s', 0.0, descriptor(
            'Publish what has been said so far on partial_topic every this many seconds of '
            'speech while an utterance goes on (a streaming decoder on the raw audio; 0: off)',
            read_only=True, float_range=(0.0, 10.0)))
        p('enhance', True, descriptor('Enhance before recognition (false: recognise the input)'))
        p('model_path', '', descriptor('Enhancer checkpoint (train.py writes enhancer.pt with '
                                       'its enhancer.json beside it); empty = the weights '
                                       'shipped with the package', read_only=True))
        self.clipped_chunks = 0
        self.utterances = 0
        self._stamps: Deque[Tuple[int, int]] = collections.deque(maxlen=4096)
        self._last_chunk = 0.0
        self._utt: Optional[Utterance] = None
        self._flush_timer = None
        self._resampler: Optional[StreamResampler] = None
        self.partial: Optional[PartialTranscriber] = None
        self.partials = 0

    def create_plugin(self):
        """Build the enhancer; also the VAD and the recogniser (configure time, not per input)."""
        from sage_irp_ros.plugins.audio.plugin import DEFAULT_WEIGHTS, AudioIRP
        plugin = self.load_file_parameter(
            'model_path', DEFAULT_WEIGHTS,
            lambda path: AudioIRP.from_checkpoint(path, device=self.device,
                                                  precision=self.precision))
        g = self.get_parameter
        self.segmenter = Segmenter(load_silero(), threshold=g('vad_threshold').value,
                                   min_silence_s=g('min_silence_s').value,
                                   max_seconds=g('max_utterance_s').value)
        self.recogniser = Recogniser(keyphrase=g('keyphrase').value, grammar=g('grammar').value,
                                     fast=g('fast_recognition').value,
                                     n_best=g('n_best').value)
        self.partial = PartialTranscriber(
            self.segmenter, g('partial_interval_s').value,
            PartialRecogniser(keyphrase=g('keyphrase').value, grammar=g('grammar').value,
                              fast=g('fast_recognition').value)) \
            if g('partial_interval_s').value > 0 else None
        return plugin

    def create_outputs(self) -> None:
        """Create a timer that ends an utterance when the stream stops."""
        if self._flush_timer is None:
            self._flush_timer = self.create_timer(0.25, self._on_run_timer)

    # ------------------------------------------------------------------- inputs

    def _chunk(self, inputs: Inputs) -> Tuple[np.ndarray, Optional[int]]:
        """Decode the triggering chunk: (16 kHz mono samples, stamp ns or None)."""
        msg = inputs.msg
        max_s = self.get_parameter('max_chunk_s').value
        if inputs.trigger == 'stamped':
            enc = _ENCODINGS.get(msg.encoding.upper())
            if enc is None:
                raise InputError(f'unknown encoding {msg.encoding!r} (one of '
                                 f'{", ".join(_ENCODINGS)})')
            raw = bytes(msg.data)
            if len(raw) % enc[1]:
                raise InputError(f'{len(raw)} bytes is not a whole number of {msg.encoding} '
                                 'samples')
            data = np.frombuffer(raw, dtype=enc[0])
            if enc[0] == '<i4':
                data = (data.astype(np.float64) / 2 ** 31).astype(np.float32)
            rate, ch = int(msg.sample_rate), int(msg.channels)
            stamp = msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec
        else:
            data = np.asarray(msg.data, dtype=np.int16)
            rate = self.get_parameter('sample_rate').value
            ch = self.get_parameter('channels').value
            stamp = None
        x = decode_chunk(data, rate, ch, max_s)
        if self._resampler is None or self._resampler.rate_in != rate:
            self._resampler = StreamResampler(rate)
        x = self._resampler.process(x)
        if data.dtype == np.int16 and data.size and \
                np.mean(np.abs(data.astype(np.int32)) >= 32767) > 0.01:
            self.clipped_chunks += 1
        if stamp is None:
            stamp = self.get_clock().now().nanoseconds - int(x.size * 1e9 / RATE)
        return x, stamp

    def _process(self, inputs: Inputs) -> None:
        """Feed chunks to the VAD; run the IRP on each utterance that ended."""
        utts: List[Utterance] = []
        if inputs.trigger == TIMER_TRIGGER:
            timeout = self.get_parameter('stream_timeout_s').value
            if self.segmenter.in_speech and time.monotonic() - self._last_chunk > timeout:
                utts = self.segmenter.flush()
                self._stream_partial(utts)
        else:
            try:
                x, stamp = self._chunk(inputs)
            except InputError as exc:
                self._bad_input(inputs, str(exc))
                return
            self._last_chunk = time.monotonic()
            self._stamps.append((self.segmenter.position + self.segmenter._pending.size, stamp))
            utts = self.segmenter.feed(x)
            self._stream_partial(utts)
        for utt in utts:
            self._utt = utt
            self.utterances += 1
            super()._process(Inputs(inputs.trigger, inputs.msgs, inputs.received))
        self._utt = None

    def _stream_partial(self, ended: List[Utterance]) -> None:
        """Publish what has been said so far, once per ``partial_interval_s`` of speech."""
        if self.partial is None:
            return
        words = self.partial.update(bool(ended))
        if words is None:
            return
        header = Header()
        header.stamp.sec, header.stamp.nanosec = divmod(
            self._stamp_of(self.segmenter.speech_start), 10 ** 9)
        self.outputs['partial'].publish(Transcript(
            header=header, text=text_of(words), words=[w.word for w in words],
            start_s=[float(w.start) for w in words], end_s=[float(w.end) for w in words],
            duration_s=float(self.partial.seconds), cut='partial', energy_initial=float('nan'),
            energy_final=float('nan')))
        self.partials += 1

    def decode_inputs(self, inputs: Inputs) -> Tuple[Any, Optional[Mapping[str, Any]]]:
        """Return the utterance that just ended (the VAD's)."""
        if self._utt is None:
            raise InputError('no utterance')
        if not self.get_parameter('enhance').value:
            return self._utt.samples, {'enhance': False}
        return self._utt.samples, None

    def header_of(self, msg) -> Header:
        """Return the stamp of the utterance's first sample."""
        header = Header()
        if self._utt is not None:
            ns = self._stamp_of(self._utt.start_sample)
            header.stamp.sec, header.stamp.nanosec = divmod(ns, 10 ** 9)
        return header

    def _stamp_of(self, sample: int) -> int:
        best = None
        for pos, ns in self._stamps:
            if pos <= sample:
                best = (pos, ns)
        if best is None:
            best = self._stamps[0] if self._stamps else (0, self.get_clock().now().nanoseconds)
        return int(best[1] + (sample - best[0]) * 1e9 / RATE)

    # ------------------------------------------------------------------ outputs

    def publish_output(self, output, header: Header, result, x0) -> None:
        """Recognise the enhanced utterance; publish the transcript, text and masked text."""
        samples = output.samples if self.get_parameter('enhance').value else \
            np.asarray(x0, np.float32)
        words = self.recogniser(samples)
        thr = self.get_parameter('confidence_threshold').value
        trace = result.trace
        energies = list(trace.energies) if getattr(trace, 'energies', None) else []
        msg = Transcript(header=header, text=text_of(words), masked_text=masked_text(
                             words, thr, self.get_parameter('mask_guesses').value,
                             self.recogniser.n_best > 0),
                         words=[w.word for w in words],
                         alternatives=['|'.join(f'{a}={p:.2f}' for a, p in w.candidates()[1:])
                                       for w in words],
                         confidences=[float(w.confidence) for w in words],
                         start_s=[float(w.start) for w in words],
                         end_s=[float(w.end) for w in words],
                         duration_s=float(self._utt.seconds if self._utt else 0.0),
                         cut=self._utt.cut if self._utt else '',
                         enhance_steps=int(trace.steps),
                         energy_initial=float(energies[0]) if energies else float('nan'),
                         energy_final=float(energies[-1]) if energies else float('nan'),
                         halt_reason=str(trace.halt_reason))
        self._last_words = words
        self.outputs['output'].publish(msg)
        if words:
            self.outputs['text'].publish(String(data=msg.text))
            self.outputs['masked'].publish(String(data=msg.masked_text))

    def diagnostic_values(self) -> Mapping[str, Any]:
        """Whether an utterance is under way (its chunks wait), utterances, clipped chunks."""
        seg = getattr(self, 'segmenter', None)
        return {'in_speech': bool(seg is not None and seg.in_speech),
                'utterances': self.utterances, 'clipped_chunks': self.clipped_chunks,
                'partials': self.partials}

    def run_metadata(self, output, result) -> Mapping[str, Any]:
        """Words, mean confidence, utterance length, clipped chunks so far."""
        words = getattr(self, '_last_words', [])
        return {'words': len(words),
                'mean_confidence': round(float(np.mean([w.confidence for w in words])), 4)
                if words else None,
                'utterance_s': round(self._utt.seconds, 3) if self._utt else None,
                'cut': self._utt.cut if self._utt else None,
                'clipped_chunks': self.clipped_chunks}

    def example_input(self):
        """One second of noisy tone, to price a step."""
        rng = np.random.default_rng(0)
        t = np.arange(RATE) / RATE
        x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(RATE)
        return x.astype(np.float32), None


def chunk_msg(samples: np.ndarray, rate: int = RATE, channels: int = 1, stamp_ns: int = 0,
              encoding: str = 'S16LE') -> AudioChunk:
    """Build an ``AudioChunk`` from int16 (S16LE) or float32 (F32LE) samples (tests, tools)."""
    m = AudioChunk(sample_rate=int(rate), channels=int(channels), encoding=encoding)
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp_ns), 10 ** 9)
    dtype = {'S16LE': '<i2', 'F32LE': '<f4', 'S32LE': '<i4'}.get(encoding, '<i2')
    m.data = np.asarray(samples).astype(dtype).tobytes()
    return m


def main(args=None) -> int:
    """Run the audio node."""
    return run_node(AudioIRPNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
