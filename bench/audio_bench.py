"""Audio benchmark: WER on held-out human speech in held-out noise, adaptive vs fixed steps.

Held-out speech: the human recordings of Debian ``pocketsphinx-testdata`` (librivox and cards
clips, with their transcripts), never used in training (the enhancer trained on flite /
espeak-ng voices). Held-out noise: the ``fan``, ``engine`` and ``crackle`` generators of
:data:`~sage_irp_ros.plugins.audio.dsp.HELD_OUT_NOISES` (never in training) at 0, 5, 10 and
20 dB SNR (training used -3, 2.5, 7.5, 15 and 30 dB), and clean. Each clip gets one noise type
(rotating over the clips) at every level.

Measured (``out/bench/audio.json``):

- WER (jiwer, lower-cased words) of pocketsphinx on: the noisy input (``wer_noisy_<snr>db``),
  the adaptive enhancement (``wer_enhanced_<snr>db``), clean (``wer_clean``) and clean through
  the enhancer (``wer_clean_enhanced``), and every fixed step count (the Pareto sweep of
  ``sage_irp_ros.core.pareto`` over all conditions together; ``adaptive_gain_compute``);
- ``steps_mean_clean`` and steps per SNR;
- ``rtf``: CPU seconds of the whole pipeline (VAD on 100 ms chunks, enhancement, recognition)
  per second of a 5 dB stream; ``rtf_with_partials``: the same with partial results every
  0.5 s of speech (the node's ``partial_interval_s``);
- ``cpu_silence_ratio``: CPU of a stream that is 80 % silence (a quiet room-noise bed at
  -50 dBFS, which passes the level gate, so silero-vad runs) over the same length all speech;
- ``wer_oracle_mask_<snr>db``: the noisy input through the ideal ratio mask computed from the
  true speech and noise (:func:`oracle_masked`): the most any mask could give the recogniser;
- ``wer_before_repair`` / ``wer_after_repair``: the 5 dB enhanced transcripts before and after
  the language node's repair of the words under the confidence threshold, masked as the node
  sends them (``[MASK:heard=p|alt=p|alt=p]``: only the recogniser's N-best alternatives may
  replace a word, weighed by the recogniser's probabilities and the language model's);
  ``wer_after_repair_alternatives_lm_only``: the same list without the probabilities (the
  language model alone chooses); ``wer_after_repair_sounds_alike``: masked as
  ``[MASK:heard]`` (``n_best`` 0: words that sound alike); ``wer_after_repair_plain_masks``:
  masked as plain ``[MASK]``.

    python bench/audio_bench.py [--quick] [--repeats N]
    python bench/audio_bench.py --timing-only   # the two CPU figures alone, a minute or two
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from sage_irp_ros.core.loop import refine  # noqa: E402
from sage_irp_ros.core.pareto import Item, sweep  # noqa: E402
from sage_irp_ros.core.plugin import HaltConfig  # noqa: E402
from sage_irp_ros.plugins.audio import dsp  # noqa: E402
from sage_irp_ros.plugins.audio.model import ideal_ratio_mask  # noqa: E402
from sage_irp_ros.plugins.audio.plugin import AudioIRP, load_default  # noqa: E402
from sage_irp_ros.plugins.audio.recognize import (  # noqa: E402
    PartialTranscriber,
    Recogniser,
    masked_text,
    text_of,
)
from sage_irp_ros.plugins.audio.recognize import corpus_wer as wer  # noqa: E402
from sage_irp_ros.plugins.audio.recognize import wer_words as norm  # noqa: E402
from sage_irp_ros.plugins.audio.train import istft, stft  # noqa: E402
from sage_irp_ros.plugins.audio.vad import Segmenter  # noqa: E402

TESTDATA = '/usr/share/pocketsphinx/test/data'
SNRS = (0, 5, 10, 20)
CONF_THRESHOLD = 0.5


def held_out_clips():
    """``[(name, samples, transcript)]`` of pocketsphinx-testdata's human recordings."""
    out = []
    for sub in ('librivox', 'cards'):
        trans = {}
        for path in glob.glob(os.path.join(TESTDATA, sub, '*transcription')):
            for line in open(path):
                text, _, key = line.strip().rpartition(' (')
                trans[key.rstrip(')')] = norm(text.replace('<s>', '').replace('</s>', ''))
        for wav in sorted(glob.glob(os.path.join(TESTDATA, sub, '*.wav'))):
            key = os.path.splitext(os.path.basename(wav))[0]
            if key in trans:
                out.append((f'{sub}/{key}', dsp.read_wav(wav), trans[key]))
    if not out:
        raise SystemExit('pocketsphinx-testdata is not installed (Debian package; make setup)')
    return out


