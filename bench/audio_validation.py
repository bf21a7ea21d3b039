"""Validation runs behind the audio choices (never the benchmark's held-out clips or noises).

All on validation speech in *training* noises (``--part``); WER against what the recogniser
hears on the clean clip (``repair``: against the true sentences):

- ``enhancer``: which enhancer weights and which ``halt_db``. Speech: the 4 human clips of
  pocketsphinx-testdata that are not the benchmark's (``goforward``, ``numbers``,
  ``something``, a tidigits string) and ``--synthetic`` (16) flite/espeak-ng utterances of the
  language corpus' dev split; noise: pink, alsa, white, brown in rotation at 0, 5, 10 dB and
  clean. Prints WER per SNR for no enhancement, 2 and 4 fixed steps, and adaptive halting at
  halt_db 1.5, 2, 3, 4 (with mean steps), for each ``--weights`` file. The first model (the
  ``lsd`` objective) is in git: ``git show 4378e37:sage_irp_ros/plugins/audio/weights/
  enhancer.pt > lsd.pt`` (and ``enhancer.json`` beside it).
- ``mask``: why the committed enhancer falls short of the ideal ratio mask: its final mask on
  the bins the speech dominates and on those the noise dominates, beside the ideal mask's, and
  the WER through each (same items as ``enhancer``).
- ``proxy``: which distance to the clean speech follows WER: per SNR, the mean mel distance
  (``train.mel_dist_db``, what the committed objective and the energy measure) and the
  recogniser's acoustic-model divergence (``acoustic.AcousticModel.divergence``, what
  ``--objective mel_am`` adds) of the noisy input, of each ``--weights`` enhancer's adaptive
  output and of the ideal ratio mask's output; WER of each is in ``enhancer`` and ``mask``.
- ``pareto``: the benchmark's Pareto sweep (``audio_bench.pareto_sweep``: every fixed step
  count 0-4 against adaptive halting, ``core/pareto.py``'s figures) on the enhancer's items:
  where the halting is chosen, beside the held-out figure of ``make bench``.
- ``classical``: the simple baselines beside the enhancer, on its items: no enhancement (the
  recogniser's own noise removal only: the bundled en-us model's ``feat.params`` turns
  ``remove_noise`` on, and a decoder setting does not override it) and a classical Wiener filter
  (each bin's noise power from its ``q`` quantile over the utterance; gain
  ``sqrt(snr / (1 + snr))`` with ``snr = P / (alpha N) - 1``, floored), at a few settings.
- ``repair``: the language repair's ``guess_margin`` and the confidence threshold. Speech: 40
  flite/espeak-ng utterances of the dev split, each in a training noise at 5 and 10 dB,
  recognised without enhancement; WER against the true sentences for masks written as plain
  ``[MASK]``, as ``[MASK:heard]`` (words that sound alike) and as ``[MASK:heard|alt|alt]`` (the
  recogniser's N-best alternatives) at margins 0-4 nats, per threshold. ``--texts other``: the
  utterances read sentences of fortune files outside the language model's corpus instead (the
  robot's speech need not be the model's kind of text). ``weighted``: the alternatives with the
  recogniser's probabilities (``[MASK:a=0.3|b=0.7]``) at acoustic weights 0.5-4, margin 0.

    OMP_NUM_THREADS=1 .venv/bin/python bench/audio_validation.py --part repair
    OMP_NUM_THREADS=1 .venv/bin/python bench/audio_validation.py --part enhancer \\
        --weights sage_irp_ros/plugins/audio/weights/enhancer.pt lsd.pt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from sage_irp_ros.core.loop import refine  # noqa: E402
from sage_irp_ros.core.plugin import HaltConfig  # noqa: E402
from sage_irp_ros.plugins.audio import dsp  # noqa: E402
from sage_irp_ros.plugins.audio.plugin import DEFAULT_WEIGHTS, AudioIRP  # noqa: E402
from sage_irp_ros.plugins.audio.recognize import (  # noqa: E402
    Recogniser,
    Word,
    corpus_wer,
    masked_text,
    text_of,
    wer_words,
)
from sage_irp_ros.plugins.audio.speech import say, voices  # noqa: E402
from sage_irp_ros.plugins.language.corpus import detokenize, load_sentences  # noqa: E402

TESTDATA = '/usr/share/pocketsphinx/test/data/'
HUMAN_VALIDATION = ('goforward.raw', 'numbers.raw', 'something.raw', 'tidigits/dhd.2934z.raw')


def enhancer_items(rec, n_synthetic: int):
    """``(refs, items)``: the references and ``(clip, snr, mixture, speech)`` of the enhancer
    validation (the human clips and ``n_synthetic`` voices, each in its noise at 0, 5, 10 dB
    and clean; ``speech`` is the clean clip at the mixture's gain)."""
    clips = [np.fromfile(TESTDATA + f, dtype='<i2').astype(np.float32) / 32768
             for f in HUMAN_VALIDATION]
    sents = load_sentences(limit=3000)['dev']
    rng = np.random.default_rng(5)
    vs = voices()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_synthetic):
            s = sents[int(rng.integers(len(sents)))]
            v = vs[(i * 3 + 1) % len(vs)]
            clips.append(say(detokenize(s[:12]), v, tmp, 160))
    refs = [wer_words(text_of(rec(x))) for x in clips]
    noises = ['pink', 'alsa', 'white', 'brown']
    items = []
    for i, x in enumerate(clips):
        nz = dsp.TRAIN_NOISES[noises[i % 4]](x.size, np.random.default_rng(50 + i))
        for snr in (0, 5, 10, None):
            y = x.copy() if snr is None else dsp.mix(x, nz, snr)
            pk = np.abs(y).max()
            g = 0.99 / pk if pk > 0.99 else 1.0
            items.append((i, snr, (y * g).astype(np.float32), (x * g).astype(np.float32)))
    return refs, items


