"""Voice-activity segmentation with silero-vad (its model ships in the PyPI package), no ROS.

:class:`Segmenter` takes 16 kHz mono chunks of any size and returns the utterances that ended
(with 0.2 s of audio before and after). Work on silence is kept small: a 32 ms window whose
level is under ``gate_dbfs`` is silence without running the network at all, and silero-vad
itself costs about 0.3 ms per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from sage_irp_ros.plugins.audio.dsp import RATE

WINDOW = 512  # silero-vad's window at 16 kHz (32 ms)


@dataclass
class Utterance:
    """One stretch of speech.

    Samples (mono float32, 16 kHz), the index of its first sample in the stream, and ``cut``:
    why it ended (``silence``, ``max_length``, ``flush``).
    """

    samples: np.ndarray
    start_sample: int
    cut: str = 'silence'

    @property
    def seconds(self) -> float:
        """Duration, s."""
        return self.samples.size / RATE


def load_silero():
    """Load silero-vad's shipped TorchScript model (one thread)."""
    import warnings

    import torch
    from silero_vad import load_silero_vad
    torch.set_num_threads(1)
    with warnings.catch_warnings():  # silero-vad's importlib and torch.jit deprecations
        warnings.simplefilter('ignore', DeprecationWarning)
        return load_silero_vad()


class Segmenter:
    """Streaming VAD with hysteresis.

    Speech starts at ``threshold`` and ends after ``min_silence_s`` under ``threshold - 0.15``;
    utterances shorter than ``min_speech_s`` are dropped, longer than ``max_seconds`` are cut.
    """

    def __init__(self, model=None, threshold: float = 0.5, min_silence_s: float = 0.4,
                 min_speech_s: float = 0.25, pad_s: float = 0.2, max_seconds: float = 20.0,
                 gate_dbfs: float = -55.0, floor_gate_db: float = 3.0):
        self.model = model if model is not None else load_silero()
        self.threshold = threshold
        self.min_silence = int(min_silence_s * RATE / WINDOW + 0.5)
        self.min_speech = int(min_speech_s * RATE)
        self.pad = int(pad_s * RATE)
        self.max_samples = int(max_seconds * RATE)
        self.gate = 10 ** (gate_dbfs / 20)
        self.floor_gate = 10 ** (floor_gate_db / 20) if floor_gate_db > 0 else math.inf
        self.windows_run = 0
        self.windows_gated = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a new stream starts at sample 0)."""
        self._pending = np.zeros(0, np.float32)
        self._history = np.zeros(0, np.float32)   # the last ``pad`` samples before speech
        self._speech: List[np.ndarray] = []
        self._speech_start = 0
        self._silent = 0
        self._in_speech = False
        self.position = 0                          # samples consumed by windows so far
        self._floor = math.inf                     # background level (rms), min-tracking
        if hasattr(self.model, 'reset_states'):
            self.model.reset_states()

    @property
    def in_speech(self) -> bool:
        """True while an utterance is under way."""
        return self._in_speech

    @property
    def speech_start(self) -> int:
        """Stream index of the first sample of the utterance under way (or the last one)."""
        return self._speech_start

    def speech_since(self, k: int) -> Tuple[np.ndarray, int]:
        """Return the utterance under way from its ``k``-th piece on, and its piece count.

        For streaming consumers (partial results): call with the count of the previous call
        to get only the new samples. Empty when no utterance is under way.
        """
        if not self._in_speech:
            return np.zeros(0, np.float32), 0
        new = self._speech[k:]
        return (np.concatenate(new) if new else np.zeros(0, np.float32)), len(self._speech)

    def prob(self, window: np.ndarray) -> float:
        """Speech probability of one 512-sample window (0 under the level gates).

        Two gates spare the network: an absolute one (``gate_dbfs``) and, outside an utterance,
        one ``floor_gate_db`` over the background level (tracked as a running minimum that
        rises 1 dB per second), so a steady room noise costs a level check per window.
        """
        level = math.sqrt(float(np.mean(np.square(window, dtype=np.float64))))
        self._floor = max(self.gate, min(level, self._floor * 1.0037
                                         if math.isfinite(self._floor) else level))
        if level < self.gate or (not self._in_speech
                                 and level < self._floor * self.floor_gate):
            self.windows_gated += 1
            return 0.0
        import torch
        self.windows_run += 1
        with torch.inference_mode():
            return float(self.model(torch.from_numpy(window), RATE))

    def feed(self, samples: np.ndarray) -> List[Utterance]:
        """Add 16 kHz mono samples; return the utterances that ended."""
        x = np.asarray(samples, np.float32).reshape(-1)
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        n = buf.size // WINDOW
        self._pending = buf[n * WINDOW:].copy()
        out: List[Utterance] = []
        for i in range(n):
            w = buf[i * WINDOW:(i + 1) * WINDOW]
            p = self.prob(w)
            if not self._in_speech:
                if p >= self.threshold:
                    self._in_speech = True
                    self._speech = [self._history.copy(), w.copy()]
                    self._speech_start = self.position - self._history.size
                    self._silent = 0
                else:
                    self._history = np.concatenate([self._history, w])[-self.pad:]
            else:
                self._speech.append(w.copy())
                self._silent = self._silent + 1 if p < self.threshold - 0.15 else 0
                if self._silent >= self.min_silence:
                    out += self._end('silence')
                elif sum(s.size for s in self._speech) >= self.max_samples:
                    out += self._end('max_length')
            self.position += WINDOW
        return out

    def flush(self) -> List[Utterance]:
        """End the utterance under way (the stream stopped); return it if long enough."""
        if not self._in_speech:
            return []
        if self._pending.size:
            self._speech.append(self._pending)
            self._pending = np.zeros(0, np.float32)
        return self._end('flush')

    def _end(self, cut: str) -> List[Utterance]:
        samples = np.concatenate(self._speech)
        if cut == 'silence':  # keep ``pad`` of the trailing silence
            trail = self._silent * WINDOW - self.pad
            if trail > 0:
                samples = samples[:-trail]
        self._in_speech = False
        self._speech = []
        self._silent = 0
        self._history = np.zeros(0, np.float32)
        if hasattr(self.model, 'reset_states') and cut != 'max_length':
            self.model.reset_states()
        if samples.size < self.min_speech:
            return []
        return [Utterance(samples.astype(np.float32), self._speech_start, cut)]


def segment_all(samples: np.ndarray, model=None, chunk: int = 1600, **kwargs) -> List[Utterance]:
    """Segment a whole recording fed in ``chunk``-sample pieces (tests, benchmark)."""
    seg = Segmenter(model, **kwargs)
    out: List[Utterance] = []
    for i in range(0, samples.size, chunk):
        out += seg.feed(samples[i:i + chunk])
    return out + seg.flush()


