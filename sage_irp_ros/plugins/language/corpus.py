"""Training text of the language plugin: Debian corpora, word splitting, the held-out rule.

Corpus recipe (``RECIPE``), chosen for short everyday English utterances:

- ``wordnet-base`` (``/usr/share/wordnet/data.{noun,verb,adj,adv}``): every usage example
  (the quoted parts of a gloss, e.g. "she put the book on the table"). The examples are
  short, plain, imperative/declarative sentences, the closest offline text to what a robot
  hears. The definitions themselves are not used (botanical and technical noun phrases).
- ``fortunes`` (``/usr/share/games/fortunes/<file>``, the files in ``FORTUNE_FILES``): the
  fortune cookies split into sentences; conversational English with dialogue and questions.

Not used: the KJV bible (archaic English), the Python docs (code and markup), both far from
spoken utterances; a narrower domain makes a small model better at the text it will see.

Every sentence is normalised (NFKD, ASCII), split into tokens by :func:`words` and kept when
it has ``MIN_WORDS`` to ``MAX_WORDS`` tokens; duplicates are dropped. The **held-out rule**:
a sentence is held out when the first 8 hex digits of the SHA-1 of its lower-cased,
space-joined tokens, read as an integer, modulo 100 is below ``HELD_OUT_PERCENT``; the next
``DEV_PERCENT`` values form the dev split (used to choose the halting thresholds). The rule
depends on the text alone, so the split is the same on every machine and for every seed; the
model never trains on a held-out or dev sentence, and nothing is tuned on held-out ones.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from typing import Dict, Iterator, List, Optional, Tuple

WORDNET_DIR = '/usr/share/wordnet'
FORTUNES_DIR = '/usr/share/games/fortunes'
WORDNET_FILES = ('data.noun', 'data.verb', 'data.adj', 'data.adv')
FORTUNE_FILES = (
    'computers', 'cookie', 'education', 'food', 'fortunes', 'humorists', 'kids', 'law',
    'literature', 'love', 'magic', 'medicine', 'miscellaneous', 'news', 'people', 'pets',
    'platitudes', 'politics', 'science', 'sports', 'wisdom', 'work',
)
MIN_WORDS = 4
MAX_WORDS = 30
HELD_OUT_PERCENT = 2
DEV_PERCENT = 1

RECIPE = {
    'debian_packages': ['wordnet-base', 'fortunes'],
    'wordnet': [os.path.join(WORDNET_DIR, f) for f in WORDNET_FILES],
    'wordnet_parts': 'usage examples (the quoted parts of the glosses) only',
    'fortunes': [os.path.join(FORTUNES_DIR, f) for f in FORTUNE_FILES],
    'min_words': MIN_WORDS,
    'max_words': MAX_WORDS,
    'held_out_rule': 'h = int(sha1(" ".join(tokens)).hexdigest()[:8], 16) % 100; '
                     f'held_out: h < {HELD_OUT_PERCENT}; dev (halting tuning): '
                     f'{HELD_OUT_PERCENT} <= h < {HELD_OUT_PERCENT + DEV_PERCENT}; '
                     'train: the rest',
}

#: The mask token: one per missing word (or punctuation mark).
MASK_TEXT = '[MASK]'
#: A doubtful word with what the sender heard: ``[MASK:heard]`` (the sender's guess), or
#: ``[MASK:heard|alt|alt]`` with the only other words it may be (the recogniser's
#: alternatives), each optionally with the sender's probability of it: ``[MASK:a=0.3|b=0.7]``.
MASK_GUESS_PREFIX = '[MASK:'
_WORD = r"[A-Za-z0-9]+(?:'[A-Za-z]+)*"
_CAND = rf"{_WORD}(?:=(?:\d+\.?\d*|\.\d+))?"
# One token: the mask marker (plain, or with the sender's guess and alternatives), a word
# (letters/digits with inner apostrophes: "don't", "robot's"), or any single other non-space
# character (punctuation, symbols).
_TOKEN_RE = re.compile(rf"\[MASK(?::{_CAND}(?:\|{_CAND})*)?\]|{_WORD}|[^\sA-Za-z0-9]")
_SENT_SPLIT_RE = re.compile(r'(?<=[.!?])["\')\]]?\s+(?=["\'(\[]?[A-Z0-9])')


class CorpusMissing(FileNotFoundError):
    """A Debian corpus the recipe needs is not installed."""


def words(text: str) -> List[Tuple[str, int, int]]:
    """Split ``text`` into ``(token, start, end)`` character spans (token lower-cased).

    ``[MASK]`` stays one token (kept upper-case), and so does ``[MASK:heard]`` or
    ``[MASK:heard|alt|alt]`` (its words lower-cased); every other token is lower-cased.
    """
    out = []
    for m in _TOKEN_RE.finditer(text):
        tok = m.group(0)
        if tok.startswith(MASK_GUESS_PREFIX):
            tok = MASK_GUESS_PREFIX + tok[len(MASK_GUESS_PREFIX):].lower()
        elif tok != MASK_TEXT:
            tok = tok.lower()
        out.append((tok, m.start(), m.end()))
    return out


def is_mask(tok: str) -> bool:
    """Return True for ``[MASK]`` and ``[MASK:heard]`` tokens."""
    return tok == MASK_TEXT or tok.startswith(MASK_GUESS_PREFIX)


def _candidates(tok: str) -> List[Tuple[str, Optional[float]]]:
    """``[(word, probability or None)]`` of a ``[MASK:...]`` token, the guess first."""
    out = []
    for c in tok[len(MASK_GUESS_PREFIX):-1].split('|'):
        w, _, p = c.partition('=')
        out.append((w, float(p) if p else None))
    return out


def guess_of(tok: str) -> Optional[str]:
    """Return the sender's guess of a ``[MASK:heard]`` token (``heard``); else None."""
    if not tok.startswith(MASK_GUESS_PREFIX):
        return None
    return _candidates(tok)[0][0]


