"""Language plugin benchmark: held-out repair quality, steps to stable, time per sentence.

    PYTHONPATH=. python bench/language_bench.py [--limit N] [--out out/bench/language.json]
    PYTHONPATH=. python bench/language_bench.py --split dev --weights DIR --out /tmp/dev.json

For each span-masking rate (15 %, 30 %, 50 % of the tokens, spans drawn deterministically
per sentence) every held-out sentence (corpus.py's hash rule; never trained on, never tuned
on) is masked and handed, as the masked string alone, to the plugin:

- iterative: the core loop with the adaptive rule ``plugin.adaptive_halt_config()``
  (``stable``, at most 14 passes);
- default: the node's default, ``plugin.halt_config()`` (two fixed passes);
- one-shot: the same loop with ``max_steps=1`` (a single prediction pass).

``token_acc_*`` is the fraction of masked tokens whose fill equals the original token (words
outside the vocabulary count as misses), ``meaning_cos`` the mean cosine between the
all-MiniLM-L6-v2 embeddings of the repaired and the original sentence (``meaning_cos_masked``:
the same for the masked input, as a floor), steps are those of the iterative runs.
``tokens_only_*_right`` count the masked tokens one run got right and the other wrong;
``sign_test_p`` is McNemar's exact two-sided test on them (how likely a split this uneven is
if neither run were better).

``deletion_baseline`` is the meaning cosine of simply deleting the masked words (no repair at
all); ``meaning_gain_over_deletion`` is the mean per-sentence difference of the repaired and
the deleted sentence's cosine to the original (> 0: the repair carries meaning that deleting
loses; the deletion baseline scores 0 on it by definition), ``repair_beats_deletion_frac`` the
fraction of sentences where it is positive.

Pareto (``--pareto-rates``, default 30 and 50 %; :mod:`sage_irp_ros.core.pareto`): token
accuracy against mean compute for every fixed number of passes ``k = 0..8`` (``init_state``,
``k`` steps, ``result``: no energy, no halting checks) and for the adaptive rule (``stable``)
with its thresholds swept (``stable_K`` 1-2, ``stable_eps`` 1e-4..3e-2); the operating point is
the adaptive rule with its default thresholds (the node's default is two fixed passes since
this comparison: docs/LANGUAGE.md). ``adaptive_gain_p`` is McNemar's test, token by token, of
the adaptive run against the best fixed ``k`` at no more mean steps. PNGs go next to the JSON.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sage_irp_ros.core import pareto  # noqa: E402
from sage_irp_ros.core.loop import HaltConfig  # noqa: E402
from sage_irp_ros.plugins.language import corpus  # noqa: E402
from sage_irp_ros.plugins.language.evaluate import (  # noqa: E402
    MASK_RATES,
    MiniLMEmbedder,
    cosines,
    mask_sentence,
    paired_sign_test,
    percentile,
    run_set,
)
from sage_irp_ros.plugins.language.plugin import LanguageIRP, load_default  # noqa: E402


def deletion(toks, rate: float) -> str:
    """The deletion baseline: the sentence with its masked words simply left out."""
    _, pos = mask_sentence(toks, rate)
    gone = set(pos)
    return ' '.join(t for i, t in enumerate(toks) if i not in gone)


def pareto_at(plugin: LanguageIRP, sents, rate: float, png: str) -> dict:
    """Fixed passes k = 0..8 against the adaptive rule swept, at one masking rate."""
    items = []
    for toks in sents:
        text, pos = mask_sentence(toks, rate)
        items.append(pareto.Item(text, [toks[p] for p in pos]))

    def item_hits(state, truth):
        return [a == b for a, b in zip(plugin.filled_tokens(state), truth, strict=True)]

    def item_score(out, state, truth):
        hits = item_hits(state, truth)
        return sum(hits) / max(len(hits), 1)

    def quality(outs, states, truths):
        hits = [h for s, t in zip(states, truths, strict=True) for h in item_hits(s, t)]
        return sum(hits) / max(len(hits), 1)

    def variant(K, eps):
        return LanguageIRP(plugin.net, plugin.vocab, horizon=plugin.horizon,
                           keep_p=plugin.keep_p, stable_eps=eps, stable_K=K)
    cfg = plugin.adaptive_halt_config()
    default = f'stable K={plugin.stable_K} eps={plugin.stable_eps:g} (adaptive default)'
    adaptive = {default: (cfg, {'stable_K': plugin.stable_K, 'stable_eps': plugin.stable_eps},
                          plugin)}
    for K, eps in ((1, 3e-2), (1, 1e-2), (1, 1e-3), (2, 1e-2), (2, 1e-4)):
        adaptive[f'stable K={K} eps={eps:g}'] = (cfg, {'stable_K': K, 'stable_eps': eps},
                                                  variant(K, eps))
    summary, fixed, ad = pareto.sweep(plugin, items, quality, item_score, 8, adaptive, default)
    pareto.plot(png, fixed, ad, default, f'language, {int(rate * 100)} % masked: token '
                f'accuracy vs compute ({len(items)} held-out sentences)', 'token accuracy')
    # The paired test, token by token, against the best fixed k at no more mean steps.
    k = next(p.param for p in fixed if p.label == summary['fixed_at_no_more_compute_steps'])
    hits_a, hits_b = [], []
    for it in items:
        hits_a += item_hits(pareto.refine(plugin, it.x0, None, config=cfg).state, it.truth)
        hits_b += item_hits(pareto.run_fixed(plugin, it, k)[1], it.truth)
    sign = paired_sign_test(hits_a, hits_b)
    summary.update({'adaptive_gain_p': round(sign['p'], 6),
                    'tokens_only_adaptive_right': sign['a_only'],
                    'tokens_only_fixed_right': sign['b_only'],
                    'pareto_png': os.path.basename(png), 'pareto_sentences': len(items)})
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--limit', type=int, default=None, help='first N sentences of the split')
    ap.add_argument('--split', choices=('held_out', 'dev'), default='held_out',
                    help='dev: for choosing settings and comparing training runs')
    ap.add_argument('--weights', default=None,
                    help='folder with language_mlm.pt + tokenizer.json (default: committed)')
    ap.add_argument('--horizon', type=int, default=None)
    ap.add_argument('--keep-p', type=float, default=None)
    ap.add_argument('--stable-eps', type=float, default=None)
    ap.add_argument('--stable-K', type=int, default=None)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--rates', default=','.join(str(r) for r in MASK_RATES),
                    help='masking rates of the iterative vs one-shot comparison')
    ap.add_argument('--pareto-rates', default='0.3,0.5',
                    help='masking rates of the Pareto comparison ("" = none)')
    ap.add_argument('--pareto-limit', type=int, default=None,
                    help='first N sentences for the Pareto comparison (default: all)')
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'bench', 'language.json'))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    sents = corpus.load_sentences()[args.split][:args.limit]
    kw = {k: v for k, v in (('horizon', args.horizon), ('keep_p', args.keep_p),
                            ('stable_eps', args.stable_eps), ('stable_K', args.stable_K))
          if v is not None}
    if args.weights:
        plugin = LanguageIRP.from_files(os.path.join(args.weights, 'language_mlm.pt'),
                                        os.path.join(args.weights, 'tokenizer.json'), **kw)
    else:
        plugin = load_default(**kw)
    emb = MiniLMEmbedder()
    ref = emb([' '.join(s) for s in sents])
    cfg = plugin.adaptive_halt_config()
    res = {'sentences': len(sents), 'split': f'{args.split} (corpus.split_of)',
           'weights': args.weights or 'committed',
           'plugin_version': plugin.version, 'halt_config': vars(cfg) if hasattr(cfg, '__dict__')
           else str(cfg), 'horizon': plugin.horizon, 'stable_eps': plugin.stable_eps,
           'stable_K': plugin.stable_K, 'torch_threads': torch.get_num_threads(),
           'cpu': platform.processor() or platform.machine(), 'rates': {}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for rate in [float(x) for x in args.rates.split(',') if x.strip()]:
        it = run_set(plugin, sents, rate, cfg)
        one = run_set(plugin, sents, rate, HaltConfig(eps=0.0, K=2, max_steps=1))
        two = run_set(plugin, sents, rate, plugin.halt_config())
        sign = paired_sign_test(it['hits'], one['hits'])
        masked_in = [mask_sentence(s, rate)[0] for s in sents]
        deleted = [deletion(s, rate) for s in sents]
        cos_it = cosines(emb(it['outputs']), ref)
        cos_one = cosines(emb(one['outputs']), ref)
        cos_masked = cosines(emb(masked_in), ref)
        cos_deleted = cosines(emb(deleted), ref)
        r = {
            'token_acc_iterative': round(it['token_acc'], 4),
            'token_acc_oneshot': round(one['token_acc'], 4),
            'token_acc_default': round(two['token_acc'], 4),
            'tokens_only_iterative_right': sign['a_only'],
            'tokens_only_oneshot_right': sign['b_only'],
            'sign_test_p': round(sign['p'], 4),
            'meaning_cos': round(float(np.mean(cos_it)), 4),
            'meaning_cos_oneshot': round(float(np.mean(cos_one)), 4),
            'meaning_cos_masked': round(float(np.mean(cos_masked)), 4),
            'deletion_baseline': round(float(np.mean(cos_deleted)), 4),
            'meaning_gain_over_deletion': round(float(np.mean(cos_it - cos_deleted)), 4),
            'meaning_gain_over_deletion_oneshot': round(float(np.mean(cos_one - cos_deleted)),
                                                        4),
            'repair_beats_deletion_frac': round(float(np.mean(cos_it > cos_deleted)), 4),
            'steps_to_stable_median': percentile(it['steps'], 50),
            'steps_to_stable_p95': percentile(it['steps'], 95),
            'steps_max': int(max(it['steps'])),
            'halt_reasons': it['halt_reasons'],
            'masked_tokens': it['masked_tokens'],
            'masked_oov_frac': round(it['masked_oov_frac'], 4),
            'wall_ms_per_sentence_iterative': round(1e3 * float(np.mean(it['wall_s'])), 2),
            'wall_ms_per_sentence_oneshot': round(1e3 * float(np.mean(one['wall_s'])), 2),
            'wall_ms_per_sentence_default': round(1e3 * float(np.mean(two['wall_s'])), 2),
        }
        res['rates'][f'{int(rate * 100)}'] = r
        print(rate, json.dumps(r), flush=True)
    for rate in [float(x) for x in args.pareto_rates.split(',') if x.strip()]:
        key = f'{int(round(rate * 100))}'
        r = res['rates'].setdefault(key, {})
        r.update(pareto_at(plugin, sents[:args.pareto_limit], rate,
                           os.path.join(os.path.dirname(args.out), f'language_pareto_{key}.png')))
        print(rate, 'pareto', json.dumps({k: v for k, v in r.items() if 'adaptive' in k}),
              flush=True)
    for k in ('adaptive_gain_compute', 'adaptive_gain_quality', 'adaptive_gain_p'):
        res[k] = {rk: rv.get(k) for rk, rv in res['rates'].items() if k in rv}
    res['bench_seconds'] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(res, f, indent=2)
    print('wrote', args.out)


if __name__ == '__main__':
    main()