def enhancer_part(weights, n_synthetic: int) -> None:
    """Print the enhancer table for every weights file."""
    rec = Recogniser()
    refs, items = enhancer_items(rec, n_synthetic)

    def table(fn):
        by, steps = {}, {}
        for i, snr, y, _ in items:
            out, k = fn(y)
            by.setdefault(snr, ([], []))
            by[snr][0].append(refs[i])
            by[snr][1].append(wer_words(text_of(rec(out))))
            steps.setdefault(snr, []).append(k)
        return ({s: round(corpus_wer(a, b), 3) for s, (a, b) in by.items()},
                {s: round(float(np.mean(v)), 2) for s, v in steps.items()})

    for path in weights:
        plugin = AudioIRP.from_checkpoint(path)
        print(f'== {path} ({plugin.version})', flush=True)

        def fixed(k, plugin=plugin):
            def f(y):
                st = plugin.init_state(y)
                for _ in range(k):
                    st = plugin.step(st, None)
                return plugin.result(st).samples, k
            return f
        for name, fn in (('noisy', lambda y: (y, 0)), ('k2', fixed(2)), ('k4', fixed(4))):
            print(name, table(fn)[0], flush=True)
        for hd in (1.5, 2.0, 3.0, 4.0):
            plugin.halt_db = hd

            def adaptive(y, plugin=plugin):
                r = refine(plugin, y, None, config=HaltConfig(0.02, 1, 8))
                return r.output.samples, r.trace.steps
            w, st = table(adaptive)
            print('halt_db', hd, w, 'steps', st, flush=True)