def held_out_mixtures(clips, snrs):
    """Yield ``(clip index, noise name, snr, mixture, speech)``: the benchmark's conditions.

    Clip ``i`` (samples) is heard in the held-out noise ``i`` mod 3 (seed ``100 + i``) at each
    of ``snrs`` (None: clean); mixture and speech share one gain that keeps the mixture's peak
    at most 0.99, so ``speech`` is exactly the speech in the mixture.
    """
    noises = list(dsp.HELD_OUT_NOISES)
    for ci, x in enumerate(clips):
        name = noises[ci % len(noises)]
        noise = dsp.HELD_OUT_NOISES[name](x.size, np.random.default_rng(100 + ci))
        for snr in snrs:
            y = x.copy() if snr is None else dsp.mix(x, noise, float(snr))
            peak = float(np.abs(y).max())
            gain = 0.99 / peak if peak > 0.99 else 1.0
            yield ci, name, snr, (y * gain).astype(np.float32), (x * gain).astype(np.float32)


def oracle_masked(speech: np.ndarray, mixture: np.ndarray, floor: float) -> np.ndarray:
    """The mixture through the ideal ratio mask: what a perfect mask model would give.

    ``model.ideal_ratio_mask`` of the true speech ``S`` and noise ``N = mixture - speech`` on
    the plugin's STFT (32 ms Hann, 16 ms hop; ``train.stft``), in the plugin's mask range
    ``[floor, 1]``, applied to the mixture with its phase. It reads the clean speech, so it is
    an upper bound on what mask refinement can do for the recogniser, not a method.
    """
    s = torch.as_tensor(speech, dtype=torch.float32)
    y = torch.as_tensor(mixture, dtype=torch.float32)
    Y = stft(y)
    mask = ideal_ratio_mask(stft(s).abs(), stft(y - s).abs(), floor)
    return istft(Y * mask, len(mixture)).numpy().astype(np.float32)


def pareto_sweep(plugin, rec, items, k_max: int, halt_dbs=(2.0, 4.0)):
    """The Pareto sweep of the enhancer on ``items`` (``Item(x0=mixture, truth=(index, ref))``).

    Quality: 1 - corpus WER of the recogniser ``rec`` on the outputs; fixed ``k = 0..k_max``
    and adaptive halting at the plugin's ``halt_db`` (the operating point) and ``halt_dbs``,
    each capped at ``k_max`` steps. Returns ``(summary, fixed, adaptive, hyp, cache, cfg_k)``:
    ``hyp(output, index)`` recognises once per (item, steps), ``cache`` holds those texts and
    ``cfg_k`` is the operating point's halting.
    """
    cache = {}

    def hyp(out, idx):
        key = (idx, out.steps)
        if key not in cache:
            cache[key] = text_of(rec(out.samples))
        return cache[key]

    def quality(outs, states, truths):
        return 1.0 - wer([t[1] for t in truths], [norm(hyp(o, t[0])) for o, t in
                                                  zip(outs, truths, strict=True)])

    def item_score(out, state, truth):
        return -wer([truth[1]], [norm(hyp(out, truth[0]))])

    base = plugin.halt_config()
    cfg_k = HaltConfig(base.eps, base.K, min(base.max_steps, k_max))
    adaptive = {'adaptive': (cfg_k, {'halt_db': plugin.halt_db, 'eps': base.eps})}
    for hd in halt_dbs:
        other = copy.copy(plugin)  # the same network, another threshold
        other.halt_db = hd
        adaptive[f'halt_db={hd}'] = (cfg_k, {'halt_db': hd, 'eps': base.eps}, other)
    summary, fixed, ad = sweep(plugin, items, quality, item_score, k_max, adaptive, 'adaptive')
    return summary, fixed, ad, hyp, cache, cfg_k


