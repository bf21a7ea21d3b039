"""Signal helpers of the audio plugin: conversion, resampling, STFT, mixing and noise (no ROS).

Everything works on mono float32 arrays in [-1, 1] at :data:`RATE` (16 kHz) once converted.
The noise generators are split in two families: :data:`TRAIN_NOISES` (what the enhancement
model is trained on) and :data:`HELD_OUT_NOISES` (what the benchmark mixes in, never trained
on).
"""

from __future__ import annotations

import math
import wave
from fractions import Fraction
from typing import Callable, Dict, Optional

import numpy as np
from scipy.signal import lfilter, resample_poly

#: Sample rate of the models (silero-vad, the enhancer, pocketsphinx's en-us model).
RATE = 16000
#: STFT of the enhancer: 32 ms Hann window, 16 ms hop.
N_FFT = 512
HOP = 256
N_BINS = N_FFT // 2 + 1
#: Recorded noise that ships in Debian (alsa-utils): used in training only.
ALSA_NOISE = '/usr/share/sounds/alsa/Noise.wav'
#: The recogniser's filterbank (pocketsphinx en-us ``feat.params``: 25 mel filters, 130-6800 Hz).
MEL_BANDS, MEL_FMIN, MEL_FMAX = 25, 130.0, 6800.0


def mel_filterbank(n_mels: int = MEL_BANDS, fmin: float = MEL_FMIN, fmax: float = MEL_FMAX,
                   n_bins: int = N_BINS, rate: int = RATE) -> np.ndarray:
    """Triangular mel filters over the STFT bins, ``(n_mels, n_bins)`` float32.

    The shape of the recogniser's front end (pocketsphinx: 25 filters from 130 to 6800 Hz), so
    a distance between log-mel spectra is a distance between what the recogniser sees.
    """
    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.arange(n_bins) * rate / (2.0 * (n_bins - 1))
    fb = np.zeros((n_mels, n_bins), np.float32)
    for m in range(n_mels):
        lo, mid, hi = edges[m:m + 3]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[m] = np.clip(np.minimum(up, down), 0.0, None)
    return fb


class AudioFormatError(ValueError):
    """The audio cannot be converted (bad rate, channel count, sample count, encoding)."""


