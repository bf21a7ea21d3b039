"""Audio in ``make demo``: the sample bag's speech heard, enhanced, recognised and repaired.

    python -m sage_irp_ros.plugins.audio.demo [--bag data/sample_bag] [--out out/demo/audio]
                                              [--snr 5]

The bag's ``/audio/raw`` chunks (100 ms of 16 kHz int16 each) go, in order, through what
``audio_irp_node`` and ``language_irp_node`` run on them (the same classes, in one process,
no DDS): silero-vad cuts the utterances, the enhancement IRP refines each (halting on its
energy, the predicted distance to clean speech), pocketsphinx recognises it, the words
under the confidence threshold are masked with what was heard (``[MASK:heard]``) and the
language plugin repairs them. Twice: the audio **as recorded** (clean speech: the enhancer
should halt at once) and the same audio **with noise** (the benchmark's held-out ``fan``
noise, ``--snr`` dB; mixed here, the bag is not changed). Prints, per utterance, what was said
(the bag's truth), heard without and with enhancement, masked and repaired, with the steps,
energies and WERs; writes ``audio.json`` and ``audio.png`` (the noisy stream's waveform and
spectrogram before and after enhancement, and the energy per step of every utterance) into
``--out``.

``out/bench/audio.json`` (``bench/audio_bench.py``, held-out human speech) has the benchmark
figures; this is the demonstration, on the bag's synthetic voice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

import numpy as np

CHUNK_TOPIC = '/audio/raw'
NOISE_SEED = 4242


TRANSCRIPT_TOPIC = '/speech/transcript'


def score(recorded: Dict[str, list], truth: dict) -> dict:
    """Score the replay demo's transcripts (``make demo``): word accuracy against the bag.

    ``answered``: transcripts received (one per utterance); quality ``word_accuracy``:
    1 - WER (jiwer; lower-cased words) of the transcripts in stamp order against the bag's
    spoken sentences (``truth['audio']['transcript']``), 0 at worst.
    """
    from sage_irp_ros.plugins.audio.recognize import corpus_wer, wer_words
    said = [u['text'] for u in truth['audio']['transcript']]
    msgs = sorted((m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec, m.text)
                  for _, m in recorded.get(TRANSCRIPT_TOPIC, []))
    wer = corpus_wer([' '.join(wer_words(t) for t in said)],
                     [' '.join(wer_words(t) for _, t in msgs)])
    return {'answered': len(msgs), 'quality': {
        'metric': 'word_accuracy', 'value': round(max(0.0, 1.0 - wer), 4), 'n': len(said)}}


def bag_audio(bag: str) -> np.ndarray:
    """Return the bag's ``/audio/raw`` chunks, concatenated (float32 in [-1, 1], 16 kHz mono)."""
    from sage_irp_ros.demo.scoring import read_bag
    msgs = read_bag(bag).get(CHUNK_TOPIC, [])
    if not msgs:
        raise SystemExit(f'{bag} has no {CHUNK_TOPIC}')
    return np.concatenate([np.asarray(m.data, np.int16) for _, m in msgs]).astype(
        np.float32) / 32768.0