def pipeline_cpu(plugin, rec, stream, partial_s=0.0):
    """CPU s of the node's work on ``stream`` in 100 ms chunks; utterances heard.

    ``partial_s`` > 0: also what the node does with ``partial_interval_s`` (a streaming
    decoder fed each utterance's speech as it comes, its words read every interval).
    """
    seg = Segmenter()
    partial = PartialTranscriber(seg, partial_s) if partial_s > 0 else None
    cfg = plugin.halt_config()
    t = time.process_time()
    n_utt = 0

    def hear(utterances):
        for u in utterances:
            rec(refine(plugin, u.samples, None, config=cfg).output.samples)
        return len(utterances)

    for i in range(0, stream.size, 1600):
        ended = seg.feed(stream[i:i + 1600])
        if partial is not None:  # as AudioIRPNode._stream_partial
            partial.update(bool(ended))
        n_utt += hear(ended)
    n_utt += hear(seg.flush())
    return time.process_time() - t, n_utt


def pipeline_timing(plugin, rec, five, repeats: int = 3) -> dict:
    """RTF of the whole pipeline on the 5 dB clips in a row; CPU of 80 % silence vs all speech.

    Each stream is timed ``repeats`` times, the streams interleaved, and the median taken (CPU
    time moves by tens of per cent between runs on a shared machine; every run is kept in
    ``*_runs``). Reads no transcript: timing only.
    """
    rng = np.random.default_rng(7)
    gap = np.zeros(int(0.6 * dsp.RATE), np.float32)
    speech = np.concatenate([np.concatenate([y, gap]) for y in five]).astype(np.float32)
    n = speech.size
    bed = dsp.pink(n, rng) * 10 ** (-50 / 20)
    all_speech = (speech + bed).astype(np.float32)
    quiet = bed.copy()
    head = int(0.2 * n)
    quiet[:head] += speech[:head]
    quiet = quiet.astype(np.float32)
    runs = {'rtf': [], 'rtf_with_partials': [], 'all_speech': [], 'quiet': []}
    n_utt = 0
    repeats = max(1, repeats)
    for _ in range(repeats):
        cpu, n_utt = pipeline_cpu(plugin, rec, speech)
        runs['rtf'].append(cpu / (n / dsp.RATE))
        cpu_p, _ = pipeline_cpu(plugin, rec, speech, partial_s=0.5)
        runs['rtf_with_partials'].append(cpu_p / (n / dsp.RATE))
        runs['all_speech'].append(pipeline_cpu(plugin, rec, all_speech)[0])
        runs['quiet'].append(pipeline_cpu(plugin, rec, quiet)[0])
    med = {k: float(np.median(v)) for k, v in runs.items()}
    ratios = [q / a for q, a in zip(runs['quiet'], runs['all_speech'], strict=True)]
    return {'rtf': round(med['rtf'], 4), 'rtf_with_partials': round(med['rtf_with_partials'], 4),
            'rtf_stream_s': round(n / dsp.RATE, 2), 'rtf_utterances': n_utt,
            'cpu_silence_ratio': round(float(np.median(ratios)), 4),
            'cpu_all_speech_s': round(med['all_speech'], 3),
            'cpu_80pct_silence_s': round(med['quiet'], 3), 'timing_repeats': repeats,
            'rtf_runs': [round(x, 4) for x in runs['rtf']],
            'cpu_silence_ratio_runs': [round(x, 4) for x in ratios]}


