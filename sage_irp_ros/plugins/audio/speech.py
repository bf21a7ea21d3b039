"""Training speech made offline: Debian flite and espeak-ng voices reading the Debian corpora.

The sentences are the language plugin's training split (WordNet glosses and fortunes,
``sage_irp_ros.plugins.language.corpus``); no speech of the benchmark (pocketsphinx-testdata's
human recordings) is ever used here. Babble for training is a sum of other training utterances.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from typing import List, Tuple

import numpy as np

from sage_irp_ros.plugins.audio.dsp import ALSA_NOISE, RATE, read_wav, to_int16, use_alsa_noise

FLITE_VOICES = ('slt', 'awb', 'rms', 'kal16')
ESPEAK_VOICES = ('en-us', 'en-gb', 'en-us+f3', 'en-gb+m3', 'en-us+f5')


def have_tts() -> bool:
    """Return True when flite (and espeak-ng) can be run."""
    return shutil.which('flite') is not None


def say(text: str, voice: str, tmpdir: str, rate_wpm: int = 160) -> np.ndarray:
    """Speak ``text`` with a flite voice (``flite:<v>``) or an espeak-ng voice (``espeak:<v>``)."""
    engine, _, name = voice.partition(':')
    path = os.path.join(tmpdir, 'say.wav')
    if engine == 'flite':
        cmd = ['flite', '-voice', name, '-t', text, '-o', path]
    elif engine == 'espeak':
        cmd = ['espeak-ng', '-v', name, '-s', str(rate_wpm), '-w', path, text]
    else:
        raise ValueError(f'unknown voice {voice!r}')
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)
    x = read_wav(path)
    peak = float(np.abs(x).max()) + 1e-9
    return (x / peak * 0.5).astype(np.float32)


def voices() -> List[str]:
    """Return the voices available on this machine."""
    out = [f'flite:{v}' for v in FLITE_VOICES]
    if shutil.which('espeak-ng'):
        out += [f'espeak:{v}' for v in ESPEAK_VOICES]
    return out


def make_speech(n: int, seed: int = 0) -> List[Tuple[str, str, np.ndarray]]:
    """Return ``n`` utterances ``(voice, text, samples)`` of the corpus' training split."""
    from sage_irp_ros.plugins.language.corpus import detokenize, load_sentences
    rng = np.random.default_rng(seed)
    sents = load_sentences(limit=20 * n)['train']
    order = rng.permutation(len(sents))
    vs = voices()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, j in enumerate(order[:n]):
            text = detokenize(sents[j][:14])
            voice = vs[i % len(vs)]
            rate = int(rng.integers(140, 190))
            out.append((voice, text, say(text, voice, tmp, rate)))
    return out


#: Bits dropped from 16-bit samples when speech is saved (12 bits kept: the quantisation noise
#: is about 66 dB under the utterances' 0.5 peak, under every training SNR).
SAVE_SHIFT = 4


def save_speech(path: str, data: List[Tuple[str, str, np.ndarray]]) -> None:
    """Write utterances ``(voice, text, samples)`` (and alsa-utils' Noise.wav) to ``path``.

    For training on a machine without the voices or the corpus (a GPU machine): the samples as
    12-bit integers, delta-coded and LZMA-compressed (600 utterances: about 25 MB).
    """
    q = [to_int16(x).astype(np.int32) >> SAVE_SHIFT for _, _, x in data]
    flat = np.concatenate(q).astype(np.int16)
    delta = np.diff(flat, prepend=np.int16(0)).astype(np.int16)
    extra = {}
    if os.path.exists(ALSA_NOISE):
        extra['alsa_noise'] = read_wav(ALSA_NOISE)
    np.savez(path, samples=np.frombuffer(lzma.compress(delta.tobytes(), preset=1), np.uint8),
             lengths=np.array([a.size for a in q], np.int64),
             meta=np.array(json.dumps([[v, t] for v, t, _ in data])), **extra)


def load_speech(path: str) -> List[Tuple[str, str, np.ndarray]]:
    """Read what :func:`save_speech` wrote; alsa-utils' noise, if saved, is handed to ``dsp``."""
    z = np.load(path)
    delta = np.frombuffer(lzma.decompress(z['samples'].tobytes()), np.int16)
    flat = np.cumsum(delta, dtype=np.int16).astype(np.float32) * (2 ** SAVE_SHIFT / 32767)
    meta = json.loads(str(z['meta']))
    bounds = np.cumsum(np.concatenate([[0], z['lengths']]))
    if 'alsa_noise' in z.files:
        use_alsa_noise(z['alsa_noise'])
    return [(v, t, flat[a:b].copy()) for (v, t), a, b in zip(meta, bounds[:-1], bounds[1:],
                                                              strict=True)]


def main(argv=None) -> int:
    """Make ``--n`` training utterances and save them (for training elsewhere)."""
    ap = argparse.ArgumentParser(description='Save training speech for train.py --speech')
    ap.add_argument('--n', type=int, default=600)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', required=True)
    args = ap.parse_args(argv)
    data = make_speech(args.n, seed=args.seed)
    save_speech(args.out, data)
    print(f'{len(data)} utterances, {sum(x.size for *_, x in data) / RATE / 60:.1f} min, '
          f'{os.path.getsize(args.out) / 1e6:.1f} MB: {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
