"""Train the language plugin's masked language model from scratch on the Debian corpora.

``python -m sage_irp_ros.plugins.language.train [--quick] [--out DIR] [--seed N]``

Writes ``DIR/language_mlm.pt`` (config + fp16 weights), ``DIR/tokenizer.json`` (a
``tokenizers`` WordLevel vocabulary) and ``DIR/language_mlm.json`` (config, seed, command,
corpus recipe, training time, dev metrics). ``--quick`` trains a tiny model on a slice of the
corpus in seconds (for tests). A run is deterministic given the seed and thread count.

Masking during training follows the conditional masked LM of Mask-Predict: per sentence a
rate ``r ~ U(0.1, 0.9)``, ``max(1, round(r * L))`` positions masked, half of the sentences as
contiguous spans (geometric span lengths, mean 3), half as scattered positions; the loss is
the cross-entropy at the masked positions whose word is in the vocabulary.

Self-conditioning (``--self-cond P``, after Chen et al., "Analog Bits", 2022): in a fraction
``P`` of the batches, 1 to ``--recycle`` earlier passes (no gradient) fill the masks first; a
threshold ``tau ~ U(0, 1)`` per sentence keeps the fills with probability ``>= tau`` as
flagged guesses and re-masks the rest, and every pass hands the next one what
``MaskedLM.recycled`` makes of it (``--recycle-input soft``: the expected word embedding at
each masked position; ``hidden``: the final hidden states). The loss is that of the last
pass, at every masked position (kept guesses included, so the model learns to correct them).
The other batches train the plain pass. These are exactly the inputs the plugin's refinement
steps give the model, so step 2 onwards is a trained operation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from sage_irp_ros.plugins.language import corpus
from sage_irp_ros.plugins.language.model import (
    SPECIALS,
    MaskedLM,
    MLMConfig,
    Vocab,
    guess_inputs,
    lr_at,
    n_params,
    save_checkpoint,
)

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')


def train_tokenizer(sentences: List[List[str]], vocab_size: int, path: str) -> Vocab:
    """Train a ``tokenizers`` WordLevel vocabulary (most frequent words) and save it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.WordLevel(unk_token=SPECIALS[1]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=2,
                                        special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator((' '.join(s) for s in sentences), trainer=trainer)
    tok.save(path)
    return Vocab.from_file(path)


def encode_all(sentences: List[List[str]], vocab: Vocab, max_len: int):
    """(N, max_len) int64 ids padded with PAD, and lengths."""
    ids = np.full((len(sentences), max_len), vocab.pad, dtype=np.int64)
    lens = np.zeros(len(sentences), dtype=np.int64)
    for i, s in enumerate(sentences):
        e = vocab.encode(s[:max_len])
        ids[i, :len(e)] = e
        lens[i] = len(e)
    return ids, lens


def span_positions(rng: np.random.Generator, length: int, n: int, mean_span: float = 3.0):
    """``n`` distinct positions of ``range(length)`` drawn as contiguous spans."""
    chosen = np.zeros(length, dtype=bool)
    while chosen.sum() < n:
        span = int(min(rng.geometric(1.0 / mean_span), n - chosen.sum()))
        start = int(rng.integers(0, length - span + 1))
        chosen[start:start + span] = True
    idx = np.flatnonzero(chosen)
    if len(idx) > n:  # overlapping spans overshot: trim from the end
        idx = idx[:n]
    return idx


def mask_batch(rng: np.random.Generator, ids: np.ndarray, lens: np.ndarray, vocab: Vocab):
    """Mask a batch for CMLM training: (inputs, targets with -100 where no loss)."""
    inp = ids.copy()
    tgt = np.full_like(ids, -100)
    for i, n_tok in enumerate(lens):
        r = rng.uniform(0.1, 0.9)
        n = max(1, int(round(r * n_tok)))
        if rng.random() < 0.5:
            pos = span_positions(rng, int(n_tok), n)
        else:
            pos = rng.choice(int(n_tok), size=n, replace=False)
        tgt[i, pos] = ids[i, pos]
        inp[i, pos] = vocab.mask
    tgt[tgt == vocab.unk] = -100
    return inp, tgt


def batches(rng: np.random.Generator, lens: np.ndarray, batch: int, group: int = 50):
    """Yield index batches forever: shuffle, sort groups of ``group`` batches by length."""
    while True:
        order = rng.permutation(len(lens))
        for g in range(0, len(order), batch * group):
            chunk = order[g:g + batch * group]
            chunk = chunk[np.argsort(lens[chunk], kind='stable')]
            bs = [chunk[k:k + batch] for k in range(0, len(chunk), batch)]
            for j in rng.permutation(len(bs)):
                if len(bs[j]) == batch:
                    yield bs[j]


@torch.no_grad()
def masked_top1(net: MaskedLM, ids: np.ndarray, lens: np.ndarray, vocab: Vocab, rate: float,
                seed: int = 0) -> float:
    """One-shot top-1 accuracy at span-masked positions (rate of tokens masked), dev metric."""
    rng = np.random.default_rng(seed)
    net.eval()
    hit = tot = 0
    for a in range(0, len(ids), 256):
        b_ids, b_lens = ids[a:a + 256], lens[a:a + 256]
        inp = b_ids.copy()
        tgt = np.full_like(b_ids, -100)
        for i, n_tok in enumerate(b_lens):
            pos = span_positions(rng, int(n_tok), max(1, int(round(rate * n_tok))))
            tgt[i, pos] = b_ids[i, pos]
            inp[i, pos] = vocab.mask
        L = int(b_lens.max())
        x = torch.from_numpy(inp[:, :L])
        logits = net(x, x == vocab.pad)
        logits[..., :len(SPECIALS)] = -1e9
        pred = logits.argmax(-1).numpy()
        t = tgt[:, :L]
        m = t != -100
        hit += int((pred[m] == t[m]).sum())
        tot += int(m.sum())
    return hit / max(tot, 1)


def main(argv=None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='tiny model, corpus slice, seconds')
    ap.add_argument('--out', default=DEFAULT_OUT, help='output folder (default: weights/)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--steps', type=int, default=None, help='optimizer steps')
    ap.add_argument('--batch', type=int, default=None)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--vocab', type=int, default=None, help='vocabulary size incl. specials')
    ap.add_argument('--self-cond', type=float, default=0.5,
                    help='fraction of self-conditioned batches (0: plain masked LM)')
    ap.add_argument('--recycle-input', choices=('soft', 'hidden'), default='soft',
                    help='what a pass hands the next one: soft fill or hidden states')
    ap.add_argument('--recycle', type=int, default=2,
                    help='self-conditioned batches run 1..N earlier passes (no gradient)')
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    data = corpus.load_sentences(limit=1500 if args.quick else None)
    self_cond = args.recycle_input if args.self_cond > 0 else ''
    if args.quick:
        cfg = MLMConfig(vocab_size=args.vocab or 1003, d_model=32, n_layers=1, n_heads=2,
                        d_ff=64, max_len=32, dropout=0.0, self_cond=self_cond)
        steps, batch = args.steps or 40, args.batch or 32
    else:
        cfg = MLMConfig(vocab_size=args.vocab or 8003, self_cond=self_cond)
        steps, batch = args.steps or 2000, args.batch or 128
    tok_path = os.path.join(args.out, 'tokenizer.json')
    vocab = train_tokenizer(data['train'], cfg.vocab_size, tok_path)
    cfg.vocab_size = len(vocab)
    ids, lens = encode_all(data['train'], vocab, cfg.max_len)
    dev_ids, dev_lens = encode_all(data['dev'][:1000], vocab, cfg.max_len)
    net = MaskedLM(cfg)
    print(f'corpus: {len(ids)} train / {len(dev_ids)} dev sentences, vocab {len(vocab)}, '
          f'{n_params(net) / 1e6:.2f}M parameters, {steps} steps x {batch}', flush=True)

    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01,
                            betas=(0.9, 0.98))
    warmup = max(1, min(200, steps // 10))
    ban = torch.zeros(len(vocab))
    ban[[vocab.token_to_id[t] for t in SPECIALS]] = -float('inf')
    it = batches(rng, lens, batch)
    net.train()
    ema = None
    for step in range(steps):
        for g in opt.param_groups:
            g['lr'] = lr_at(step, steps, args.lr, warmup)
        idx = next(it)
        L = int(lens[idx].max())
        inp, tgt = mask_batch(rng, ids[idx, :L], lens[idx], vocab)
        x, y = torch.from_numpy(inp), torch.from_numpy(tgt)
        pad = x == vocab.pad
        if args.self_cond > 0 and rng.random() < args.self_cond:
            filled = x == vocab.mask
            tau = torch.from_numpy(rng.uniform(size=len(idx)))[:, None].expand_as(x)[filled]
            rounds = 1 + int(rng.integers(args.recycle))
            with torch.no_grad():
                xin, prev, guess = x, None, None
                for _ in range(rounds):
                    h = net.hidden(xin, pad, prev=prev, guess=guess)
                    logp = torch.log_softmax(net.logits(h[filled]) + ban, -1)
                    best, fills = logp.max(-1)
                    prev = net.recycled(h, filled, logp)
                    xin, guess = guess_inputs(x, filled, fills, best.exp() >= tau, vocab.mask)
            h = net.hidden(xin, pad, prev=prev, guess=guess)
        else:
            h = net.hidden(x, pad)
        sel = y != -100
        loss = F.cross_entropy(net.logits(h[sel]), y[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        lv = loss.item()
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        if step % 200 == 0 or step == steps - 1:
            print(f'step {step} loss {ema:.3f} lr {opt.param_groups[0]["lr"]:.2e} '
                  f'{time.time() - t0:.0f}s', flush=True)
    train_s = time.time() - t0
    net.eval()
    dev = {f'dev_top1_oneshot_{int(r * 100)}': round(masked_top1(net, dev_ids, dev_lens, vocab,
                                                                 r), 4)
           for r in (0.15, 0.3, 0.5)}
    print('dev', dev, flush=True)
    cmd = 'python -m sage_irp_ros.plugins.language.train ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    meta = {
        'quick': bool(args.quick), 'seed': args.seed, 'command': cmd.strip(),
        'config': asdict(cfg), 'steps': steps, 'batch': batch, 'lr': args.lr,
        'threads': args.threads, 'self_cond': args.self_cond, 'recycle': args.recycle,
        'recycle_input': args.recycle_input, 'params': n_params(net),
        'train_seconds': round(train_s, 1),
        'train_sentences': len(ids), 'dev_sentences_scored': len(dev_ids),
        'corpus_recipe': corpus.RECIPE, 'dev_metrics': dev, 'torch': torch.__version__,
    }
    save_checkpoint(os.path.join(args.out, 'language_mlm.pt'), net, extra={'seed': args.seed})
    with open(os.path.join(args.out, 'language_mlm.json'), 'w') as f:
        json.dump(meta, f, indent=2)
    print(f'wrote {args.out} in {time.time() - t0:.0f}s', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
