"""The masked language model of the language plugin: a small pre-norm transformer encoder.

Word-level vocabulary (``tokenizer.json``, a ``tokenizers`` WordLevel model): one token per
word or punctuation mark, so one ``[MASK]`` in the input is exactly one missing word. The
network maps token ids (B, L) to per-position logits over the vocabulary (output projection
tied to the input embedding) and to a pooled sentence state (mean of the final hidden states
over the non-padding positions, L2-normalised) that the plugin uses as its meaning latent.
A self-conditioned model (``MLMConfig.self_cond``) also takes what an earlier pass made of the
sentence (``MaskedLM.recycled``) and flags for the words that are earlier guesses.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, UNK, MASK = '[PAD]', '[UNK]', '[MASK]'
SPECIALS = (PAD, UNK, MASK)


@dataclass
class MLMConfig:
    """Shape of the network (saved with the weights)."""

    vocab_size: int = 8003
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    max_len: int = 32
    dropout: float = 0.05
    self_cond: str = ''  # recycled input: '' none, 'soft' soft fill, 'hidden' hidden states


class Vocab:
    """Word-level vocabulary read from a ``tokenizers`` ``tokenizer.json`` (WordLevel model).

    Only ``json`` is needed to read it at run time; ``tokenizers`` writes it (``train.py``).
    """

    def __init__(self, token_to_id: Dict[str, int]):
        self.token_to_id = dict(token_to_id)
        self.id_to_token: List[str] = [''] * len(self.token_to_id)
        for t, i in self.token_to_id.items():
            self.id_to_token[i] = t
        self.pad = self.token_to_id[PAD]
        self.unk = self.token_to_id[UNK]
        self.mask = self.token_to_id[MASK]

    @classmethod
    def from_file(cls, path: str) -> 'Vocab':
        """Load the vocabulary of a ``tokenizer.json``."""
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        return cls(data['model']['vocab'])

    def __len__(self) -> int:
        return len(self.id_to_token)

    def encode(self, toks: List[str]) -> List[int]:
        """Token strings to ids (``[UNK]`` for words outside the vocabulary)."""
        get = self.token_to_id.get
        return [get(t, self.unk) for t in toks]


class MaskedLM(nn.Module):
    """Token + position embeddings, pre-norm transformer encoder, tied output head."""

    def __init__(self, cfg: MLMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout,
                                           activation='gelu', batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        if cfg.self_cond not in ('', 'soft', 'hidden'):
            raise ValueError(f"self_cond must be '', 'soft' or 'hidden', not {cfg.self_cond!r}")
        if cfg.self_cond:
            # self-conditioning: what the previous pass made of the sentence (recycled()) and
            # a learned "this word is a guess" vector enter the input; zero-initialised, so
            # the plain pass (no previous pass) is the ordinary masked LM
            self.sc_proj = nn.Linear(cfg.d_model, cfg.d_model)
            nn.init.zeros_(self.sc_proj.weight)
            nn.init.zeros_(self.sc_proj.bias)
            self.guess = nn.Parameter(torch.zeros(cfg.d_model))

    def hidden(self, ids: torch.Tensor, pad: Optional[torch.Tensor] = None,
               prev: Optional[torch.Tensor] = None,
               guess: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return the final hidden states (B, L, d); ``pad``: (B, L) bool, True at padding.

        With ``cfg.self_cond``: ``prev`` (B, L, d) is :meth:`recycled` of the previous pass and
        ``guess`` (B, L) bool marks the positions whose token is a previous fill rather than
        given text. Both omitted: the plain (first) pass.
        """
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(pos)[None]
        if prev is not None or guess is not None:
            if not self.cfg.self_cond:
                raise ValueError('this model was trained without self-conditioning')
            if prev is not None:
                x = x + self.sc_proj(prev)
            if guess is not None:
                x = x + guess.unsqueeze(-1).to(x.dtype) * self.guess
        x = self.encoder(self.drop(x), src_key_padding_mask=pad)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of hidden states (..., d) -> (..., V)."""
        return F.linear(h, self.tok.weight, self.head_bias)

    def recycled(self, h: torch.Tensor, sel: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """Return the ``prev`` input of the next pass, from this pass's hidden states ``h``.

        ``'hidden'``: ``h / sqrt(d)`` at every position (unit-norm rows on average, the scale
        of the word embeddings); ``'soft'``: the expected word embedding under ``logp`` (n, V)
        at the positions ``sel`` (B, L), zero elsewhere.
        """
        if self.cfg.self_cond == 'hidden':
            return h / math.sqrt(self.cfg.d_model)
        out = torch.zeros_like(h)
        out[sel] = logp.exp() @ self.tok.weight
        return out

    @staticmethod
    def pooled(h: torch.Tensor, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean of ``h`` over non-padding positions, L2-normalised: (B, d)."""
        if pad is None:
            m = h.mean(1)
        else:
            keep = (~pad).unsqueeze(-1).to(h.dtype)
            m = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return F.normalize(m, dim=-1)

    def forward(self, ids: torch.Tensor, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, L, V)."""
        return self.logits(self.hidden(ids, pad))


def guess_inputs(ids: torch.Tensor, sel: torch.Tensor, fills: torch.Tensor,
                 keep: torch.Tensor, mask_id: int):
    """Input ids and guess flags of a recycled pass (training and the plugin alike).

    ``sel`` (B, L) bool marks the positions to fill, ``fills`` (n,) the previous pass's fills
    there (row-major order of ``sel``), ``keep`` (n,) bool those kept as flagged guesses; the
    others are re-masked. Returns ``(ids, guess)`` for :meth:`MaskedLM.hidden`.
    """
    x = ids.clone()
    x[sel] = torch.where(keep, fills, torch.full_like(fills, mask_id))
    guess = torch.zeros_like(sel)
    guess[sel] = keep
    return x, guess


def n_params(net: nn.Module) -> int:
    """Return the number of parameters."""
    return sum(p.numel() for p in net.parameters())


def save_checkpoint(path: str, net: MaskedLM, extra: Optional[dict] = None) -> None:
    """Save config + fp16 weights (halves the committed size; loaded back as fp32)."""
    state = {k: v.detach().to(torch.float16) if v.is_floating_point() else v
             for k, v in net.state_dict().items()}
    torch.save({'config': asdict(net.cfg), 'state_dict': state, 'extra': extra or {}}, path)


def load_checkpoint(path: str) -> Tuple[MaskedLM, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (fp32, eval mode)."""
    ck = torch.load(path, map_location='cpu', weights_only=True)
    net = MaskedLM(MLMConfig(**ck['config']))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v
                         for k, v in ck['state_dict'].items()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, ck.get('extra', {})


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
