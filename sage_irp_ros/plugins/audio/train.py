"""Train the enhancer (:class:`~sage_irp_ros.plugins.audio.model.MaskRefiner`) on CPU in minutes.

Speech: flite / espeak-ng voices reading the language corpus' training split
(:mod:`~sage_irp_ros.plugins.audio.speech`); noise: white, pink, brown, mains hum, babble of
other training utterances and alsa-utils' recorded ``Noise.wav`` at SNRs of
:data:`~sage_irp_ros.plugins.audio.dsp.TRAIN_SNRS` (the benchmark's 0/5/10/20 dB and its noise
types are held out), plus clean speech (20 % of the items). The network is unrolled for
``--unroll`` steps with the same weights; the loss (``--objective mel``, the default) is the
distance of every step's estimate in the recogniser's mel bands (each band's mean removed, as
its cepstral mean normalisation does) with a small compressed-magnitude term, plus the error
head's regression onto that true distance (dB) of every step's input estimate (the energy of
the plugin); ``--objective mel_irm``: the same plus ``IRM_WEIGHT`` x the squared error of every
step's mask to the ideal ratio mask of the mixture (tried, not better on validation:
docs/AUDIO.md); ``--objective mel_am``: the same as ``mel`` plus ``AM_WEIGHT`` x how
differently the recogniser's own Gaussians read every step's estimate and the clean speech
(:mod:`~sage_irp_ros.plugins.audio.acoustic`, on ``AM_FRAMES`` random frames of each item);
``--objective lsd``: the compressed-magnitude error and the log-spectral distance (the first
model). A batch whose loss or gradient is not finite is skipped (counted
in the JSON as ``skipped_non_finite_batches``): long runs of the recipe otherwise ended in NaN
weights.

    python -m sage_irp_ros.plugins.audio.train --seed 0 --minutes 7

writes ``weights/enhancer.pt`` and ``weights/enhancer.json`` (seed, command, figures).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

import numpy as np
import torch
from scipy.signal import fftconvolve

from sage_irp_ros.plugins.audio.dsp import (
    HOP,
    N_FFT,
    RATE,
    TRAIN_NOISES,
    TRAIN_SNRS,
    mel_filterbank,
    mix,
    resample,
)
from sage_irp_ros.plugins.audio.model import MaskRefiner, ideal_ratio_mask, log_power
from sage_irp_ros.plugins.audio.speech import load_speech, make_speech

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
CLEAN_FRACTION = 0.2
#: Floor of the log-spectral distance: powers 40 dB under the clean utterance's peak are equal.
LSD_FLOOR = 1e-4
#: The recogniser's 25 mel filters (``dsp.mel_filterbank``) and the mel distance's floor: mel
#: powers 50 dB under the clean utterance's loudest band count as equal.
MEL = torch.from_numpy(mel_filterbank())
MEL_FLOOR = 1e-5
OBJECTIVES = ('mel', 'mel_irm', 'mel_am', 'lsd')
#: Added under the distances' square root: a frame whose distance is exactly 0 (an all-zero
#: frame of a clean item: the estimate equals the speech whatever the mask) would otherwise
#: give the square root an infinite gradient and the batch a NaN one.
DIST_EPS = 1e-8
#: Weight of the ideal-ratio-mask term of ``--objective mel_irm``.
IRM_WEIGHT = 0.1
#: Weight of the acoustic-model term of ``--objective mel_am`` (nats; ``acoustic.py``).
AM_WEIGHT = 0.005
#: Frames of each item (of 250 in a 2.5 s crop) the acoustic-model term scores: its Gaussians
#: cost ten times the rest of a training step over every frame.
AM_FRAMES = 60


def stft(x: torch.Tensor) -> torch.Tensor:
    """Complex STFT (B, F, T) of waveforms (B, N)."""
    return torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT, device=x.device),
                      return_complex=True, center=True)


def istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    """Waveforms of ``length`` samples from a (masked) STFT of :func:`stft`."""
    return torch.istft(spec, N_FFT, HOP, window=torch.hann_window(N_FFT, device=spec.device),
                       center=True, length=length)


@functools.lru_cache(maxsize=None)
def _mel_on(device: torch.device) -> torch.Tensor:
    """Return the mel filters on ``device`` (copied there once, not on every distance)."""
    return MEL.to(device)


@functools.lru_cache(maxsize=None)
def _acoustic_on(device: torch.device):
    """Return the recogniser's acoustic model (``acoustic.AcousticModel``) on ``device``, once."""
    from sage_irp_ros.plugins.audio.acoustic import AcousticModel
    return AcousticModel().to(device)


