"""Recognition with pocketsphinx (its bundled en-us model; nothing downloads), no ROS.

:class:`Recogniser` turns 16 kHz mono float samples into :class:`Word` s with start/end times
(s, from the utterance's first sample), confidences (the word's posterior probability from
pocketsphinx's lattice, 0..1) and alternatives (other words the recogniser's N-best list puts in
the word's place: :func:`alternatives_from_nbest`). Optionally a keyword list (``kws``) or a
JSGF grammar restricts what it hears.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from sage_irp_ros.plugins.audio.dsp import RATE, to_int16

#: pocketsphinx frames per second (10 ms frames).
FRAME_RATE = 100
#: The most alternatives a word carries.
MAX_ALTERNATIVES = 3
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
    #: Other words heard in this word's place by the N-best list, in the list's order.
    alternatives: Tuple[str, ...] = ()
    #: Each alternative's share of the N-best hypotheses that put another word here (sums
    #: to 1 over the alternatives).
    alternative_shares: Tuple[float, ...] = ()

    def candidates(self) -> List[Tuple[str, float]]:
        """Return the word and its alternatives with the recogniser's probability of each.

        The word's is its confidence (the lattice posterior, at least 0.01); the rest,
        ``1 - confidence``, is shared among the alternatives by their N-best shares.
        """
        c = min(max(self.confidence, 0.01), 1.0) if math.isfinite(self.confidence) else 0.5
        rest = max(1.0 - c, 0.01)
        shares = self.alternative_shares or (1.0 / max(len(self.alternatives), 1),) * len(
            self.alternatives)
        return [(self.word, c)] + [(a, max(rest * sh, 0.01)) for a, sh in
                                   zip(self.alternatives, shares, strict=True)]


def align_words(ref: Sequence[str], hyp: Sequence[str]) -> List[Tuple[Optional[int], str]]:
    """Align ``hyp`` to ``ref`` by word edit distance; ``[(ref index or None, hyp word)]``.

    Every word of ``hyp`` gets the index of the ``ref`` word it matches or substitutes, or
    None when it is inserted (deleted ``ref`` words get nothing). Ties prefer a substitution
    of the later word (traced back from the end).
    """
    n, m = len(ref), len(hyp)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]),
                          d[i - 1][j] + 1, d[i][j - 1] + 1)
    out = []
    i, j = n, m
    while j > 0:
        if i > 0 and d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            out.append((i - 1, hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            out.append((None, hyp[j - 1]))
            j -= 1
    return out[::-1]


def nbest_votes(best: Sequence[str], nbest: Iterable[str]) -> List[Dict[str, int]]:
    """Per word of the 1-best ``best``: how many N-best hypotheses put each other word there.

    Each N-best hypothesis (in the recogniser's order, repeats skipped) is aligned to ``best``
    (:func:`align_words`); a word it puts in place of ``best[i]`` is a vote for it at ``i``.
    The dictionaries keep the words in order of first appearance. Fillers are not words.
    """
    votes: List[Dict[str, int]] = [{} for _ in best]
    seen = set()
    for h in nbest:
        words = [_ALT_RE.sub('', w) for w in h.split() if w not in _FILLERS
                 and not w.startswith('[')]
        key = tuple(words)
        if key in seen:
            continue
        seen.add(key)
        for i, w in align_words(best, words):
            if i is not None and w != best[i]:
                votes[i][w] = votes[i].get(w, 0) + 1
    return votes


def kept_alternatives(votes: Dict[str, int], per_word: int = MAX_ALTERNATIVES
                      ) -> Tuple[Tuple[str, ...], Tuple[float, ...]]:
    """Return a word's first ``per_word`` alternatives of ``votes`` and their vote shares."""
    kept = tuple(list(votes)[:per_word])
    total = sum(votes[a] for a in kept)
    return kept, tuple(votes[a] / total for a in kept)


def alternatives_from_nbest(best: Sequence[str], nbest: Iterable[str],
                            per_word: int = MAX_ALTERNATIVES) -> List[Tuple[str, ...]]:
    """Per word of the 1-best ``best``, the words the N-best strings substitute for it.

    In order of first appearance (:func:`nbest_votes`), at most ``per_word``.
    """
    return [kept_alternatives(v, per_word)[0] for v in nbest_votes(best, nbest)]


def _decoder(keyphrase: str, grammar: str, fast: bool, cmn: str):
    """Return a pocketsphinx decoder of the bundled en-us model (16 kHz)."""
    from pocketsphinx import Config, Decoder
    cfg = Config(samprate=RATE, loglevel='FATAL')
    cfg['cmn'] = cmn
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
    return Decoder(cfg)


def _words_of(decoder, confidence: bool = True) -> List[Word]:
    """Return the decoder's best words (fillers dropped); posteriors when ``confidence``."""
    if decoder.hyp() is None:
        return []
    out = []
    for s in decoder.seg():
        if s.word in _FILLERS or s.word.startswith('['):
            continue
        out.append(Word(_ALT_RE.sub('', s.word), s.start_frame / FRAME_RATE,
                        (s.end_frame + 1) / FRAME_RATE,
                        float(min(max(s.prob, 0.0), 1.0)) if confidence else math.nan))
    return out


class Recogniser:
    """pocketsphinx's en-us model on whole utterances."""

    def __init__(self, keyphrase: str = '', grammar: str = '', fast: bool = False,
                 n_best: int = 10):
        # Whole utterances: the cepstral mean of the utterance itself (batch CMN) instead of a
        # running estimate (the same clean WER on the benchmark's clips, 0.228 both).
        self.decoder = _decoder(keyphrase, grammar, fast, 'batch')
        #: How many N-best hypotheses give the words' alternatives (0: none; a keyword or
        #: grammar search has no N-best list).
        self.n_best = 0 if (keyphrase or grammar) else int(n_best)
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
        out = _words_of(d)
        if self.n_best > 0 and out:
            hyps = []
            # The lattice search may yield an empty entry (None): skipped, and the search is
            # not followed further than a few times the list's length.
            for h in itertools.islice(d.nbest(), 4 * self.n_best):
                if len(hyps) >= self.n_best:
                    break
                if h is not None and h.hypstr is not None:
                    hyps.append(h.hypstr)
            for w, votes in zip(out, nbest_votes([w.word for w in out], hyps), strict=True):
                w.alternatives, w.alternative_shares = kept_alternatives(votes)
        return out


class PartialRecogniser:
    """Streaming pocketsphinx: what has been said so far, while an utterance goes on.

    A preview, not the transcript: it hears the raw audio as it comes (before enhancement,
    which needs the whole utterance) with a running cepstral mean, carried from one utterance
    to the next as a live decoder does (the utterance is not whole yet, so batch CMN cannot
    apply; starting each utterance from the model's initial mean misheard the first words).
    Mid-utterance pocketsphinx has no word posteriors, so the words' confidences are NaN. The
    final transcript comes from :class:`Recogniser` on the enhanced utterance. ``fast``: the
    narrow beams (misheard most words of a synthetic voice: docs/AUDIO.md).
    """

    def __init__(self, keyphrase: str = '', grammar: str = '', fast: bool = False):
        self.decoder = _decoder(keyphrase, grammar, fast, 'live')
        #: True between the first :meth:`feed` of an utterance and :meth:`stop`.
        self.active = False
        #: Seconds of audio fed in the utterance under way.
        self.seconds = 0.0

    def feed(self, samples: np.ndarray) -> None:
        """Decode the next samples of the utterance (16 kHz mono float); starts one if needed."""
        if not self.active:
            self.decoder.start_utt()
            self.active, self.seconds = True, 0.0
        x = np.asarray(samples, np.float32).reshape(-1)
        self.decoder.process_raw(to_int16(x).tobytes(), False, False)
        self.seconds += x.size / RATE

    def words(self) -> List[Word]:
        """Return the best words so far (times from the utterance's start; confidence NaN)."""
        return _words_of(self.decoder, confidence=False) if self.active else []

    def stop(self) -> None:
        """End the utterance under way (its partial result is dropped)."""
        if self.active:
            self.decoder.end_utt()
            self.active = False


class PartialTranscriber:
    """Partial results for the utterance a :class:`~.vad.Segmenter` has under way.

    Call :meth:`update` after every ``feed`` or ``flush`` of the segmenter: it hands the new
    speech to a :class:`PartialRecogniser` and returns the words so far once per
    ``interval_s`` of speech (else None). An utterance that ends drops its partial result.
    """

    def __init__(self, segmenter, interval_s: float,
                 recogniser: Optional[PartialRecogniser] = None):
        if not interval_s > 0:
            raise ValueError(f'interval_s must be > 0, got {interval_s}')
        self.segmenter = segmenter
        self.interval_s = float(interval_s)
        self.recogniser = recogniser if recogniser is not None else PartialRecogniser()
        self._k = 0
        self._at = 0.0

    @property
    def seconds(self) -> float:
        """Seconds of the utterance under way heard so far."""
        return self.recogniser.seconds if self.recogniser.active else 0.0

    def update(self, ended: bool) -> Optional[List[Word]]:
        """Hear what the segmenter took; ``ended``: an utterance ended in that call."""
        seg, rec = self.segmenter, self.recogniser
        if ended or not seg.in_speech:  # the utterance it was hearing is over
            rec.stop()
            self._k, self._at = 0, 0.0
        if not seg.in_speech:
            return None
        new, self._k = seg.speech_since(self._k)
        if new.size:
            rec.feed(new)
        if rec.seconds - self._at < self.interval_s:
            return None
        self._at = rec.seconds
        return rec.words()


def text_of(words: List[Word]) -> str:
    """Return the transcript as a string."""
    return ' '.join(w.word for w in words)


_GUESSABLE_RE = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*")


def masked_text(words: List[Word], threshold: float, guesses: bool = True,
                alternatives: bool = True, probabilities: bool = True) -> str:
    """Return the transcript with every word under ``threshold`` confidence masked.

    ``guesses``: a masked word is written with what was heard, ``[MASK:word]``, so the
    language node keeps it unless it is sure of a better word (``docs/AUDIO.md``); otherwise
    ``[MASK]`` (anything may fill it). ``alternatives`` (with ``guesses``): a word the N-best
    list gave alternatives is written ``[MASK:word|alt|alt]``, so only those may replace it,
    and a word with none is left as heard: the recogniser had no rival for it. Without
    ``alternatives`` the language node chooses among words that sound alike.
    ``probabilities`` (with ``alternatives``): each listed word carries the recogniser's
    probability of it (:meth:`Word.candidates`), ``[MASK:word=0.31|alt=0.52|alt=0.17]``, which
    the language node weighs with its own.
    """
    def mask(w: Word) -> str:
        if not (guesses and _GUESSABLE_RE.fullmatch(w.word)):
            return '[MASK]'
        if not alternatives:
            return f'[MASK:{w.word}]'
        cands = [(a, p) for a, p in w.candidates() if _GUESSABLE_RE.fullmatch(a)]
        if len(cands) < 2:
            return w.word
        if probabilities:
            return f"[MASK:{'|'.join(f'{a}={p:.2f}' for a, p in cands)}]"
        return f"[MASK:{'|'.join(a for a, _ in cands)}]"
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
