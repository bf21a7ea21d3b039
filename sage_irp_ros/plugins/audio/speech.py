"""Training speech made offline: Debian flite and espeak-ng voices reading the Debian corpora.

The sentences are the language plugin's training split (WordNet glosses and fortunes,
``sage_irp_ros.plugins.language.corpus``); no speech of the benchmark (pocketsphinx-testdata's
human recordings) is ever used here. Babble for training is a sum of other training utterances.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import List, Tuple

import numpy as np

from sage_irp_ros.plugins.audio.dsp import read_wav

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