def to_mono_16k(samples: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """Interleaved int16 (or float) samples at ``rate`` with ``channels`` -> mono float32 16 kHz.

    Channels are averaged (downmix); the rate is converted by polyphase resampling (a whole
    recording; a stream of chunks uses :class:`StreamResampler`).
    """
    return resample(downmix(samples, rate, channels), int(rate), RATE)


def downmix(samples: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """Check the format and average the interleaved channels: mono float32 at ``rate``."""
    if not 1000 <= int(rate) <= 384000:
        raise AudioFormatError(f'sample rate {rate} Hz is outside 1000 .. 384000 Hz')
    if not 1 <= int(channels) <= 32:
        raise AudioFormatError(f'channel count {channels} is outside 1 .. 32')
    x = np.asarray(samples)
    if x.dtype.kind in 'iu':
        x = x.astype(np.float32) / 32768.0
    else:
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise AudioFormatError('samples are not finite')
    if x.size % channels:
        raise AudioFormatError(f'{x.size} samples is not a multiple of {channels} channels')
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x


class StreamResampler:
    """Polyphase resampling of a stream of chunks without edge clicks at chunk boundaries.

    Each call resamples the new samples with ``pad`` samples of context on both sides (the last
    ``pad`` input samples wait for the next chunk: a latency of ``pad / rate_in``).
    """

    def __init__(self, rate_in: int, rate_out: int = RATE):
        f = Fraction(rate_out, rate_in).limit_denominator(1000)
        self.up, self.down = f.numerator, f.denominator
        self.rate_in = rate_in
        k = int(math.ceil(40 * max(self.up, self.down) / (self.up * self.down))) + 4
        self.pad = self.down * k
        self._buf = np.zeros(self.pad, np.float32)  # emitted context, then waiting samples

    def process(self, x: np.ndarray) -> np.ndarray:
        """Return the resampled samples that are ready (mono float32)."""
        if self.up == self.down:
            return np.asarray(x, np.float32)
        b = np.concatenate([self._buf, np.asarray(x, np.float32)])
        m = ((b.size - 2 * self.pad) // self.down) * self.down
        if m <= 0:
            self._buf = b
            return np.zeros(0, np.float32)
        y = resample_poly(b[:m + 2 * self.pad], self.up, self.down)
        lo = self.pad * self.up // self.down
        out = y[lo:lo + m * self.up // self.down].astype(np.float32)
        self._buf = b[m:]
        return out


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono ``x`` from ``rate_in`` to ``rate_out`` (polyphase, float32)."""
    if rate_in == rate_out or x.size == 0:
        return x.astype(np.float32, copy=False)
    f = Fraction(rate_out, rate_in).limit_denominator(1000)
    return resample_poly(x, f.numerator, f.denominator).astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float [-1, 1] -> int16 (clipped)."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def read_wav(path: str) -> np.ndarray:
    """Read a PCM16 wav file as mono float32 at 16 kHz."""
    with wave.open(path) as w:
        if w.getsampwidth() != 2:
            raise AudioFormatError(f'{path}: only 16-bit PCM wav is read')
        data = np.frombuffer(w.readframes(w.getnframes()), dtype='<i2')
        return to_mono_16k(data, w.getframerate(), w.getnchannels())


def rms(x: np.ndarray) -> float:
    """Root mean square of ``x``."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Return ``speech + noise`` scaled to ``snr_db`` (speech power over active frames)."""
    if math.isinf(snr_db):
        return speech.copy()
    n = fit_length(noise, speech.size)
    p_s = active_power(speech)
    p_n = float(np.mean(np.square(n, dtype=np.float64))) + 1e-20
    return (speech + n * math.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))).astype(np.float32)


def active_power(x: np.ndarray, frame: int = 320) -> float:
    """Mean power of the frames within 30 dB of the loudest (silence does not count)."""
    n = x.size // frame
    if n == 0:
        return float(np.mean(np.square(x, dtype=np.float64))) + 1e-20
    p = np.mean(np.square(x[:n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    return float(np.mean(p[p > p.max() * 1e-3])) + 1e-20


def fit_length(noise: np.ndarray, n: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Loop or crop ``noise`` to ``n`` samples (a random offset when ``rng`` is given)."""
    if noise.size == 0:
        return np.zeros(n, np.float32)
    reps = int(math.ceil((n + noise.size) / noise.size))
    long = np.tile(noise, reps)
    off = int(rng.integers(0, noise.size)) if rng is not None else 0
    return long[off:off + n].astype(np.float32)


# --------------------------------------------------------------------------- noises

def _coloured(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / RATE)
    f[0] = f[1]
    spec = spec / f ** (exponent / 2)
    x = np.fft.irfft(spec, n)
    return (x / (x.std() + 1e-12)).astype(np.float32)


def white(n, rng):
    """White Gaussian noise."""
    return rng.standard_normal(n).astype(np.float32)


def pink(n, rng):
    """Pink (1/f) noise."""
    return _coloured(n, rng, 1.0)


def brown(n, rng):
    """Brown (1/f^2) noise."""
    return _coloured(n, rng, 2.0)


def hum(n, rng):
    """Mains hum: 50 or 60 Hz with random harmonics, a little white noise."""
    t = np.arange(n) / RATE
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    x = sum(rng.uniform(0.1, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3))
            for k in range(1, 12))
    return (x + 0.02 * rng.standard_normal(n)).astype(np.float32)


_ALSA_CACHE: Dict[str, np.ndarray] = {}


def use_alsa_noise(x: np.ndarray) -> None:
    """Use ``x`` as alsa-utils' Noise.wav (a machine without alsa-utils: saved with the speech)."""
    _ALSA_CACHE['x'] = np.asarray(x, np.float32)


def alsa_noise(n, rng):
    """alsa-utils' recorded Noise.wav, looped from a random offset."""
    if 'x' not in _ALSA_CACHE:
        _ALSA_CACHE['x'] = read_wav(ALSA_NOISE)
    return fit_length(_ALSA_CACHE['x'], n, rng)


# Held-out noises: never seen in training (the benchmark's).

def fan(n, rng):
    """Held out: a fan / air conditioner: brownish noise through resonances, slow swell."""
    x = _coloured(n, rng, 1.5)
    for f0 in rng.uniform(150, 1200, 3):
        r = 0.995
        w = 2 * np.pi * f0 / RATE
        x = x + 0.3 * lfilter([1 - r], [1, -2 * r * np.cos(w), r * r], x)
    t = np.arange(n) / RATE
    x = x * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    return (x / (x.std() + 1e-12)).astype(np.float32)


def engine(n, rng):
    """Held out: an engine or motor: a harmonic buzz whose pitch drifts, over pink noise."""
    t = np.arange(n) / RATE
    f0 = rng.uniform(80, 140) * (1 + 0.1 * np.sin(2 * np.pi * 0.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sign(np.sin(k * phase)) / k for k in range(1, 8))
    x = x / (np.std(x) + 1e-12) + 0.7 * _coloured(n, rng, 1.0)
    return (x / (x.std() + 1e-12)).astype(np.float32)


def crackle(n, rng):
    """Held out: rain / crackle: sparse filtered impulses over a faint white bed."""
    imp = (rng.random(n) < 0.004) * rng.standard_normal(n) * 8
    x = lfilter([1.0], [1.0, -0.85], imp) + 0.3 * rng.standard_normal(n)
    return (x / (x.std() + 1e-12)).astype(np.float32)


NoiseFn = Callable[[int, np.random.Generator], np.ndarray]
TRAIN_NOISES: Dict[str, NoiseFn] = {'white': white, 'pink': pink, 'brown': brown, 'hum': hum,
                                    'alsa': alsa_noise}
HELD_OUT_NOISES: Dict[str, NoiseFn] = {'fan': fan, 'engine': engine, 'crackle': crackle}
#: SNRs of training (dB); the benchmark's 0, 5, 10 and 20 dB are held out.
TRAIN_SNRS = (-3.0, 2.5, 7.5, 15.0, 30.0)
