"""The language plugin's hooks for ``make demo`` and the orchestrator benchmark (no ROS).

Named by the language entry of :mod:`sage_irp_ros.registry`:

- :func:`score`: token accuracy of the recorded ``/language/text_repaired`` over the masked
  words of the bag's utterances (a repaired text is matched to its utterance by its unmasked
  words, :func:`match_utterance`);
- :func:`workload`: held-out sentences for ``bench/orchestrator_bench.py``.

The demo draws its steps per utterance as a plain bar per run (no ``plot_steps``). Messages are
read through their ``data`` field only.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

REPAIRED_TOPIC = '/language/text_repaired'
MASK_WORD = '[MASK]'


def match_utterance(text: str, utterances: List[dict]) -> Optional[dict]:
    """Return the utterance whose unmasked words ``text`` (a repaired text) keeps verbatim."""
    words = text.split(' ')
    for u in utterances:
        masked = u['masked_text'].split(' ')
        if len(masked) == len(words) and all(
                m == w for m, w in zip(masked, words, strict=True) if m != MASK_WORD):
            return u
    return None


def score(recorded: Dict[str, list], truth: dict) -> dict:
    """Score the repaired texts: the fraction of masked words restored exactly.

    ``truth['utterances']`` lists each utterance's ``index``, ``masked_text``, ``tokens`` and
    ``masked_positions``. Each utterance counts once (its first repair).
    """
    correct = total = 0
    answered = set()
    for _, m in recorded.get(REPAIRED_TOPIC, []):
        u = match_utterance(m.data, truth['utterances'])
        if u is None or u['index'] in answered:
            continue
        answered.add(u['index'])
        words = m.data.split(' ')
        for p in u['masked_positions']:
            correct += int(words[p] == u['tokens'][p])
            total += 1
    return {'answered': len(answered), 'quality': {
        'metric': 'token_accuracy', 'value': round(correct / max(total, 1), 4),
        'n': len(answered), 'masked_tokens': total}}


def workload(cycles: int) -> Tuple[object, object, list, Callable]:
    """Return the orchestrator benchmark's language workload: one held-out sentence per cycle.

    Sentences alternate 15 % and 50 % span masking; the metric is token accuracy over the
    masked positions. Returns ``(plugin, halt config, [(masked text, masked words)],
    metric(results, truths) -> float)``.
    """
    from sage_irp_ros.plugins.language import corpus
    from sage_irp_ros.plugins.language.evaluate import mask_sentence
    from sage_irp_ros.plugins.language.plugin import load_default
    language = load_default()
    sents = corpus.load_sentences()['held_out']
    items = []
    for i in range(cycles):
        toks = sents[i]
        text, pos = mask_sentence(toks, 0.15 if i % 2 == 0 else 0.5)
        items.append((text, [toks[p] for p in pos]))

    def metric(results, truths) -> float:
        ok = n = 0
        for r, words in zip(results, truths, strict=True):
            fills = language.filled_tokens(r.state)
            ok += sum(a == b for a, b in zip(fills, words, strict=True))
            n += len(words)
        return ok / max(n, 1)

    return language, language.halt_config(), items, metric