def lsd_db(est_mag: torch.Tensor, clean_mag: torch.Tensor) -> torch.Tensor:
    """Per-frame log-spectral distance (dB RMS over bins) of an estimate to the clean speech."""
    ref = clean_mag.square().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12) * LSD_FLOOR
    d = 10 * torch.log10(est_mag.square() + ref) - 10 * torch.log10(clean_mag.square() + ref)
    return (d.square().mean(dim=1) + DIST_EPS).sqrt()


def mel_dist_db(est_mag: torch.Tensor, clean_mag: torch.Tensor) -> torch.Tensor:
    """Per-frame distance (dB RMS over the recogniser's 25 mel bands) of an estimate to clean.

    Each band's mean over the utterance is removed first (the recogniser's cepstral mean
    normalisation does the same), so a constant gain per band costs nothing: what is left is
    the error in what the recogniser sees.
    """
    mel = _mel_on(est_mag.device)
    pe = torch.einsum('mf,bft->bmt', mel, est_mag.square())
    pc = torch.einsum('mf,bft->bmt', mel, clean_mag.square())
    ref = pc.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12) * MEL_FLOOR
    d = 10 * torch.log10(pe + ref) - 10 * torch.log10(pc + ref)
    d = d - d.mean(dim=2, keepdim=True)
    return (d.square().mean(dim=1) + DIST_EPS).sqrt()


DISTANCES = {'mel': mel_dist_db, 'mel_irm': mel_dist_db, 'mel_am': mel_dist_db, 'lsd': lsd_db}


def room(s: np.ndarray, rng) -> np.ndarray:
    """``s`` as a microphone in a room might hear it: tempo, tilt and reverberation drawn.

    For ``--augment``: the training voices are dry synthetic speech; the robot hears people in
    rooms. Speed 0.9-1.1 (resampled), a first-order tilt ``y[n] = x[n] - a x[n-1]`` with ``a``
    in [-0.5, 0.7], and with probability 0.6 a synthetic room impulse response (the direct
    path, then exponentially decaying noise, RT60 0.1-0.6 s), all drawn from ``rng``.
    """
    speed = float(rng.uniform(0.9, 1.1))
    s = resample(s, int(round(100 * speed)), 100)  # played back 'speed' times as fast
    a = float(rng.uniform(-0.5, 0.7))
    s = np.concatenate([s[:1], s[1:] - a * s[:-1]])
    if rng.random() < 0.6:
        rt60 = float(rng.uniform(0.1, 0.6))
        n = int(rt60 * RATE)
        rir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n) * 0.2
        rir[0] = 1.0
        s = fftconvolve(s, rir)[:s.size]
    peak = float(np.abs(s).max())
    return (s / peak * 0.5 if peak > 0 else s).astype(np.float32)


def make_item(rng, utts, seg, augment: bool = False):
    """One training pair (noisy, clean) of ``seg`` samples (``augment``: :func:`room`)."""
    s = utts[int(rng.integers(len(utts)))]
    if augment:
        s = room(s, rng)
    if s.size < seg:
        off = int(rng.integers(0, seg - s.size + 1))
        s = np.pad(s, (off, seg - s.size - off))
    else:
        off = int(rng.integers(0, s.size - seg + 1))
        s = s[off:off + seg]
    s = s * float(rng.uniform(0.1, 1.6))
    if rng.random() < CLEAN_FRACTION:
        return s.astype(np.float32), s.astype(np.float32)
    kind = rng.choice(list(TRAIN_NOISES) + ['babble'])
    if kind == 'babble':
        n = sum(np.resize(utts[int(rng.integers(len(utts)))], seg) for _ in range(4))
    else:
        n = TRAIN_NOISES[kind](seg, rng)
    noisy = mix(s, n, float(rng.choice(TRAIN_SNRS)) + float(rng.uniform(-1, 1)))
    peak = float(np.abs(noisy).max())
    if peak > 0.99:
        noisy, s = noisy / peak * 0.99, s / peak * 0.99
    return noisy.astype(np.float32), s.astype(np.float32)