def alternatives_of(tok: str) -> Optional[Tuple[str, ...]]:
    """Return the alternatives of a ``[MASK:heard|alt|alt]`` token; None when it has none.

    None means the sender gave no list (``[MASK]``, ``[MASK:heard]``): the receiver chooses
    the candidates. A list means the fill is ``heard`` or one of these words.
    """
    if not tok.startswith(MASK_GUESS_PREFIX) or '|' not in tok:
        return None
    return tuple(w for w, _ in _candidates(tok)[1:])


def probabilities_of(tok: str) -> Optional[Dict[str, float]]:
    """Return the sender's probability of each listed word; None when it gave none.

    Words listed without one share what the given ones leave (at least 0.01 each).
    """
    if not tok.startswith(MASK_GUESS_PREFIX):
        return None
    cands = _candidates(tok)
    given = {w: p for w, p in cands if p is not None}
    if not given:
        return None
    rest = [w for w, p in cands if p is None]
    left = max(1.0 - sum(given.values()), 0.0)
    out = {w: max(p, 0.01) for w, p in given.items()}
    out.update({w: max(left / len(rest), 0.01) for w in rest})
    return out


def to_ascii(text: str) -> str:
    """NFKD-normalise and drop what is not ASCII (the corpus normalisation)."""
    return unicodedata.normalize('NFKD', text).encode('ascii', 'ignore').decode('ascii')


def tokens(text: str) -> List[str]:
    """Lower-cased tokens of ``text`` after the corpus normalisation."""
    return [t for t, _, _ in words(to_ascii(text))]


def split_of(toks: List[str]) -> str:
    """Return the split ('held_out', 'dev' or 'train') of a sentence: the held-out rule."""
    h = int(hashlib.sha1(' '.join(toks).encode('utf-8')).hexdigest()[:8], 16) % 100
    if h < HELD_OUT_PERCENT:
        return 'held_out'
    return 'dev' if h < HELD_OUT_PERCENT + DEV_PERCENT else 'train'


def _need(path: str, package: str) -> str:
    if not os.path.exists(path):
        raise CorpusMissing(f'{path} not found: install the Debian package {package!r} '
                            f'(apt-get install -y {package})')
    return path


def wordnet_sentences(root: str = WORDNET_DIR) -> Iterator[str]:
    """Usage examples (the quoted parts of the glosses) from the WordNet data files."""
    for name in WORDNET_FILES:
        with open(_need(os.path.join(root, name), 'wordnet-base'), encoding='latin-1') as f:
            for line in f:
                if line.startswith(' ') or '|' not in line:
                    continue
                gloss = line.split('|', 1)[1].strip()
                for q in re.findall(r'"([^"]+)"', gloss):
                    yield q.strip()


def fortune_sentences(root: str = FORTUNES_DIR,
                      names: Tuple[str, ...] = FORTUNE_FILES) -> Iterator[str]:
    """Sentences of the fortune files ``names`` (attribution lines dropped)."""
    for name in names:
        with open(_need(os.path.join(root, name), 'fortunes'), encoding='utf-8',
                  errors='replace') as f:
            text = f.read()
        for cookie in re.split(r'\n%\n', text):
            lines = [ln.strip() for ln in cookie.splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith('--')]
            body = ' '.join(lines)
            for s in _SENT_SPLIT_RE.split(body):
                yield s.strip()


def load_sentences(wordnet_root: str = WORDNET_DIR, fortunes_root: str = FORTUNES_DIR,
                   limit: Optional[int] = None) -> Dict[str, List[List[str]]]:
    """Return the tokenised, de-duplicated corpus: ``{'train', 'dev', 'held_out'}`` lists.

    Each sentence is a list of lower-cased tokens. Raises :class:`CorpusMissing` naming the
    Debian package when a corpus file is absent. ``limit`` caps the sentences read per source
    (quick mode).
    """
    seen = set()
    split: Dict[str, List[List[str]]] = {'train': [], 'dev': [], 'held_out': []}
    for source in (wordnet_sentences(wordnet_root), fortune_sentences(fortunes_root)):
        n = 0
        for s in source:
            toks = tokens(s)
            if not MIN_WORDS <= len(toks) <= MAX_WORDS:
                continue
            if sum(t[0].isalpha() for t in toks) < len(toks) // 2:
                continue  # mostly symbols: ascii art, code
            key = ' '.join(toks)
            if key in seen:
                continue
            seen.add(key)
            split[split_of(toks)].append(toks)
            n += 1
            if limit is not None and n >= limit:
                break
    return split


def detokenize(toks: List[str]) -> str:
    """Join tokens into a readable string (no space before closing punctuation)."""
    out = ''
    for t in toks:
        if out and not (t in ',.;:!?)]}\'"%' or out.endswith(('(', '[', '{', '$'))):
            out += ' '
        out += t
    return out