def main(argv=None) -> int:
    """Run the benchmark; write out/bench/audio.json (and the Pareto plot)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='4 clips, 2 SNRs, k <= 2')
    ap.add_argument('--k-max', type=int, default=4)
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'bench', 'audio.json'))
    ap.add_argument('--weights', default=None,
                    help='an enhancer checkpoint instead of the committed one (.json beside it)')
    ap.add_argument('--repeats', type=int, default=3, help='timing runs of each stream (median)')
    ap.add_argument('--timing-only', action='store_true',
                    help='only the RTF and silence-CPU figures (no WER, no transcript read); '
                         'printed, nothing written')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.time()
    plugin = load_default() if args.weights is None else AudioIRP.from_checkpoint(args.weights)
    rec = Recogniser()
    clips = held_out_clips()
    snrs = SNRS
    k_max = args.k_max
    if args.quick:
        clips, snrs, k_max = clips[:2] + clips[5:7], (5, 20), 2
    if args.timing_only:
        five = [y for *_, y, _ in held_out_mixtures([x for _, x, _ in clips], (5,))]
        print(json.dumps({'model_version': plugin.version,
                          **pipeline_timing(plugin, rec, five, args.repeats)}, indent=1))
        return 0
    items, conds, cleans = [], [], []
    for ci, noise_name, snr, y, s in held_out_mixtures([x for _, x, _ in clips],
                                                       (*snrs, None)):
        name, _, ref = clips[ci]
        items.append(Item(x0=y, truth=(len(items), ref)))
        conds.append({'clip': name, 'noise': noise_name, 'snr': snr})
        cleans.append(s)  # the speech in the mixture

    summary, fixed, ad, hyp, cache, cfg_k = pareto_sweep(plugin, rec, items, k_max)

    # Per condition: noisy (fixed k=0), adaptive (its runs), clean.
    res = {}
    steps_of = {}
    hyps_ad = {}
    for i, it in enumerate(items):
        r = refine(plugin, it.x0, None, config=cfg_k)
        steps_of[i] = r.trace.steps
        hyps_ad[i] = norm(hyp(r.output, i))
    hyps_noisy = {i: norm(cache[(i, 0)]) for i in range(len(items))}
    refs = {i: it.truth[1] for i, it in enumerate(items)}

    def sel(snr):
        return [i for i, c in enumerate(conds) if c['snr'] == snr]

    for snr in (*snrs, None):
        ids = sel(snr)
        tag = 'clean' if snr is None else f'{snr}db'
        w_noisy = wer([refs[i] for i in ids], [hyps_noisy[i] for i in ids])
        w_enh = wer([refs[i] for i in ids], [hyps_ad[i] for i in ids])
        if snr is not None:  # the ceiling of any mask: the ideal one, from the true speech
            res[f'wer_oracle_mask_{tag}'] = round(wer(
                [refs[i] for i in ids],
                [norm(text_of(rec(oracle_masked(cleans[i], items[i].x0, plugin.floor))))
                 for i in ids]), 4)
        if snr is None:
            res['wer_clean'] = round(w_noisy, 4)
            res['wer_clean_enhanced'] = round(w_enh, 4)
            res['steps_mean_clean'] = round(float(np.mean([steps_of[i] for i in ids])), 3)
        else:
            res[f'wer_noisy_{tag}'] = round(w_noisy, 4)
            res[f'wer_enhanced_{tag}'] = round(w_enh, 4)
            res[f'steps_mean_{tag}'] = round(float(np.mean([steps_of[i] for i in ids])), 3)
    res['adaptive_gain_compute'] = summary['adaptive_gain_compute']

    res.update(pipeline_timing(plugin, rec, [it.x0 for it, c in zip(items, conds, strict=True)
                                             if c['snr'] == 5], args.repeats))

    # Language repair of the low-confidence words (5 dB, enhanced): as the node sends them
    # ([MASK:heard|alt|alt], repaired only to the recogniser's N-best alternatives), as
    # [MASK:heard] (n_best 0: repaired only to a word that sounds alike) and as plain [MASK]s.
    try:
        from sage_irp_ros.plugins.language.plugin import load_default as load_language
        lang = load_language()
        before, rr = [], []
        modes = {'alternatives': (True, True, True), 'alternatives_lm_only': (True, True, False),
                 'sounds_alike': (True, False, False), 'plain_masks': (False, False, False)}
        after = {m: [] for m in modes}
        changed = {m: 0 for m in modes}
        for i in sel(5):
            r = refine(plugin, items[i].x0, None, config=cfg_k)
            words = rec(r.output.samples)
            text = norm(text_of(words))
            before.append(text)
            rr.append(refs[i])
            for mode, (guesses, alts, probs) in modes.items():
                masked = masked_text(words, CONF_THRESHOLD, guesses, alts, probs)
                out = text
                if '[MASK' in masked:
                    try:
                        lr = refine(lang, masked, None, config=lang.halt_config())
                        out = norm(str(lr.output))
                    except ValueError:
                        pass
                changed[mode] += sum(a != b for a, b in
                                     zip(out.split(), text.split(), strict=False))
                after[mode].append(out)
        res['wer_before_repair'] = round(wer(rr, before), 4)
        res['wer_after_repair'] = round(wer(rr, after['alternatives']), 4)
        res['repair_words_changed'] = changed['alternatives']
        for mode in ('alternatives_lm_only', 'sounds_alike', 'plain_masks'):
            res[f'wer_after_repair_{mode}'] = round(wer(rr, after[mode]), 4)
            res[f'repair_words_changed_{mode}'] = changed[mode]
        res['repair_guess_margin'] = lang.guess_margin
        res['repair_alternatives_margin'] = lang.alternatives_margin
        res['repair_acoustic_weight'] = lang.acoustic_weight
        res['repair_n_best'] = rec.n_best
    except Exception as exc:  # noqa: BLE001 - report, do not hide the rest
        res['repair_error'] = repr(exc)

    res.update({
        'held_out_speech': [c[0] for c in clips], 'held_out_noises': list(dsp.HELD_OUT_NOISES),
        'snrs_db': list(snrs), 'items': len(items), 'k_max': k_max, 'quick': args.quick,
        'confidence_threshold': CONF_THRESHOLD, 'model_version': plugin.version,
        'pareto': summary, 'seconds': round(time.time() - t_start, 1),
        'floors': {}})
    f = res['floors']
    f['wer_5db_relative_drop>=0.25'] = round(1 - res['wer_enhanced_5db'] /
                                             max(res['wer_noisy_5db'], 1e-9), 4)
    f['clean_wer_raise<=0.01'] = round(res['wer_clean_enhanced'] - res['wer_clean'], 4)
    f['steps_mean_clean<=1'] = res['steps_mean_clean']
    f['adaptive_gain_compute>=1.5'] = res['adaptive_gain_compute']
    f['rtf<=0.5'] = res['rtf']
    f['cpu_silence_ratio<0.25'] = res['cpu_silence_ratio']
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as fh:
        json.dump(res, fh, indent=1, default=str)
    try:
        from sage_irp_ros.core.pareto import plot
        plot(os.path.splitext(args.out)[0] + '_pareto.png', fixed, ad, 'adaptive',
             'audio: 1 - WER vs compute (held-out speech and noise)', '1 - WER')
    except Exception:  # noqa: BLE001 - the plot is optional
        pass
    print(json.dumps({k: v for k, v in res.items() if k not in ('pareto',)}, indent=1,
                     default=str))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
