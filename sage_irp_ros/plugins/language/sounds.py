"""Words that sound alike: the alternatives a doubtful recognised word may be repaired to.

A speech recogniser's errors are mostly words that sound like the one spoken ("know" for "no",
"rate" for "right"). When the sender of a masked word also says what it heard
(``[MASK:heard]``, :mod:`~sage_irp_ros.plugins.language.plugin`), the language plugin fills
that mask only with words that sound like ``heard``: words whose pronunciation is at most one
phone away from one of ``heard``'s (one phone substituted, inserted or deleted), found through
an index of single-phone deletions over the CMU pronouncing dictionary that ships with
pocketsphinx (``model/en-us/cmudict-en-us.dict``; nothing downloads).
"""

from __future__ import annotations

import os
import re
from typing import Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

_ALT_RE = re.compile(r'\(\d+\)$')


def default_dictionary() -> Optional[str]:
    """Path of pocketsphinx's CMU dictionary, or None when pocketsphinx is not installed."""
    try:
        import pocketsphinx
    except ImportError:
        return None
    path = os.path.join(pocketsphinx.get_model_path(), 'en-us', 'cmudict-en-us.dict')
    return path if os.path.exists(path) else None


def read_dictionary(path: str) -> Dict[str, List[Tuple[str, ...]]]:
    """``{word: [phones, ...]}`` of a CMU-format dictionary (``word(2)`` lines are variants)."""
    pron: Dict[str, List[Tuple[str, ...]]] = {}
    with open(path, encoding='utf-8', errors='replace') as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2 or parts[0].startswith(';;;'):
                continue
            pron.setdefault(_ALT_RE.sub('', parts[0]).lower(), []).append(tuple(parts[1:]))
    return pron


def _keys(phones: Tuple[str, ...]) -> Set[Tuple[str, ...]]:
    """Return the pronunciation and its single-phone deletions."""
    return {phones} | {phones[:i] + phones[i + 1:] for i in range(len(phones))}


class SoundsLike:
    """Which words of a vocabulary sound like a given word (edit distance <= 1 in phones).

    Two pronunciations share a deletion key exactly when one phone substituted, inserted or
    deleted turns one into the other (or they are equal), so the lookup is a few dictionary
    reads. ``words`` restricts the answers (the language model's vocabulary).
    """

    def __init__(self, words: Iterable[str], path: Optional[str] = None):
        """Index ``words`` by the pronunciations of the dictionary at ``path`` (default: ours)."""
        path = path or default_dictionary()
        if path is None:
            raise FileNotFoundError('no pronouncing dictionary: pocketsphinx (which ships the '
                                    'CMU dictionary) is not installed')
        self.pron = read_dictionary(path)
        self._index: Dict[Tuple[str, ...], Set[str]] = {}
        for w in words:
            for p in self.pron.get(w, ()):
                for k in _keys(p):
                    self._index.setdefault(k, set()).add(w)

    def __call__(self, word: str) -> FrozenSet[str]:
        """Return the indexed words that sound like ``word`` (``word`` itself when indexed)."""
        out: Set[str] = set()
        for p in self.pron.get(word.lower(), ()):
            for k in _keys(p):
                out |= self._index.get(k, set())
        return frozenset(out)
