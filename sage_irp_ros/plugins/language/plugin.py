"""``LanguageIRP``: repair masked text by iterative unmasking (the language plugin, issue #4).

Mask token syntax: ``[MASK]`` (upper-case, brackets included) stands for exactly **one**
missing token: one word (``don't`` and ``robot's`` are one word) or one punctuation mark. A run
of ``n`` dropped words is marked by the sender with ``n`` masks (``"put the [MASK] [MASK] on
the table"``). Everything that is not a mask is kept verbatim in the output (case, spacing,
punctuation, words outside the vocabulary); only the masks are replaced, each by a lower-case
vocabulary word (masks written back to back, ``[MASK][MASK]``, or glued to a word are separate
words: their fills are kept apart by a space). Text without a mask is returned unchanged after
zero steps.

A doubtful word can be sent with what was heard: ``[MASK:heard]`` (the audio node does this for
its low-confidence words). Such a mask is filled only with a word that sounds like ``heard``
(:mod:`~sage_irp_ros.plugins.language.sounds`: at most one phone apart), and ``heard`` itself
is kept unless the model's choice is more probable than it by ``guess_margin`` nats. A guess
outside the model's vocabulary is kept as heard (the model cannot judge it). A sender that knows
what else the word may be lists it: ``[MASK:heard|alt|alt]`` (the audio node's recogniser
alternatives from its N-best list); such a mask is filled only with ``heard`` or one of the
listed words (those in the vocabulary), and ``heard`` is kept unless the model's choice is more
probable by ``alternatives_margin`` (0 nats: the recogniser proposed them itself). When the
sender gives its probability of each listed word, ``[MASK:heard=0.3|alt=0.5|alt=0.2]``, a word's
score is the model's log-probability plus ``acoustic_weight`` times the sender's (a noisy-channel
choice: what the recogniser heard and what the model expects, both).
"""

from __future__ import annotations

import math
import os
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np
import torch

from sage_irp_ros.accel import autocast
from sage_irp_ros.core.loop import HaltConfig
from sage_irp_ros.core.plugin import HALT_STABLE, IRPPlugin, IRPState, Schedule
from sage_irp_ros.plugins.language.corpus import (
    MASK_TEXT,
    alternatives_of,
    guess_of,
    is_mask,
    probabilities_of,
    words,
)
from sage_irp_ros.plugins.language.model import (
    SPECIALS,
    MaskedLM,
    Vocab,
    guess_inputs,
    load_checkpoint,
)

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, 'language_mlm.pt')
DEFAULT_TOKENIZER = os.path.join(WEIGHTS_DIR, 'tokenizer.json')