def make_batch(rng, utts, seg, batch: int, augment: bool = False):
    """Return ``(noisy, clean)``: ``batch`` items of :func:`make_item` as float32 tensors."""
    pairs = [make_item(rng, utts, seg, augment) for _ in range(batch)]
    return (torch.from_numpy(np.stack([p[0] for p in pairs])),
            torch.from_numpy(np.stack([p[1] for p in pairs])))


class Batches(torch.utils.data.IterableDataset):
    """Endless training batches for ``--workers``: worker ``w`` draws from its own generator.

    Seeded by ``(seed, w)``, so a run is reproducible for a given number of workers (the
    committed recipe, ``--workers 0``, draws every batch from one generator in the training
    process instead).
    """

    def __init__(self, utts, seg: int, batch: int, augment: bool, seed: int):
        """Keep what :func:`make_item` needs."""
        super().__init__()
        self.utts, self.seg, self.batch, self.augment, self.seed = utts, seg, batch, augment, seed

    def __iter__(self):
        """Yield ``(noisy, clean)`` float32 tensors (batch, samples) forever."""
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id])
        while True:
            yield make_batch(rng, self.utts, self.seg, self.batch, self.augment)


def run_steps(model, noisy, clean, unroll, objective='mel', am_weight=AM_WEIGHT):
    """Unroll the refiner; return (mask loss, error-head loss, final distance in dB).

    ``objective`` 'mel': the mask is trained on the mel distance of every step's estimate
    (plus a small compressed-magnitude term) and the error head regresses the mel distance;
    'lsd': compressed-magnitude error and the log-spectral distance (the first model);
    'mel_am' adds ``am_weight`` x the acoustic-model divergence.
    """
    dist = DISTANCES[objective]
    X, S = stft(noisy), stft(clean)
    xm, sm = X.abs(), S.abs()
    irm = None
    if objective == 'mel_irm':  # the ideal ratio mask of the mixture, in the mask's range
        irm = ideal_ratio_mask(sm, stft(noisy - clean).abs())
    am = clean_post = None
    if objective == 'mel_am':  # how the recogniser's Gaussians read the clean speech
        am = _acoustic_on(noisy.device)
        with torch.no_grad():
            floor = am.floor_of(clean)
            frames = torch.randperm(am.n_frames(clean.shape[1]),
                                    device=noisy.device)[:AM_FRAMES]
            clean_post = am.log_posteriors(clean, floor, frames)
    scale = xm.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    logx = log_power(xm)
    mask = torch.ones_like(xm)
    loss_m = loss_e = 0.0
    for _ in range(unroll):
        nxt, err = model(logx, mask)
        true = dist(mask.detach() * xm, sm)
        loss_e = loss_e + (err - true).square().mean() / 25.0
        mag = ((nxt * xm / scale + 1e-8) ** 0.3 - (sm / scale + 1e-8) ** 0.3).square().mean()
        if objective in ('mel', 'mel_irm', 'mel_am'):
            loss_m = loss_m + 0.3 * mag + 0.003 * dist(nxt * xm, sm).mean()
            if irm is not None:
                loss_m = loss_m + IRM_WEIGHT * (nxt - irm).square().mean()
            if am is not None:
                est = istft(nxt * X, noisy.shape[1])
                loss_m = loss_m + am_weight * am.divergence(est, clean_post, floor,
                                                            frames).mean()
        else:
            loss_m = loss_m + mag
        mask = nxt
    err = model.error(logx, mask)
    true = dist(mask.detach() * xm, sm)
    loss_e = loss_e + (err - true).square().mean() / 25.0
    return loss_m / unroll, loss_e / (unroll + 1), true.mean().item()