def pareto_part(n_synthetic: int, weights: str = DEFAULT_WEIGHTS) -> None:
    """Print the Pareto sweep of ``weights`` on the enhancer's items (all SNRs together)."""
    from audio_bench import pareto_sweep

    from sage_irp_ros.core.pareto import Item
    rec = Recogniser()
    refs, items = enhancer_items(rec, n_synthetic)
    plugin = AudioIRP.from_checkpoint(weights)
    its = [Item(x0=y, truth=(j, refs[i])) for j, (i, _, y, _) in enumerate(items)]
    summary, fixed, ad, *_ = pareto_sweep(plugin, rec, its, 4)
    for p in (*fixed, *ad):
        print(f'{p.label}: quality {p.quality:.4f} at {p.steps:.2f} steps', flush=True)
    print({k: summary.get(k) for k in ('adaptive_gain_compute', 'fixed_reaching_adaptive_steps',
                                       'adaptive_gain_quality', 'fixed_at_no_more_compute_steps',
                                       'adaptive_gain_p')})


def proxy_part(weights, n_synthetic: int) -> None:
    """Print the mel distance and the acoustic-model divergence of each estimate, per SNR."""
    from sage_irp_ros.plugins.audio.acoustic import AcousticModel
    from sage_irp_ros.plugins.audio.model import ideal_ratio_mask
    from sage_irp_ros.plugins.audio.train import istft, mel_dist_db, stft
    am = AcousticModel()
    _, items = enhancer_items(Recogniser(n_best=0), n_synthetic)
    plugins = [AudioIRP.from_checkpoint(w) for w in weights]
    got = {}
    for _, snr, y, x in items:
        if snr is None:
            continue
        clean = torch.from_numpy(x)[None]
        floor = am.floor_of(clean)
        post = am.log_posteriors(clean, floor)
        spec = stft(torch.from_numpy(y))
        speech = stft(clean).abs()
        ideal = ideal_ratio_mask(speech[0], stft(torch.from_numpy(y - x)).abs(),
                                 plugins[0].floor)
        ests = {'noisy': torch.from_numpy(y)[None],
                'ideal mask': istft(ideal * spec, y.size)[None]}
        for w, plugin in zip(weights, plugins, strict=True):
            r = refine(plugin, y, None, config=plugin.halt_config())
            ests[w] = torch.from_numpy(r.output.samples)[None]
        with torch.no_grad():
            for name, est in ests.items():
                got.setdefault((snr, name), []).append((
                    mel_dist_db(stft(est).abs(), speech).mean().item(),
                    am.divergence(est, post, floor).item()))
    for snr in (0, 5, 10):
        print(f'{snr} dB: ' + '; '.join(
            f'{name}: mel {np.mean(v, axis=0)[0]:.2f} dB, acoustic {np.mean(v, axis=0)[1]:.3f}'
            for (s, name), v in got.items() if s == snr), flush=True)


def wiener(y: np.ndarray, q: float = 0.1, alpha: float = 1.0, floor: float = 0.1) -> np.ndarray:
    """Return ``y`` through a classical Wiener filter over the plugin's STFT (``classical``).

    Noise power per bin: its ``q`` quantile over the utterance (the level speech pauses leave);
    a priori SNR ``P / (alpha N) - 1`` (power subtraction), gain ``sqrt(snr / (1 + snr))``
    clamped to ``[floor, 1]``, the noisy phase.
    """
    from sage_irp_ros.plugins.audio.train import istft, stft
    x = stft(torch.from_numpy(np.asarray(y, np.float32)))
    p = x.abs().square()
    n = torch.quantile(p, q, dim=-1, keepdim=True)
    snr = (p / (alpha * n + 1e-12) - 1).clamp(min=0)
    g = (snr / (1 + snr)).sqrt().clamp(floor, 1)
    return istft(g * x, y.size).numpy()