class LanguageIRP(IRPPlugin):
    """Fill the ``[MASK]`` tokens of an utterance by Mask-Predict style iterative unmasking.

    Four invariants:

    - **state space**: the payload is the current hypothesis, a (1, L) int64 tensor of
      word-level token ids (``L`` <= ``max_len`` tokens of the input); ``state.meta`` holds the
      positions that were masked in the input (``M``, ``n = |M|``), the negative
      log-likelihood of the word now at each of them, what the last pass hands the next one
      (``prev``: the soft fill, i.e. the expected word embedding at each position of ``M``),
      the meaning latent of the hypothesis and the history of its changes. Positions outside
      ``M`` never change. Step 1 is the plain pass: it predicts every masked position at once
      (the one-shot fill). Step ``t >= 1`` keeps the fills whose probability reaches
      ``tau_t = keep_p * (1 - t / H)`` (``H = min(horizon, max_steps)``: the threshold falls
      linearly with the step index as ``schedule.noise_level`` does over ``H``) as flagged
      guesses, re-masks the others, gives every position of ``M`` the previous soft fill and
      predicts all of ``M`` again (a kept guess may be corrected). The network was trained for
      exactly these inputs (``train.py``: self-conditioning), so a later step is a trained
      operation, not the one-shot predictor re-used on its own output.
    - **noise / uncertainty model**: the sender lost whole words (dropped or garbled spans),
      marked ``[MASK]``; nothing is known about them but their count. The model's posterior
      ``p(w_i | visible words)`` at a masked position is the uncertainty; its argmax is the
      fill, and its NLL ranks which fills to doubt (re-mask) next.
    - **energy**: the mean over the originally masked positions of the NLL of the word
      currently filled there, with a still-masked position costing ``ln V`` (a uniform guess
      over the ``V`` words), in **nats per masked token**, in ``[0, ln V]`` (``ln V`` for the
      fully masked input, 0 for a certain filling); lower is better. 0 for text without masks.
      ``energy_scale`` is ``ln V``, so the core's slope ``eps`` is a fraction of it per step.
      Halting: ``stable`` when the **meaning latent** (the model's own mean-pooled final
      hidden state of the hypothesis, L2-normalised, 128-d) moved by less than
      ``stable_eps`` in cosine distance ``1 - cos`` at each of the last ``stable_K`` steps, or
      at once when there is nothing to repair; then the core's rules (``halt_config()`` turns
      the slope rule off: the fills settle, which ``stable`` catches).
    - **contribution (coherence)**: a complete utterance for the downstream parser / planner
      when speech recognition or a channel lost words, plus its meaning latent
      (:meth:`meaning`) for other plugins; easy repairs stop after 2-3 steps and return their
      budget.

    The plugin reads only the masked text: ``ctx`` is ignored, and no reference text exists
    anywhere in it (no oracle). One instance holds the network and configuration only, so any
    number of texts may be refined at once (threads) with one instance.
    """

    kind = 'language'
    version = 'language-mlm-2'

    #: Nats by which the model's choice must beat a sender's guess (``[MASK:heard]``) to
    #: replace it; chosen on validation speech (docs/AUDIO.md, "Language repair").
    GUESS_MARGIN = 3.0
    #: The same for a guess with listed alternatives (``[MASK:heard|alt|alt]``): the
    #: recogniser itself proposed them, so no margin; chosen on validation speech too.
    ALTERNATIVES_MARGIN = 0.0
    #: Weight of the sender's log-probabilities of listed words beside the model's; chosen on
    #: validation speech (docs/LANGUAGE.md).
    ACOUSTIC_WEIGHT = 0.5

    def __init__(self, net: MaskedLM, vocab: Vocab, horizon: int = 8, keep_p: float = 0.95,
                 stable_eps: float = 1e-3, stable_K: int = 2, device: str = 'cpu',
                 guess_margin: float = GUESS_MARGIN, sounds_like: Any = None,
                 alternatives_margin: float = ALTERNATIVES_MARGIN,
                 acoustic_weight: float = ACOUSTIC_WEIGHT, precision: str = 'fp32'):
        """Wrap a trained ``net`` and its ``vocab`` with the schedule and halting parameters.

        ``device`` is 'cpu', 'cuda' or 'cuda:N'; ``precision`` 'fp32', or 'fp16' on CUDA: the
        network's passes under autocast, the log-probabilities (the energy) and the meaning
        latent in float32.

        ``horizon`` is the length ``H`` of the linear mask schedule (steps), ``keep_p`` the
        starting trust threshold (probability) of that schedule; ``stable_eps`` the
        cosine-distance threshold and ``stable_K`` the window of the ``stable`` rule.
        ``guess_margin``: how much more probable (nats) the model's choice must be than a
        sender's guess to replace it; ``alternatives_margin``: the same when the sender listed
        the alternatives; ``acoustic_weight``: the weight of the sender's log-probabilities of
        listed words beside the model's; ``sounds_like``: a ``word -> words`` callable (default:
        :class:`~sage_irp_ros.plugins.language.sounds.SoundsLike` over the vocabulary, built
        when the first guess arrives).
        """
        if not net.cfg.self_cond:
            raise ValueError('the language plugin needs a self-conditioned model '
                             '(train.py --self-cond > 0)')
        if len(vocab) != net.cfg.vocab_size:
            raise ValueError(f'vocabulary of {len(vocab)} words does not match the model '
                             f'({net.cfg.vocab_size})')
        if horizon < 1 or stable_K < 1 or not stable_eps >= 0 or not 0 < keep_p <= 1:
            raise ValueError('horizon, stable_K >= 1, stable_eps >= 0, 0 < keep_p <= 1 needed')
        if not (guess_margin >= 0 and alternatives_margin >= 0 and acoustic_weight >= 0):
            raise ValueError(f'guess_margin, alternatives_margin and acoustic_weight must be '
                             f'>= 0, got {guess_margin}, {alternatives_margin} and '
                             f'{acoustic_weight}')
        self.acoustic_weight = float(acoustic_weight)
        self.guess_margin = float(guess_margin)
        self.alternatives_margin = float(alternatives_margin)
        self._sounds_like = sounds_like
        dev = torch.device(device)
        if dev.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError(f'device {device!r} requested but CUDA is not available')
        if dev.type not in ('cpu', 'cuda'):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        autocast(dev, precision)  # refuses fp16 off CUDA
        self.precision = precision
        self.device = dev
        self.net = net.to(dev).eval()
        self.vocab = vocab
        self.horizon = int(horizon)
        self.keep_p = float(keep_p)
        self.stable_eps = float(stable_eps)
        self.stable_K = int(stable_K)
        self.log_v = math.log(len(vocab) - len(SPECIALS))
        self._ban = torch.zeros(len(vocab), device=dev)
        self._ban[[vocab.token_to_id[s] for s in SPECIALS]] = -math.inf

    def _amp(self):
        return autocast(self.device, self.precision)

    @classmethod
    def from_files(cls, weights: str, tokenizer: str, **kwargs: Any) -> 'LanguageIRP':
        """Load a checkpoint and tokenizer written by ``train.py``."""
        net, _ = load_checkpoint(weights)
        return cls(net, Vocab.from_file(tokenizer), **kwargs)

    #: Passes the node runs by default. On the dev split the adaptive rule (``stable``, up to
    #: ``ADAPTIVE_MAX_STEPS``) is not better than a fixed number of passes at equal compute
    #: (docs/LANGUAGE.md, "Does adaptive compute pay?"), so the default is two fixed passes;
    #: set the node's ``max_steps`` to ``ADAPTIVE_MAX_STEPS`` for the adaptive rule.
    DEFAULT_PASSES = 2
    ADAPTIVE_MAX_STEPS = 14

    def halt_config(self, max_steps: int = DEFAULT_PASSES) -> HaltConfig:
        """Return the plugin's halting: ``stable`` and ``max_steps`` only (slope rule off).

        With the default ``max_steps`` (2) every text with a mask gets exactly two passes
        (``stable`` needs ``stable_K`` quiet steps after the first, so it cannot end a run that
        short); text without a mask still passes through at once.
        """
        return HaltConfig(eps=0.0, K=max_steps + 1, max_steps=max_steps)

    def adaptive_halt_config(self) -> HaltConfig:
        """Return the adaptive rule: ``stable``, at most ``ADAPTIVE_MAX_STEPS`` passes."""
        return self.halt_config(self.ADAPTIVE_MAX_STEPS)

    #: Longest utterance accepted, tokens. Longer than the model's ``max_len`` (32) it is read
    #: in overlapping windows of ``max_len`` tokens (half a window apart); each mask is filled
    #: in the window where it sits most centrally, and the meaning latent is the normalised
    #: mean of the windows' latents.
    MAX_TOKENS = 512

    # --- the contract -------------------------------------------------------------------
    def _windows(self, n_tokens: int) -> torch.Tensor:
        """Return (W, n) token indices of the windows covering ``n_tokens`` tokens."""
        n = self.net.cfg.max_len
        if n_tokens <= n:
            return torch.arange(n_tokens, device=self.device)[None]
        starts = list(range(0, n_tokens - n + 1, n // 2))
        if starts[-1] != n_tokens - n:
            starts.append(n_tokens - n)
        return torch.stack([torch.arange(a, a + n, device=self.device) for a in starts])

    def _meaning(self, ids: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
        with self._amp():
            h = self.net.hidden(ids[0][win])
        pooled = MaskedLM.pooled(h.float())
        return pooled[0] if len(pooled) == 1 else torch.nn.functional.normalize(
            pooled.mean(0), dim=-1)

    def init_state(self, x0: Any, ctx: Optional[Mapping[str, Any]] = None) -> IRPState:
        """Split the text into tokens; masks become ``[MASK]`` ids (``ctx`` is not read)."""
        if not isinstance(x0, str):
            raise ValueError(f'expected a str, got {type(x0).__name__}')
        spans = words(x0)
        if len(spans) > self.MAX_TOKENS:
            raise ValueError(f'{len(spans)} tokens (words and punctuation marks): the plugin '
                             f'takes at most {self.MAX_TOKENS} per utterance')
        toks = [t for t, _, _ in spans]
        masked, guesses, alts, probs, kept = [], [], [], [], {}
        for i, t in enumerate(toks):
            if not is_mask(t):
                continue
            g = guess_of(t)
            if g is not None and g not in self.vocab.token_to_id:
                kept[i] = toks[i] = g  # a guess the model cannot judge: kept as heard
                continue
            masked.append(i)
            guesses.append(g)
            alts.append(alternatives_of(t))
            probs.append(probabilities_of(t))
            toks[i] = MASK_TEXT
        meta = {'text': x0, 'spans': [(a, b) for _, a, b in spans], 'masked': masked,
                'masked_set': frozenset(masked), 'guesses': guesses, 'alternatives': alts,
                'kept_guesses': kept,
                'allow': self._allowed(guesses, alts, probs), 'guess_lp': None,
                'fill_lp': None,
                'nll': np.full(len(masked), self.log_v), 'filled': False, 'dmeaning': []}
        ids = torch.tensor([self.vocab.encode(toks)], dtype=torch.long, device=self.device)
        # The windows the network reads (one: the whole text, when it fits) and, per window,
        # the masked positions it fills: each mask in the window where it is most central, so
        # the windows' fills in row-major order are the masks in text order. Fixed per input.
        win = self._windows(len(spans))
        centre = win.float().mean(1)
        sel = torch.zeros(win.shape, dtype=torch.bool, device=self.device)
        for p in masked:
            w = int(torch.argmin((centre - p).abs()))
            sel[w, p - int(win[w, 0])] = True
        meta['win'], meta['sel'] = win, sel
        if masked:
            with torch.inference_mode():
                meta['meaning'] = self._meaning(ids, win)
        return IRPState(payload=ids, meta=meta)

    def sounds_like(self, word: str):
        """Return the vocabulary's words that sound like ``word`` (index built on first use)."""
        if self._sounds_like is None:
            from sage_irp_ros.plugins.language.sounds import SoundsLike
            try:
                self._sounds_like = SoundsLike(self.vocab.token_to_id)
            except FileNotFoundError:
                self._sounds_like = lambda w: frozenset()  # no dictionary: guesses are kept
        return self._sounds_like(word)

    def _allowed(self, guesses: List[Optional[str]],
                 alts: List[Optional[Tuple[str, ...]]],
                 probs: List[Optional[Mapping[str, float]]]) -> Optional[torch.Tensor]:
        """(n_masked, V) additive mask: 0 where a fill is allowed, -inf where not; None: all.

        A plain mask allows every word; a guessed one the guess and its listed alternatives
        when the sender gave them, else the words that sound like it. With the sender's
        probabilities, an allowed word gets ``acoustic_weight`` times its log-probability.
        """
        if not any(g is not None for g in guesses):
            return None
        allow = torch.zeros(len(guesses), len(self.vocab), device=self.device)
        t2i = self.vocab.token_to_id
        for j, (g, alt) in enumerate(zip(guesses, alts, strict=True)):
            if g is None:
                continue
            cands = self.sounds_like(g) if alt is None else alt
            ok = [t2i[w] for w in cands if w in t2i] + [t2i[g]]
            allow[j] = -math.inf
            allow[j, ok] = 0.0
            if probs[j] is not None and self.acoustic_weight > 0:
                for w, p in probs[j].items():
                    if w in t2i:
                        allow[j, t2i[w]] = self.acoustic_weight * math.log(p)
        return allow

    def energy(self, state: IRPState) -> float:
        """Mean NLL (nats) of the fills over the masked positions; ``ln V`` if still masked."""
        nll = state.meta['nll']
        return float(nll.mean()) if len(nll) else 0.0

    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """One pass of the network over the masked positions (see the class docstring).

        Step 1 is the plain pass (the one-shot fill). Later steps keep the fills whose
        probability reaches the falling threshold ``tau`` as flagged guesses, re-mask the
        others, hand every masked position the previous pass's soft fill, and re-predict all
        of them (a kept guess may be corrected).
        """
        m = state.meta
        sel, win = m['sel'], m['win']
        ids = state.payload[0][win]  # (W, n): the windows of the current hypothesis
        with torch.inference_mode():
            if not m['filled']:
                with self._amp():
                    h_all = self.net.hidden(ids)
            else:
                h = max(1, min(self.horizon, schedule.max_steps))
                tau = self.keep_p * max(0.0, 1.0 - schedule.step_idx / h)
                keep = torch.from_numpy(np.exp(-m['nll']) >= tau).to(self.device)
                inp, guess = guess_inputs(ids, sel, ids[sel], keep, self.vocab.mask)
                with self._amp():
                    h_all = self.net.hidden(inp, prev=m['prev'], guess=guess)
            with self._amp():
                logits = self.net.logits(h_all[sel])
            logp = torch.log_softmax(logits.float() + self._ban, -1)
            scored = logp if m['allow'] is None else logp + m['allow']
            best, tok = scored.max(-1)
            rows = torch.arange(len(tok), device=self.device)
            lp_tok = logp[rows, tok]  # the model's own: the energy
            guess_lp = None
            if m['allow'] is not None:  # scores with the sender's weights: the margin rule
                gid = [self.vocab.token_to_id[g] if g is not None else 0 for g in m['guesses']]
                guess_lp = scored[rows, torch.tensor(gid, device=self.device)].cpu().numpy()
            new = state.payload.clone()
            new[0, m['masked']] = tok
            meaning = self._meaning(new, win)
            dm = float(1.0 - torch.dot(meaning, m['meaning']).clamp(-1, 1))
            prev = self.net.recycled(h_all, sel, logp)
        return state.evolve(new, nll=(-lp_tok).cpu().numpy().astype(np.float64), prev=prev,
                            filled=True, meaning=meaning, guess_lp=guess_lp,
                            fill_lp=best.cpu().numpy().astype(np.float64),
                            dmeaning=m['dmeaning'] + [max(dm, 0.0)])

    def halt(self, state: IRPState, energies: list) -> Optional[str]:
        """'stable': nothing to repair, or the meaning moved < ``stable_eps`` for K steps."""
        m = state.meta
        if not m['masked']:
            return HALT_STABLE
        d = m['dmeaning']
        if len(d) >= self.stable_K and all(x < self.stable_eps for x in d[-self.stable_K:]):
            return HALT_STABLE
        return None

    def energy_scale(self, e0: float) -> float:
        """``ln V``: the energy of a fully masked input."""
        return self.log_v

    def filled_tokens(self, state: IRPState) -> List[str]:
        """Return the words at the masked positions, in order.

        A plain mask not yet filled reads ``[MASK]``; a guessed one its guess until a fill
        beats the guess by ``guess_margin`` nats (``alternatives_margin`` with listed
        alternatives).
        """
        m = state.meta
        ids = state.payload[0]
        out = []
        for j, (i, g, alt) in enumerate(zip(m['masked'], m['guesses'], m['alternatives'],
                                           strict=True)):
            if not m['filled']:
                out.append(MASK_TEXT if g is None else g)
                continue
            word = self.vocab.id_to_token[int(ids[i])]
            margin = self.guess_margin if alt is None else self.alternatives_margin
            if g is not None and m['fill_lp'][j] - m['guess_lp'][j] <= margin:
                word = g
            out.append(word)
        return out

    def _replacements(self, state: IRPState) -> List[Tuple[int, str]]:
        """``(token index, word)`` of every mask, in text order (guesses kept as heard too)."""
        m = state.meta
        rep = dict(zip(m['masked'], self.filled_tokens(state), strict=True))
        rep.update(m['kept_guesses'])
        return sorted(rep.items())

    def result(self, state: IRPState) -> str:
        """Return the input text with each ``[MASK]`` replaced by its fill (rest verbatim)."""
        text, spans = state.meta['text'], state.meta['spans']
        out, last = [], 0
        reps = self._replacements(state)
        replaced = {i for i, _ in reps}
        for i, word in reps:
            a, b = spans[i]
            between = text[last:a]
            out.append(between)
            # Masks written back to back ("[MASK][MASK]") are separate words: keep them apart
            # (and from a word glued to the mask) with a space, unless one of them is a
            # punctuation mark.
            before = ''.join(out)[-1:]
            if before and not before.isspace() and _wordlike(before) and _wordlike(word):
                out.append(' ')
            out.append(word)
            after = text[b:b + 1]
            if after and _wordlike(after) and _wordlike(word) and not (
                    i + 1 in replaced and spans[i + 1][0] == b):
                out.append(' ')
            last = b
        out.append(text[last:])
        return ''.join(out)

    def meaning(self, state: IRPState) -> np.ndarray:
        """Return the meaning latent of ``state`` (float32, L2-normalised, ``d_model``-d)."""
        if 'meaning' not in state.meta:  # nothing masked: computed on demand
            if state.payload.shape[1] == 0:
                return np.zeros(self.net.cfg.d_model, dtype=np.float32)
            with torch.inference_mode():
                return self._meaning(state.payload, state.meta['win']).cpu().numpy().astype(
                    np.float32)
        return state.meta['meaning'].cpu().numpy().astype(np.float32)


def _wordlike(s: str) -> bool:
    """Return True for text that starts with a letter or digit (a word, not punctuation)."""
    return bool(s) and s[0].isalnum()


def load_default(device: str = 'cpu', precision: str = 'fp32', **kwargs: Any) -> LanguageIRP:
    """Load the plugin with the committed weights (``weights/`` next to this module).

    ``precision``: 'fp32', or 'fp16' on CUDA.
    """
    for p in (DEFAULT_WEIGHTS, DEFAULT_TOKENIZER):
        if not os.path.exists(p):
            raise FileNotFoundError(f'committed language weights missing: {p}')
    return LanguageIRP.from_files(DEFAULT_WEIGHTS, DEFAULT_TOKENIZER, device=device,
                                  precision=precision, **kwargs)
