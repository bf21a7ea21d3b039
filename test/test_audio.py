"""Audio plugin without ROS: conversion, VAD segmentation, the enhancement IRP, recognition."""

import json
import os
import shutil
import tempfile

import numpy as np
import pytest

from sage_irp_ros.core.loop import refine
from sage_irp_ros.plugins.audio import dsp
from sage_irp_ros.plugins.audio.dsp import RATE, AudioFormatError, mix, to_mono_16k

pytestmark = pytest.mark.usefixtures('one_torch_thread')

TESTDATA = '/usr/share/pocketsphinx/test/data'
needs_flite = pytest.mark.skipif(shutil.which('flite') is None, reason='flite not installed')


def flite(text, voice='slt'):
    from sage_irp_ros.plugins.audio.speech import say
    with tempfile.TemporaryDirectory() as tmp:
        return say(text, f'flite:{voice}', tmp)


@pytest.fixture(scope='module')
def plugin():
    from sage_irp_ros.plugins.audio.plugin import load_default
    return load_default()


@pytest.fixture(scope='module')
def human():
    """Held-out human speech (never trained on): a pocketsphinx-testdata recording."""
    path = os.path.join(TESTDATA, 'librivox', 'sense_and_sensibility_01_austen_64kb-0880.wav')
    if not os.path.exists(path):
        pytest.skip('pocketsphinx-testdata not installed')
    return dsp.read_wav(path)


def test_conversion_downmixes_and_resamples():
    t = np.arange(48000) / 48000
    tone = np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1).ravel()
    x = to_mono_16k((stereo * 16000).astype(np.int16), 48000, 2)
    assert x.dtype == np.float32 and abs(x.size - 16000) <= 1
    spec = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spec) * RATE / x.size - 440) < 2
    for args, text in [((np.zeros(3, np.int16), 16000, 2), 'multiple of 2'),
                       ((np.zeros(4, np.int16), 0, 1), 'sample rate'),
                       ((np.zeros(4, np.int16), 16000, 0), 'channel count'),
                       ((np.array([np.nan, 0.0], np.float32), 16000, 1), 'not finite')]:
        with pytest.raises(AudioFormatError, match=text):
            to_mono_16k(*args)


def test_mix_hits_the_snr():
    rng = np.random.default_rng(0)
    s = np.sin(np.arange(16000) * 0.05).astype(np.float32)
    n = dsp.white(16000, rng)
    y = mix(s, n, 5.0)
    snr = 10 * np.log10(dsp.active_power(s) / np.mean((y - s) ** 2))
    assert snr == pytest.approx(5.0, abs=0.1)