def classical_part(n_synthetic: int) -> None:
    """Print WER per SNR of the simple baselines (no model) on the enhancer's items."""
    rec = Recogniser(n_best=0)
    refs, items = enhancer_items(rec, n_synthetic)
    rows = [('noisy', rec, lambda y: y)]
    for q, alpha, floor in ((0.1, 1.0, 0.1), (0.1, 2.0, 0.1), (0.1, 1.0, 0.3), (0.2, 1.0, 0.2)):
        rows.append((f'wiener q {q} alpha {alpha} floor {floor}', rec,
                     lambda y, q=q, a=alpha, f=floor: wiener(y, q, a, f)))
    for name, r, fn in rows:
        by = {}
        for i, snr, y, _ in items:
            by.setdefault(snr, ([], []))
            by[snr][0].append(refs[i])
            by[snr][1].append(wer_words(text_of(r(fn(y)))))
        print(name, {s: round(corpus_wer(a, b), 3) for s, (a, b) in by.items()}, flush=True)


#: Fortune files the language model never read (``corpus.FORTUNE_FILES`` are its corpus): the
#: text of ``--texts other``, as far from the model's corpus as the benchmark's clips may be.
OTHER_FORTUNES = ('songs-poems', 'startrek', 'riddles', 'goedel', 'pratchett', 'tao',
                  'paradoxum', 'men-women', 'art')


def other_sentences():
    """Tokenised sentences (4-12 words, at most 3 other tokens) of :data:`OTHER_FORTUNES`."""
    from sage_irp_ros.plugins.language.corpus import fortune_sentences, tokens
    out = []
    for sent in fortune_sentences(names=OTHER_FORTUNES):
        toks = tokens(sent)
        n_words = sum(t[0].isalpha() for t in toks)
        if 4 <= n_words <= 12 and n_words >= len(toks) - 3:
            out.append(toks)
    return out


def mask_part(n_synthetic: int, weights: str = DEFAULT_WEIGHTS) -> None:
    """Print how an enhancer's final mask (``weights``) compares with the ideal ratio mask.

    Per SNR, on the enhancer validation items (adaptive halting): the mean mask on the bins the
    speech dominates (ideal mask > 0.7) and on those the noise dominates (< 0.3), beside the
    ideal mask's own means there; and the WER through the model's mask, through the ideal one
    (the ceiling, as ``wer_oracle_mask_*`` of the benchmark) and through the model's mask
    sharpened or softened at run time (raised to 1.5 and 2, its square root, floors of 0.1,
    0.2 and 0.3 instead of 0.05).
    """
    from sage_irp_ros.plugins.audio.model import ideal_ratio_mask
    from sage_irp_ros.plugins.audio.train import istft, stft
    rec = Recogniser(n_best=0)
    refs, items = enhancer_items(rec, n_synthetic)
    plugin = AudioIRP.from_checkpoint(weights)
    stats, hyps = {}, {}
    for i, snr, y, x in items:
        if snr is None:
            continue
        r = refine(plugin, y, None, config=plugin.halt_config())
        m, spec = r.state.payload[0], r.state.meta['X']
        ideal = ideal_ratio_mask(stft(torch.from_numpy(x)).abs(),
                                 stft(torch.from_numpy(y - x)).abs(), plugin.floor).reshape(
                                     m.shape)
        sd, nd = ideal > 0.7, ideal < 0.3
        stats.setdefault(snr, []).append((float(m[sd].mean()), float(ideal[sd].mean()),
                                          float(m[nd].mean()), float(ideal[nd].mean())))
        variants = (('model', m), ('ideal', ideal), ('m^1.5', m ** 1.5), ('m^2', m ** 2),
                    ('sqrt m', m.sqrt()), ('floor 0.1', m.clamp(0.1, 1)),
                    ('floor 0.2', m.clamp(0.2, 1)), ('floor 0.3', m.clamp(0.3, 1)))
        for name, mk in variants:
            z = istft(mk * spec, y.size).numpy()
            hyps.setdefault((snr, name), ([], []))
            hyps[(snr, name)][0].append(refs[i])
            hyps[(snr, name)][1].append(wer_words(text_of(rec(z))))
    for snr in sorted(stats):
        a = np.mean(stats[snr], axis=0)
        print(f'{snr} dB: mask on speech-dominated bins {a[0]:.2f} (ideal {a[1]:.2f}), on '
              f'noise-dominated bins {a[2]:.2f} (ideal {a[3]:.2f}); WER through the model\'s '
              f'mask {corpus_wer(*hyps[(snr, "model")]):.3f}, through the ideal mask '
              f'{corpus_wer(*hyps[(snr, "ideal")]):.3f}; at run time: ' + ', '.join(
                  f'{name} {corpus_wer(*hyps[(snr, name)]):.3f}' for name in (
                      'm^1.5', 'm^2', 'sqrt m', 'floor 0.1', 'floor 0.2', 'floor 0.3')),
              flush=True)