def hear(stream: np.ndarray, plugin, lang, rec, segmenter, threshold: float,
         partial_s: float = 0.5) -> List[Dict]:
    """Run the node's pipeline over ``stream`` in 100 ms chunks; one record per utterance.

    With ``partial_s`` > 0, also the node's partial results (``partial_interval_s``): what
    had been said after every ``partial_s`` of each utterance.
    """
    from sage_irp_ros.core.loop import refine
    from sage_irp_ros.plugins.audio.dsp import RATE
    from sage_irp_ros.plugins.audio.recognize import PartialTranscriber, masked_text, text_of
    segmenter.reset()
    partial = PartialTranscriber(segmenter, partial_s) if partial_s > 0 else None
    utts, partials, current = [], [], []
    for i in range(0, stream.size, RATE // 10):
        ended = segmenter.feed(stream[i:i + RATE // 10])
        for _ in ended:  # the previews belong to the utterance that ended
            partials.append(current)
            current = []
        if not ended and not segmenter.in_speech:
            current = []  # an utterance too short to keep ended: its previews go with it
        utts += ended
        words = partial.update(bool(ended)) if partial is not None else None
        if words is not None:
            current.append(text_of(words))
    ended = segmenter.flush()
    for _ in ended:
        partials.append(current)
        current = []
    utts += ended
    out = []
    for u, previews in zip(utts, partials, strict=True):
        r = refine(plugin, u.samples, None, config=plugin.halt_config())
        words = rec(r.output.samples)
        raw = text_of(rec(u.samples))
        masked = masked_text(words, threshold)
        repaired = text_of(words)
        if '[MASK' in masked:
            repaired = str(refine(lang, masked, None, config=lang.halt_config()).output)
        out.append({'start_s': round(u.start_sample / RATE, 3), 'seconds': round(u.seconds, 3),
                    'cut': u.cut, 'heard_unenhanced': raw, 'heard': text_of(words),
                    'partials': previews, 'masked': masked, 'repaired': repaired,
                    'steps': r.trace.steps,
                    'energies_db': [round(e, 3) for e in r.trace.energies],
                    'halt_reason': r.trace.halt_reason,
                    'enhanced': r.output.samples, 'start_sample': u.start_sample})
    return out


def wer_of(truth: List[str], utts: List[Dict], key: str) -> float:
    """Corpus WER of the utterances' ``key`` text against the truth, in order."""
    from sage_irp_ros.plugins.audio.recognize import corpus_wer, wer_words
    return corpus_wer([' '.join(wer_words(t) for t in truth)],
                      [' '.join(wer_words(u[key]) for u in utts)])


def plot(path: str, noisy: np.ndarray, utts: List[Dict], clean_utts: List[Dict],
         energy_name: str = 'energy') -> None:
    """Waveform and spectrogram before/after enhancement; energy per step per utterance."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from sage_irp_ros.plugins.audio.dsp import RATE
    enhanced = noisy.copy()
    for u in utts:
        a = u['start_sample']
        enhanced[a:a + u['enhanced'].size] = u['enhanced']
    t = np.arange(noisy.size) / RATE
    fig, ax = plt.subplots(3, 2, figsize=(12, 8.5))
    for col, (x, name) in enumerate(((noisy, 'with noise (input)'),
                                     (enhanced, 'after enhancement'))):
        ax[0, col].plot(t, x, lw=0.4, color='tab:blue' if col == 0 else 'tab:green')
        ax[0, col].set(title=f'waveform, {name}', xlabel='s', ylim=(-1, 1))
        for u in utts:
            ax[0, col].axvspan(u['start_s'], u['start_s'] + u['seconds'], color='orange',
                               alpha=0.12)
        ax[1, col].specgram(x + 1e-7, NFFT=512, Fs=RATE, noverlap=256, cmap='magma',
                            vmin=-140, vmax=-30)
        ax[1, col].set(title=f'spectrogram, {name}', xlabel='s', ylabel='Hz')
    for k, u in enumerate(utts):
        ax[2, 0].plot(range(len(u['energies_db'])), u['energies_db'], 'o-',
                      label=f'utterance {k + 1} with noise ({u["steps"]} steps, '
                            f'{u["halt_reason"]})')
    for k, u in enumerate(clean_utts):
        ax[2, 0].plot(range(len(u['energies_db'])), u['energies_db'], 's--',
                      label=f'utterance {k + 1} as recorded ({u["steps"]} steps)')
    ax[2, 0].set(title=f'energy per step ({energy_name})',
                 xlabel='step', ylabel='dB')
    ax[2, 0].legend(fontsize=7)
    ax[2, 1].axis('off')
    lines = []
    for k, u in enumerate(utts):
        lines += [f'{k + 1}. heard (no enhancement): {u["heard_unenhanced"]}',
                  f'   heard (enhanced): {u["heard"]}',
                  f'   masked: {u["masked"]}', f'   repaired: {u["repaired"]}']
    ax[2, 1].text(0, 1, '\n'.join(lines), va='top', family='monospace', fontsize=7,
                  wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    """Hear the bag as recorded and with noise; print, write the JSON and the plot."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--bag', default=None, help='default: the sample bag')
    ap.add_argument('--out', default=os.path.join('out', 'demo', 'audio'))
    ap.add_argument('--snr', type=float, default=5.0, help='SNR of the added noise, dB')
    ap.add_argument('--threshold', type=float, default=0.5,
                    help='confidence under which a word is masked (the node default)')
    args = ap.parse_args(argv)
    import torch

    from sage_irp_ros.demo.__main__ import find_path
    from sage_irp_ros.demo.scoring import load_truth
    from sage_irp_ros.plugins.audio import dsp
    from sage_irp_ros.plugins.audio.plugin import load_default
    from sage_irp_ros.plugins.audio.recognize import Recogniser
    from sage_irp_ros.plugins.audio.vad import Segmenter, load_silero
    from sage_irp_ros.plugins.language.plugin import load_default as load_language
    torch.set_num_threads(1)
    bag = os.path.abspath(args.bag or find_path(os.path.join('data', 'sample_bag')))
    truth = [u['text'] for u in load_truth(bag)['audio']['transcript']]
    clean = bag_audio(bag)
    noise = dsp.HELD_OUT_NOISES['fan'](clean.size, np.random.default_rng(NOISE_SEED))
    noisy = dsp.mix(clean, noise, args.snr).astype(np.float32)
    peak = float(np.abs(noisy).max())
    if peak > 0.99:
        noisy = noisy / peak * 0.99
    plugin, lang, rec = load_default(), load_language(), Recogniser()
    seg = Segmenter(load_silero())
    os.makedirs(args.out, exist_ok=True)
    report = {'bag': bag, 'truth': truth, 'snr_db': args.snr, 'noise': 'fan (held out)',
              'confidence_threshold': args.threshold, 'model_version': plugin.version}
    passes = {}
    for name, stream in (('as_recorded', clean), (f'noise_{args.snr:g}db', noisy)):
        utts = hear(stream, plugin, lang, rec, seg, args.threshold)
        passes[name] = utts
        print(f'\n== {name.replace("_", " ")}: {len(utts)} utterances')
        for k, u in enumerate(utts):
            print(f' {k + 1}. said:     {truth[k] if k < len(truth) else "?"}\n'
                  f'    heard (no enhancement): {u["heard_unenhanced"]}\n'
                  f'    heard (enhanced, {u["steps"]} steps, {u["halt_reason"]}, energy '
                  f'{" -> ".join(f"{e:.2f}" for e in u["energies_db"])} dB): {u["heard"]}\n'
                  f'    masked:   {u["masked"]}\n    repaired: {u["repaired"]}\n'
                  f'    while it was said (partial results every 0.5 s): '
                  f'{" | ".join(u["partials"]) or "-"}')
        w = {k: round(wer_of(truth, utts, key), 4) for k, key in (
            ('wer_unenhanced', 'heard_unenhanced'), ('wer_enhanced', 'heard'),
            ('wer_repaired', 'repaired'))}
        print('    WER: ' + ', '.join(f'{k[4:]} {v:.3f}' for k, v in w.items()))
        report[name] = {**w, 'utterances': [
            {k: v for k, v in u.items() if k not in ('enhanced', 'start_sample')}
            for u in utts]}
    with open(os.path.join(args.out, 'audio.json'), 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=1)
    png = os.path.join(args.out, 'audio.png')
    plot(png, noisy, passes[f'noise_{args.snr:g}db'], passes['as_recorded'], plugin.energy_name)
    print(f'\nwrote {args.out}: audio.json, audio.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
