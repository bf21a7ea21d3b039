"""Recognition with pocketsphinx (its bundled en-us model; nothing downloads), no ROS.

:class:`Recogniser` turns 16 kHz mono float samples into :class:`Word` s with start/end times
(s, from the utterance's first sample) and confidences (the word's posterior probability from
pocketsphinx's lattice, 0..1). Optionally a keyword list (``kws``) or a JSGF grammar restricts
what it hears.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from sage_irp_ros.plugins.audio.dsp import RATE, to_int16

#: pocketsphinx frames per second (10 ms frames).
FRAME_RATE = 100
_ALT_RE = re.compile(r'\(\d+\)$')
_FILLERS = {'<s>', '</s>', '<sil>', '[NOISE]', '[SPEECH]', '[BREATH]', '[COUGH]', '[UH]',
            '[UM]', '[SMACK]', '[LAUGH]', '[MUSIC]'}


@dataclass
class Word:
    """One recognised word."""

    word: str
    start: float
    end: float
    confidence: float


class Recogniser:
    """pocketsphinx's en-us model on whole utterances."""

    def __init__(self, keyphrase: str = '', grammar: str = '', fast: bool = False):
        from pocketsphinx import Config, Decoder
        cfg = Config(samprate=RATE, loglevel='FATAL')
        # Whole utterances: the cepstral mean of the utterance itself (batch CMN) instead of a
        # running estimate (the same clean WER on the benchmark's clips, 0.228 both).
        cfg['cmn'] = 'batch'
        if fast:
            # Narrower beams: about a third of the time, clearly worse WER (docs/AUDIO.md).
            cfg['beam'] = 1e-40
            cfg['wbeam'] = 1e-20
            cfg['maxhmmpf'] = 3000
        if keyphrase:
            cfg['keyphrase'] = keyphrase
            cfg['kws_threshold'] = 1e-20
        if grammar:
            cfg['jsgf'] = grammar
        self.decoder = Decoder(cfg)
        # pocketsphinx carries its cepstral mean from one utterance to the next; each utterance
        # starts from the model's initial mean instead, so a transcript does not depend on what
        # was heard before (deterministic node, order-independent benchmark).
        self._cmn0 = self.decoder.get_cmn(False)

    def __call__(self, samples: np.ndarray) -> List[Word]:
        """Recognise one utterance (mono float32, 16 kHz)."""
        d = self.decoder
        d.reinit_feat()  # the noise-removal estimate carries over too: a fresh front end
        d.set_cmn(self._cmn0)
        d.start_utt()
        d.process_raw(to_int16(np.asarray(samples, np.float32)).tobytes(), full_utt=True)
        d.end_utt()
        if d.hyp() is None:
            return []
        out = []
        for s in d.seg():
            if s.word in _FILLERS or s.word.startswith('['):
                continue
            out.append(Word(_ALT_RE.sub('', s.word), s.start_frame / FRAME_RATE,
                            (s.end_frame + 1) / FRAME_RATE,
                            float(min(max(s.prob, 0.0), 1.0))))
        return out


def text_of(words: List[Word]) -> str:
    """Return the transcript as a string."""
    return ' '.join(w.word for w in words)


_GUESSABLE_RE = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*")


def masked_text(words: List[Word], threshold: float, guesses: bool = True) -> str:
    """Return the transcript with every word under ``threshold`` confidence masked.

    ``guesses``: a masked word is written ``[MASK:word]`` (what was heard, so the language
    node repairs it only to a word that sounds alike, and keeps it unless it is sure:
    ``docs/AUDIO.md``); otherwise ``[MASK]`` (anything may fill it).
    """
    def mask(w: Word) -> str:
        if guesses and _GUESSABLE_RE.fullmatch(w.word):
            return f'[MASK:{w.word}]'
        return '[MASK]'
    return ' '.join(w.word if w.confidence >= threshold else mask(w) for w in words)


def recogniser_or_none(**kwargs) -> Optional[Recogniser]:
    """Return a recogniser, or None when pocketsphinx is not installed."""
    try:
        return Recogniser(**kwargs)
    except ImportError:
        return None


def wer_words(text: str) -> str:
    """Return the lower-cased words of ``text`` (letters and apostrophes): the WER's tokens."""
    return ' '.join(re.findall(r"[a-z']+", text.lower()))


def corpus_wer(refs, hyps) -> float:
    """Return the corpus WER (jiwer) of hypotheses against references (empty: ``<empty>``)."""
    import jiwer
    return float(jiwer.wer(list(refs), [h if h else '<empty>' for h in hyps]))