def repair_part(texts: str = 'dev') -> None:
    """Print the repair table: WER per threshold for plain masks and guess margins.

    ``texts``: ``dev``, the language corpus' dev split (the model's own kind of text), or
    ``other``, sentences of fortune files outside its corpus (:data:`OTHER_FORTUNES`).
    """
    from sage_irp_ros.plugins.language.plugin import load_default as load_language
    rec = Recogniser()
    lang = load_language()
    sents = load_sentences(limit=3000)['dev'] if texts == 'dev' else other_sentences()
    rng = np.random.default_rng(11)
    vs = voices()
    data = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(40):
            text = detokenize(sents[int(rng.integers(len(sents)))][:12])
            x = say(text, vs[i % len(vs)], tmp, 160)
            nz = dsp.TRAIN_NOISES[['pink', 'alsa', 'white', 'brown', 'hum'][i % 5]](
                x.size, np.random.default_rng(i))
            for snr in (5, 10):
                words = rec(dsp.mix(x, nz, snr))
                data.append((wer_words(text), [Word(w.word, 0, 0, w.confidence,
                                                    w.alternatives, w.alternative_shares)
                                               for w in words]))
    refs = [r for r, _ in data]
    print('before repair', round(corpus_wer(refs, [text_of(ws) for _, ws in data]), 4))
    for thr in (0.1, 0.3, 0.5, 0.7):
        row = {}
        for mode, margins in (('plain', (None,)), ('sounds', (0.0, 1.0, 2.0, 3.0, 4.0)),
                              ('alts', (0.0, 1.0, 2.0, 3.0, 4.0)),
                              ('weighted', (0.5, 1.0, 2.0, 4.0))):
            for mg in margins:
                # sounds, alts: mg is the margin; weighted: the acoustic weight (margin 0)
                lang.guess_margin = lang.alternatives_margin = 0.0 if mode == 'weighted' else (
                    mg if mg is not None else 0.0)
                lang.acoustic_weight = mg if mode == 'weighted' else 0.0
                hyps = [wer_words(str(refine(lang, masked_text(
                    ws, thr, mode != 'plain', mode in ('alts', 'weighted'), mode == 'weighted'),
                    None, config=lang.halt_config()).output)) for _, ws in data]
                row[mode if mg is None else f'{mode} {mg:g}'] = round(corpus_wer(refs, hyps),
                                                                       4)
        print('threshold', thr, row, flush=True)


def main(argv=None) -> int:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--part', choices=('enhancer', 'mask', 'proxy', 'pareto', 'classical',
                                       'repair'),
                    required=True)
    ap.add_argument('--weights', nargs='+', default=[DEFAULT_WEIGHTS])
    ap.add_argument('--synthetic', type=int, default=16)
    ap.add_argument('--texts', choices=('dev', 'other'), default='dev',
                    help='repair: the language corpus\' dev split, or text outside it')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.part == 'enhancer':
        enhancer_part(args.weights, args.synthetic)
    elif args.part == 'mask':
        mask_part(args.synthetic, args.weights[0])
    elif args.part == 'proxy':
        proxy_part(args.weights, args.synthetic)
    elif args.part == 'pareto':
        pareto_part(args.synthetic, args.weights[0])
    elif args.part == 'classical':
        classical_part(args.synthetic)
    else:
        repair_part(args.texts)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