def main(argv=None) -> int:
    """Train and write the weights with their seed and command."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--minutes', type=float, default=5.0, help='training time budget')
    ap.add_argument('--utterances', type=int, default=600)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--seconds', type=float, default=2.5, help='segment length')
    ap.add_argument('--unroll', type=int, default=4)
    ap.add_argument('--hidden', type=int, default=96)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--objective', choices=OBJECTIVES, default='mel',
                    help="what the mask and the energy measure: 'mel' (the recogniser's mel "
                         "bands after mean removal), 'mel_irm' and 'mel_am' (the same plus the "
                         "ideal mask's error or the recogniser's Gaussians' divergence: see "
                         "above) or 'lsd' (log-spectral distance)")
    ap.add_argument('--augment', action='store_true',
                    help='hear the training voices through train.room (tempo, tilt, reverb)')
    ap.add_argument('--noise-aware', action='store_true',
                    help="the model also reads each bin's level over the utterance's noise floor "
                         '(model.MaskRefiner noise_aware)')
    ap.add_argument('--speech', default=None,
                    help='read the training speech from this file (speech.py --out) instead of '
                         'speaking it (a machine without the voices)')
    ap.add_argument('--device', default='cpu', help='cpu or cuda')
    ap.add_argument('--workers', type=int, default=0,
                    help='processes making batches (0: the training process, the committed '
                         'recipe)')
    ap.add_argument('--am-weight', type=float, default=AM_WEIGHT,
                    help='mel_am: the weight of the acoustic-model divergence in the loss')
    ap.add_argument('--init', default=None,
                    help='start from these weights (an enhancer.pt of the same --hidden and '
                         '--noise-aware) instead of a fresh network: a fine-tune')
    ap.add_argument('--out', default=WEIGHTS_DIR)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    if args.speech:
        data = load_speech(args.speech)[:args.utterances]
    else:
        data = make_speech(args.utterances, seed=args.seed)
    utts = [x for _, _, x in data]
    device = torch.device(args.device)
    print(f'{len(utts)} utterances, {sum(u.size for u in utts) / RATE / 60:.1f} min of speech '
          f'in {time.time() - t0:.0f} s', flush=True)
    model = MaskRefiner(hidden=args.hidden, noise_aware=args.noise_aware)
    init = None
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location='cpu', weights_only=True))
        side = os.path.splitext(args.init)[0] + '.json'
        init = {'weights': os.path.basename(args.init), 'version': None}
        if os.path.exists(side):
            with open(side) as f:
                init['version'] = json.load(f).get('version')
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    seg = int(args.seconds * RATE)
    batches = None
    if args.workers > 0:
        batches = iter(torch.utils.data.DataLoader(
            Batches(utts, seg, args.batch, args.augment, args.seed), batch_size=None,
            num_workers=args.workers, pin_memory=device.type == 'cuda', prefetch_factor=4,
            worker_init_fn=lambda _: torch.set_num_threads(1)))
    t_train = time.time()
    budget = args.minutes * 60
    it = 0
    skipped = 0
    ema = None
    while time.time() - t_train < budget:
        frac = (time.time() - t_train) / budget
        for g in opt.param_groups:
            g['lr'] = args.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        noisy, clean = (make_batch(rng, utts, seg, args.batch, args.augment) if batches is None
                        else next(batches))
        noisy = noisy.to(device, non_blocking=True)
        clean = clean.to(device, non_blocking=True)
        lm, le, lsd = run_steps(model, noisy, clean, args.unroll, args.objective,
                                args.am_weight)
        loss = lm * 100 + le
        if not torch.isfinite(loss):  # a bad batch must not turn the weights into NaN
            skipped += 1
            continue
        opt.zero_grad()
        loss.backward()
        if not torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)):
            skipped += 1
            continue
        opt.step()
        it += 1
        cur = (lm.item() * 100, le.item(), lsd)
        ema = cur if ema is None else tuple(0.95 * a + 0.05 * b
                                            for a, b in zip(ema, cur, strict=True))
        if it % 50 == 0:
            print(f'it {it} t {time.time() - t_train:.0f}s mask {ema[0]:.3f} err {ema[1]:.3f} '
                  f'{args.objective} {ema[2]:.2f} dB', flush=True)
    os.makedirs(args.out, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()},
               os.path.join(args.out, 'enhancer.pt'))
    meta = {'seed': args.seed, 'command': 'python -m sage_irp_ros.plugins.audio.train '
            + ' '.join(sys.argv[1:] if argv is None else argv),
            'hidden': args.hidden, 'noise_aware': args.noise_aware, 'augment': args.augment,
            'iterations': it, 'train_seconds': round(time.time() - t0),
            'utterances': len(utts), 'skipped_non_finite_batches': skipped,
            'final_loss_mask': round(ema[0], 4),
            'final_loss_err': round(ema[1], 4), 'objective': args.objective,
            f'final_{args.objective}_db': round(ema[2], 3),
            'train_noises': sorted(TRAIN_NOISES) + ['babble'], 'train_snrs_db': TRAIN_SNRS,
            'clean_fraction': CLEAN_FRACTION, 'torch': torch.__version__,
            'device': (torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'),
            'batch': args.batch, 'workers': args.workers, 'init': init}
    if args.objective == 'mel_am':
        meta['am_weight'] = args.am_weight
    with open(os.path.join(args.out, 'enhancer.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
