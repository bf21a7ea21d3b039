"""Language plugin benchmark: held-out repair quality, steps to stable, time per sentence.

    PYTHONPATH=. python bench/language_bench.py [--limit N] [--out out/bench/language.json]
    PYTHONPATH=. python bench/language_bench.py --split dev --weights DIR --out /tmp/dev.json

For each span-masking rate (15 %, 30 %, 50 % of the tokens, spans drawn deterministically
per sentence) every held-out sentence (corpus.py's hash rule; never trained on, never tuned
on) is masked and handed, as the masked string alone, to the plugin:

- iterative: the core loop with ``plugin.halt_config()`` (``stable`` or ``max_steps``);
- one-shot: the same loop with ``max_steps=1`` (a single prediction pass).

``token_acc_*`` is the fraction of masked tokens whose fill equals the original token (words
outside the vocabulary count as misses), ``meaning_cos`` the mean cosine between the
all-MiniLM-L6-v2 embeddings of the repaired and the original sentence (``meaning_cos_masked``:
the same for the masked input, as a floor), steps are those of the iterative runs.
``tokens_only_*_right`` count the masked tokens one run got right and the other wrong;
``sign_test_p`` is McNemar's exact two-sided test on them (how likely a split this uneven is
if neither run were better).
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
    cfg = plugin.halt_config()
    res = {'sentences': len(sents), 'split': f'{args.split} (corpus.split_of)',
           'weights': args.weights or 'committed',
           'plugin_version': plugin.version, 'halt_config': vars(cfg) if hasattr(cfg, '__dict__')
           else str(cfg), 'horizon': plugin.horizon, 'stable_eps': plugin.stable_eps,
           'stable_K': plugin.stable_K, 'torch_threads': torch.get_num_threads(),
           'cpu': platform.processor() or platform.machine(), 'rates': {}}
    for rate in MASK_RATES:
        it = run_set(plugin, sents, rate, cfg)
        one = run_set(plugin, sents, rate, HaltConfig(eps=0.0, K=2, max_steps=1))
        sign = paired_sign_test(it['hits'], one['hits'])
        masked_in = [mask_sentence(s, rate)[0] for s in sents]
        cos_it = cosines(emb(it['outputs']), ref)
        cos_one = cosines(emb(one['outputs']), ref)
        cos_masked = cosines(emb(masked_in), ref)
        r = {
            'token_acc_iterative': round(it['token_acc'], 4),
            'token_acc_oneshot': round(one['token_acc'], 4),
            'tokens_only_iterative_right': sign['a_only'],
            'tokens_only_oneshot_right': sign['b_only'],
            'sign_test_p': round(sign['p'], 4),
            'meaning_cos': round(float(np.mean(cos_it)), 4),
            'meaning_cos_oneshot': round(float(np.mean(cos_one)), 4),
            'meaning_cos_masked': round(float(np.mean(cos_masked)), 4),
            'steps_to_stable_median': percentile(it['steps'], 50),
            'steps_to_stable_p95': percentile(it['steps'], 95),
            'steps_max': int(max(it['steps'])),
            'halt_reasons': it['halt_reasons'],
            'masked_tokens': it['masked_tokens'],
            'masked_oov_frac': round(it['masked_oov_frac'], 4),
            'wall_ms_per_sentence_iterative': round(1e3 * float(np.mean(it['wall_s'])), 2),
            'wall_ms_per_sentence_oneshot': round(1e3 * float(np.mean(one['wall_s'])), 2),
        }
        res['rates'][f'{int(rate * 100)}'] = r
        print(rate, json.dumps(r), flush=True)
    res['bench_seconds'] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(res, f, indent=2)
    print('wrote', args.out)


if __name__ == '__main__':
    main()