@needs_flite
def test_vad_finds_the_utterance_and_silence_costs_almost_nothing():
    from sage_irp_ros.plugins.audio.vad import Segmenter, segment_all
    sp = flite('go forward two meters')
    x = np.concatenate([np.zeros(RATE), sp, np.zeros(RATE)])
    utts = segment_all(x, chunk=777)
    assert len(utts) == 1 and utts[0].cut == 'silence'
    start = utts[0].start_sample / RATE
    assert 0.6 < start < 1.3 and abs(utts[0].seconds - sp.size / RATE) < 0.8
    seg = Segmenter()
    assert seg.feed(np.zeros(5 * RATE, np.float32)) == []
    assert seg.windows_run == 0 and seg.windows_gated > 100  # digital silence: no network run
    # the stream stops mid-utterance: flush hands over what there is
    seg = Segmenter()
    seg.feed(np.concatenate([np.zeros(RATE // 2), sp[:sp.size // 2 + 10]]).astype(np.float32))
    assert seg.in_speech
    out = seg.flush()
    assert len(out) == 1 and out[0].cut == 'flush' and not seg.in_speech


def test_weights_are_committed_with_seed_and_command():
    from sage_irp_ros.plugins.audio.plugin import DEFAULT_WEIGHTS
    meta = json.load(open(os.path.splitext(DEFAULT_WEIGHTS)[0] + '.json'))
    assert isinstance(meta['seed'], int) and 'sage_irp_ros.plugins.audio.train' in meta['command']
    assert f"--seed {meta['seed']}" in meta['command'] and meta['version'] and meta['chosen_on']
    if meta.get('init'):  # a fine-tune says which parent, and its command how to get it back
        assert meta['init']['version'] and '--init' in meta['command']
        assert 'git show' in meta['command']
    assert os.path.getsize(DEFAULT_WEIGHTS) < 5e6


def test_energy_tracks_the_error_on_held_out_speech_and_noise(plugin, human):
    """Energy (predicted dB error) rises with the noise; held-out speech and noise type."""
    rng = np.random.default_rng(1)
    noise = dsp.engine(human.size, rng)
    e = [plugin.energy(plugin.init_state(mix(human, noise, snr)))
         for snr in (np.inf, 20, 10, 5, 0)]
    assert all(a < b for a, b in zip(e, e[1:], strict=False)), e
    assert e[0] <= plugin.halt_db


def test_clean_halts_at_once_noisy_refines_and_gets_closer(plugin, human):
    import torch

    from sage_irp_ros.plugins.audio.train import lsd_db, stft
    clean = refine(plugin, human, None, config=plugin.halt_config())
    assert clean.trace.steps == 0 and clean.trace.halt_reason == 'confident'
    assert np.allclose(clean.output.samples, human, atol=1e-3)
    noisy = mix(human, dsp.engine(human.size, np.random.default_rng(2)), 5.0)
    run = refine(plugin, noisy, None, config=plugin.halt_config())
    assert run.trace.steps >= 1
    assert run.trace.energies[-1] < run.trace.energies[0]

    def lsd(y):
        return lsd_db(stft(torch.from_numpy(y)[None]).abs(),
                      stft(torch.from_numpy(human)[None]).abs()).mean().item()
    assert lsd(run.output.samples) < lsd(noisy)


def test_refuses_unusable_utterances(plugin):
    with pytest.raises(ValueError, match='too short'):
        plugin.init_state(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match='not finite'):
        plugin.init_state(np.full(4000, np.nan, np.float32))


def test_recogniser_words_timing_confidence_and_masking():
    path = os.path.join(TESTDATA, 'cards', '001.wav')
    if not os.path.exists(path):
        pytest.skip('pocketsphinx-testdata not installed')
    from sage_irp_ros.plugins.audio.recognize import Recogniser, masked_text, text_of
    words = Recogniser()(dsp.read_wav(path))
    assert 'clubs' in text_of(words)
    assert all(0 <= w.start < w.end <= 1.2 and 0 <= w.confidence <= 1 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    masked = masked_text(words, 1.01, guesses=False)
    assert masked.split() == ['[MASK]'] * len(words)
    assert masked_text(words, 1.01, alternatives=False).split() == [
        f'[MASK:{w.word}]' for w in words]
    # with the N-best alternatives: a rivalled word lists its rivals, an unrivalled one stays
    assert masked_text(words, 1.01, probabilities=False).split() == [
        f"[MASK:{'|'.join([w.word, *w.alternatives])}]" if w.alternatives else w.word
        for w in words]
    # with the recogniser's probabilities: the word's confidence, the rest by N-best shares
    for w, tok in zip(words, masked_text(words, 1.01).split(), strict=True):
        if w.alternatives:
            cands = w.candidates()
            assert tok == f"[MASK:{'|'.join(f'{a}={p:.2f}' for a, p in cands)}]"
            assert abs(sum(p for _, p in cands) - max(1.0, w.confidence + 0.01 * len(
                w.alternatives))) < 0.02 * len(cands)
    assert masked_text(words, 0.0) == text_of(words)
    from sage_irp_ros.plugins.audio.recognize import Word
    odd = [Word('a.b', 0, 1, 0.1), Word("they're", 1, 2, 0.1)]
    assert masked_text(odd, 0.5, alternatives=False) == "[MASK] [MASK:they're]"
    rivals = [Word('ten', 0, 1, 0.1, ('and', 'a.m.', 'in')), Word('go', 1, 2, 0.1),
              Word('meters', 2, 3, 0.9, ('years',))]
    assert masked_text(rivals, 0.5, probabilities=False) == '[MASK:ten|and|in] go meters'
    # no shares: the alternatives split what the word's confidence leaves evenly (a.m. too,
    # which cannot be written in a mask and is left out with its share)
    assert masked_text(rivals, 0.5) == '[MASK:ten=0.10|and=0.30|in=0.30] go meters'
    shared = Word('ten', 0, 1, 0.4, ('and', 'in'), (0.75, 0.25))
    assert shared.candidates() == [('ten', 0.4), ('and', 0.6 * 0.75), ('in', 0.6 * 0.25)]
    assert Word('x', 0, 1, float('nan'), ('y',)).candidates() == [('x', 0.5), ('y', 0.5)]


def test_partial_recogniser_hears_an_utterance_as_it_goes():
    path = os.path.join(TESTDATA, 'goforward.raw')
    if not os.path.exists(path):
        pytest.skip('pocketsphinx-testdata not installed')
    from sage_irp_ros.plugins.audio.recognize import PartialRecogniser, text_of
    x = np.fromfile(path, dtype='<i2').astype(np.float32) / 32768
    pr = PartialRecogniser()
    assert pr.words() == [] and not pr.active
    texts = []
    for i in range(0, x.size, 1600):
        pr.feed(x[i:i + 1600])
        texts.append(text_of(pr.words()))
    assert pr.active and abs(pr.seconds - x.size / 16000) < 1e-6
    assert texts[0] == '' and texts[-1].startswith('go forward')
    assert all(np.isnan(w.confidence) for w in pr.words())
    pr.stop()
    assert pr.words() == [] and not pr.active
    pr.feed(x[:8000])  # a new utterance starts from scratch
    assert abs(pr.seconds - 0.5) < 1e-6 and 'forward' not in text_of(pr.words())
    pr.stop()


def test_partial_transcriber_follows_the_segmenter():
    path = os.path.join(TESTDATA, 'goforward.raw')
    if not os.path.exists(path):
        pytest.skip('pocketsphinx-testdata not installed')
    from sage_irp_ros.plugins.audio.recognize import PartialTranscriber, text_of
    from sage_irp_ros.plugins.audio.vad import Segmenter
    x = np.fromfile(path, dtype='<i2').astype(np.float32) / 32768
    stream = np.concatenate([np.zeros(RATE // 2, np.float32), x, np.zeros(RATE, np.float32),
                             x, np.zeros(RATE, np.float32)])
    seg = Segmenter()
    pt = PartialTranscriber(seg, 0.5)
    with pytest.raises(ValueError, match='interval_s'):
        PartialTranscriber(seg, 0.0)
    got, utts, during = [], [], []
    for i in range(0, stream.size, 1600):
        ended = seg.feed(stream[i:i + 1600])
        utts += ended
        words = pt.update(bool(ended))
        if words is not None:
            got.append((len(utts), pt.seconds, text_of(words)))
            during.append(seg.in_speech)
    assert len(utts) == 2 and all(during)
    # about one preview per 0.5 s of each utterance, each later than the one before
    for k in (0, 1):
        mine = [g for g in got if g[0] == k]
        assert len(mine) >= int(utts[k].seconds / 0.5) - 1
        assert [g[1] for g in mine] == sorted(g[1] for g in mine)
    assert 'forward' in got[-1][2] and not pt.recogniser.active and pt.seconds == 0.0


def test_alternatives_come_from_aligning_the_n_best_list():
    from sage_irp_ros.plugins.audio.recognize import align_words, alternatives_from_nbest
    best = 'go forward ten meters'.split()
    assert align_words(best, 'go for word ten meters'.split()) == [
        (0, 'go'), (None, 'for'), (1, 'word'), (2, 'ten'), (3, 'meters')]
    assert align_words(best, 'go ten'.split()) == [(0, 'go'), (2, 'ten')]
    assert align_words([], ['a']) == [(None, 'a')]
    nbest = ['go forward ten meters', 'go forward and meters', 'go forward and meters',
             'go <sil> forward in years', 'go forward [NOISE] ten(2) leaders',
             'go forward can majors', 'go forward him readers']
    assert alternatives_from_nbest(best, nbest) == [
        (), (), ('and', 'in', 'can'), ('years', 'leaders', 'majors')]
    assert alternatives_from_nbest(best, nbest, per_word=1) == [(), (), ('and',), ('years',)]
    assert alternatives_from_nbest([], nbest) == []
    from sage_irp_ros.plugins.audio.recognize import nbest_votes
    nbest += ['go forward can meters', 'go forward and years']
    assert nbest_votes(best, nbest) == [
        {}, {}, {'and': 2, 'in': 1, 'can': 2, 'him': 1},
        {'years': 2, 'leaders': 1, 'majors': 1, 'readers': 1}]


def test_the_recogniser_lists_alternatives_for_doubtful_words():
    path = os.path.join(TESTDATA, 'goforward.raw')
    if not os.path.exists(path):
        pytest.skip('pocketsphinx-testdata not installed')
    from sage_irp_ros.plugins.audio.recognize import Recogniser
    x = np.fromfile(path, dtype='<i2').astype(np.float32) / 32768
    words = Recogniser()(x)
    assert [w.word for w in words] == ['go', 'forward', 'ten', 'meters']
    assert all(w.word not in w.alternatives and len(w.alternatives) <= 3 for w in words)
    # the doubtful words have rivals in the N-best list; a sure one does not
    assert words[0].alternatives == () and words[0].confidence > 0.9
    assert words[2].confidence < 0.5 and words[2].alternatives
    assert all(w.alternatives == () for w in Recogniser(n_best=0)(x))

    # the lattice search may yield None entries (seen on held-out noise): skipped, bounded
    class Holes:
        def __init__(self, d):
            self.d = d

        def __getattr__(self, name):
            return getattr(self.d, name)

        def nbest(self):
            yield None
            yield from self.d.nbest()
            while True:
                yield None

    rec = Recogniser()
    rec.decoder = Holes(rec.decoder)
    holed = rec(x)
    assert [w.alternatives for w in holed] == [w.alternatives for w in words]


def test_demo_hears_the_bag_as_recorded_and_in_noise(tmp_path):
    pytest.importorskip('rclpy')
    if not os.path.exists(os.path.join(TESTDATA, 'cards', '001.wav')):
        pytest.skip('pocketsphinx-testdata not installed')
    import json

    from sage_irp_ros.plugins.audio import demo
    assert demo.main(['--out', str(tmp_path)]) == 0
    rep = json.load(open(tmp_path / 'audio.json'))
    assert len(rep['truth']) == 2 and (tmp_path / 'audio.png').stat().st_size > 10_000
    clean = rep['as_recorded']
    assert len(clean['utterances']) == 2 and clean['wer_enhanced'] <= 0.2
    assert all(u['steps'] <= 1 for u in clean['utterances'])  # clean speech: halts at once
    # the node's partial results, one per 0.5 s of each utterance, arrived while it was said
    assert all(len(u['partials']) >= int(u['seconds'] / 0.5) - 1 for u in clean['utterances'])
    assert any(p for u in clean['utterances'] for p in u['partials'])
    noisy = rep['noise_5db']
    assert noisy['utterances'] and all(u['energies_db'] for u in noisy['utterances'])
    # noise is heard as noise: the first energy of every noisy utterance is above the clean ones
    assert min(u['energies_db'][0] for u in noisy['utterances']) > max(
        u['energies_db'][0] for u in clean['utterances'])


def test_the_benchmark_oracle_mask_is_the_ideal_ratio_mask():
    # bench/audio_bench.py's ceiling (wer_oracle_mask_*): the ideal ratio mask from the true
    # speech. Speech alone passes unchanged; speech in noise comes out nearer the speech.
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location('audio_bench',
                                                  os.path.join(root, 'bench', 'audio_bench.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    t = np.arange(RATE) / RATE
    speech = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32)
    same = bench.oracle_masked(speech, speech, 0.05)
    assert same.shape == speech.shape and np.abs(same - speech).max() < 1e-3
    noisy = mix(speech, dsp.white(speech.size, rng), 0.0)
    out = bench.oracle_masked(speech, noisy, 0.05)
    err_in, err_out = np.mean((noisy - speech) ** 2), np.mean((out - speech) ** 2)
    assert err_out < 0.2 * err_in


def test_training_objectives_give_finite_losses_and_mel_irm_adds_the_ideal_mask_term():
    import torch

    from sage_irp_ros.plugins.audio import train
    from sage_irp_ros.plugins.audio.model import MaskRefiner
    rng = np.random.default_rng(0)
    t = np.arange(RATE // 2) / RATE
    clean = torch.from_numpy(np.stack([
        (0.3 * np.sin(2 * np.pi * f * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        for f in (300, 700)]))
    noisy = clean + torch.from_numpy(0.05 * rng.standard_normal(clean.shape).astype(np.float32))
    got = {}
    for objective in train.OBJECTIVES:
        torch.manual_seed(0)
        model = MaskRefiner(hidden=8)
        lm, le, dist = train.run_steps(model, noisy, clean, 2, objective)
        (lm * 100 + le).backward()
        assert np.isfinite([lm.item(), le.item(), dist]).all(), objective
        assert all(p.grad is not None for p in model.parameters())
        got[objective] = lm.item()
    assert got['mel_irm'] > got['mel']  # the same model and data plus a squared error
    assert got['mel_am'] > got['mel']  # plus the acoustic model's divergence
    am = {}
    for w in (0.0, 2 * train.AM_WEIGHT):  # train --am-weight: the divergence's share, linearly
        torch.manual_seed(0)
        model = MaskRefiner(hidden=8)
        am[w] = train.run_steps(model, noisy, clean, 2, 'mel_am', am_weight=w)[0].item()
    assert am[0.0] == pytest.approx(got['mel'], rel=1e-5)
    assert am[2 * train.AM_WEIGHT] - got['mel'] == pytest.approx(
        2 * (got['mel_am'] - got['mel']), rel=1e-3)
    # an estimate equal to the speech (a clean item the mask leaves as it is): every frame's
    # distance is exactly 0, and its gradient must stay finite (the square root's was
    # infinite, the batch's NaN: a training run on a GPU skipped over a third of its batches)
    mag = train.stft(clean).abs()
    for dist in (train.mel_dist_db, train.lsd_db):
        est = mag.clone().requires_grad_(True)
        dist(est, mag).sum().backward()
        assert torch.isfinite(est.grad).all(), dist.__name__


def test_the_acoustic_model_reads_phones_and_its_divergence_grows_with_the_noise():
    import torch

    from sage_irp_ros.plugins.audio.acoustic import AcousticModel, model_dir, read_gaussians
    am = AcousticModel()
    means = read_gaussians(os.path.join(model_dir(), 'means'))
    assert [g.shape for g in means] == [(42, 128, 13)] * 3
    # goforward.raw: "go forward ten meters", a person; its quietest frames are the room between
    # words, and the Gaussians that read them best are in the codebooks of the model's fillers
    # (+NSN+ 0, +SPN+ 1, SIL 32 in its phone list)
    x = torch.from_numpy(np.fromfile(os.path.join(TESTDATA, 'goforward.raw'), '<i2')
                         .astype(np.float32) / 32768)[None]
    floor = am.floor_of(x)
    loud = am.mel_power(x).sum(-1)[0]
    quiet = loud < torch.quantile(loud, 0.1)
    top = am.log_posteriors(x, floor)[0][0].argmax(-1) // 128
    assert np.isin(top[quiet].numpy(), (0, 1, 32)).mean() > 0.5
    assert len(set(top[~quiet].tolist())) > 15  # speech frames read as many phones
    clean = am.log_posteriors(x, floor)
    assert am.divergence(x, clean, floor).item() == pytest.approx(0.0, abs=1e-6)
    noise = torch.from_numpy(dsp.pink(x.shape[1], np.random.default_rng(0)))[None]
    d = [am.divergence(torch.from_numpy(mix(x[0].numpy(), noise[0].numpy(), snr))[None],
                       clean, floor).item() for snr in (20, 10, 0)]
    assert 0 < d[0] < d[1] < d[2], d
    est = x.clone().requires_grad_(True)
    am.divergence(est + 0.01 * noise, clean, floor).sum().backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0


def test_the_noise_aware_model_reads_the_noise_floor_and_room_keeps_speech_in_range():
    # train.py --noise-aware: a fourth input block, each bin's log-power over its quantile over
    # the utterance (the noise floor); --augment: train.room (tempo, tilt, reverberation).
    import torch

    from sage_irp_ros.plugins.audio import train
    from sage_irp_ros.plugins.audio.model import NOISE_QUANTILE, MaskRefiner
    torch.manual_seed(0)
    logx = torch.rand(2, 257, 40)
    mask = torch.ones_like(logx)
    plain, aware = MaskRefiner(hidden=8), MaskRefiner(hidden=8, noise_aware=True)
    assert plain.features(logx, mask).shape == (2, 3 * 257, 40)
    f = aware.features(logx, mask)
    assert f.shape == (2, 4 * 257, 40)
    floor = torch.quantile(logx, NOISE_QUANTILE, dim=2, keepdim=True)
    assert torch.allclose(f[:, 3 * 257:], logx - floor)
    nxt, err = aware(logx, mask, floor=0.05)
    assert nxt.shape == mask.shape and err.shape == (2, 40) and torch.isfinite(err).all()
    rng = np.random.default_rng(3)
    s = (0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)
    outs = [train.room(s, rng) for _ in range(6)]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in outs)
    assert all(0.85 * s.size < o.size < 1.15 * s.size for o in outs)
    assert all(abs(float(np.abs(o).max()) - 0.5) < 1e-4 for o in outs)
    assert len({o.size for o in outs}) > 1  # the tempo is drawn
    noisy, clean = train.make_item(rng, [s], RATE // 2, augment=True)
    assert noisy.shape == clean.shape == (RATE // 2,)


def test_saved_training_speech_reads_back_within_its_12_bits(tmp_path):
    # speech.py --out / train.py --speech: training on a machine without the voices
    from sage_irp_ros.plugins.audio import dsp
    from sage_irp_ros.plugins.audio.speech import SAVE_SHIFT, load_speech, save_speech
    rng = np.random.default_rng(3)
    data = [('flite:slt', 'one', (0.4 * np.sin(np.arange(3000) / 7.0)).astype(np.float32)),
            ('espeak:en-us', 'two words', rng.uniform(-0.5, 0.5, 1234).astype(np.float32))]
    path = str(tmp_path / 'speech.npz')
    save_speech(path, data)
    back = load_speech(path)
    assert [(v, t) for v, t, _ in back] == [(v, t) for v, t, _ in data]
    step = 2 ** SAVE_SHIFT / 32767
    for (_, _, a), (_, _, b) in zip(data, back, strict=True):
        assert b.shape == a.shape and b.dtype == np.float32
        assert np.abs(a - b).max() <= step  # the dropped low bits, nothing else
    if os.path.exists(dsp.ALSA_NOISE):  # saved with the speech, handed to the noise maker
        assert np.array_equal(dsp._ALSA_CACHE['x'], dsp.read_wav(dsp.ALSA_NOISE))


def test_training_can_start_from_committed_weights(tmp_path):
    """``train --init``: a fine-tune starts from the given weights (at lr 0 it keeps them)."""
    import json

    import torch

    from sage_irp_ros.plugins.audio import train
    from sage_irp_ros.plugins.audio.speech import save_speech
    t = np.arange(3 * 16000) / 16000
    voiced = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32)
    save_speech(str(tmp_path / 's.npz'), [('flite:slt', 'a', voiced), ('flite:awb', 'b', voiced)])
    common = ['--speech', str(tmp_path / 's.npz'), '--utterances', '2', '--minutes', '0.002',
              '--batch', '2', '--hidden', '16', '--unroll', '1']
    assert train.main(common + ['--seed', '0', '--out', str(tmp_path / 'a')]) == 0
    assert train.main(common + ['--seed', '1', '--lr', '0', '--init',
                                str(tmp_path / 'a' / 'enhancer.pt'),
                                '--out', str(tmp_path / 'b')]) == 0
    assert train.main(common + ['--seed', '1', '--out', str(tmp_path / 'c')]) == 0
    a, b, c = (torch.load(tmp_path / d / 'enhancer.pt', weights_only=True) for d in 'abc')
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # a fresh network of seed 1 differs
    meta = json.loads((tmp_path / 'b' / 'enhancer.json').read_text())
    assert meta['init'] == {'weights': 'enhancer.pt', 'version': None} and json.loads(
        (tmp_path / 'c' / 'enhancer.json').read_text())['init'] is None
