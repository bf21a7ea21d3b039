"""``VisionIRP``: semantic segmentation by refining a latent (the vision plugin, issue #3)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections import OrderedDict
from typing import Any, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from sage_irp_ros.accel import GraphedFunction
from sage_irp_ros.core.loop import HaltConfig
from sage_irp_ros.core.plugin import (
    HALT_CONFIDENT,
    IRPPlugin,
    IRPState,
    Schedule,
    recalled_hint,
)
from sage_irp_ros.plugins.vision.model import PropagationNet, VisionConfig, load_checkpoint
from sage_irp_ros.plugins.vision.unknown import (
    UnknownDetector,
    class_doubt,
    content_cells,
    frame_features,
)

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, 'vision_irp.pt')
PRECISIONS = ('fp32', 'fp16')
Box = Tuple[int, int, int, int]  # (top, left, height, width) of a frame's letterboxed content


class VisionIRP(IRPPlugin):
    """Segment an RGB image into ``classes`` by iteratively refining a latent.

    Four invariants:

    - **state space**: the payload is a latent ``z`` on the plugin's device: (1, 16, H/2, W/2)
      non-negative class evidence for the committed ``propagate`` model (``PropagationNet``;
      the model input is the letterboxed frame, 64 px on its longer side), (1, 32, H/4, W/4)
      for the older residual refiners (``VisionIRPNet``). ``state.meta`` holds the encoder's
      injection features (for ``propagate``: the features and the learnt affinities) and the
      decoder's per-frame skip terms (computed once by ``init_state``), the decoded logits of
      the current ``z``, its energy and uncertain fraction, and the input size. Step ``t``
      maps ``z_t`` to ``z_{t+1}`` with one weight-tied map (steps are iterations of the same
      map): for ``propagate``, evidence moves to neighbours through the affinities (at most 2
      cells a step) and a learnt residual corrects it.
    - **noise / uncertainty model**: the image is a scene seen through sensor noise, optical
      blur and low contrast (``scenes.py``); the per-pixel class posterior is the softmax of
      the decoded logits, and its spread is the plugin's uncertainty. In the ``tags`` task an
      object's class is printed on a small tag somewhere on it: at ``z_0`` only the pixels
      near a tag know their class, and each step carries the evidence further across the
      object, so an object far from its tag stays uncertain until the evidence arrives.
    - **energy**: the mean over the 64x64 model-resolution pixels of the entropy of the decoded
      class distribution, in **nats** per pixel, in ``[0, ln C]``; lower is better (a confident
      segmentation). It is computed inside ``step`` from the logits the step decodes anyway
      (one host sync per step, together with the uncertain fraction), so ``energy()`` and
      ``halt()`` cost nothing. ``energy_scale`` is ``ln C`` (the maximum entropy), so the
      slope threshold ``eps`` is a fraction of the maximum entropy per step.
      Halting: ``confident`` when the fraction of pixels whose max class probability is below
      ``uncertain_p`` is under ``confident_frac``; then the core's slope rule and ``max_steps``.
    - **contribution (coherence)**: a class-id mask of the camera frame at the input's size,
      with per-pixel class probabilities and confidence for overlays and for other plugins
      (e.g. the language plugin naming what is seen). Easy frames stop after a step or two and
      return their compute to the budget; hard frames spend more.

    One instance holds only the network and configuration, so any number of inputs may be
    refined at once (threads) with the same instance: all per-run data is in the state.
    """

    kind = 'vision'
    version = 'vision-irp-3'

    def __init__(self, net: torch.nn.Module, device: str = 'cpu', precision: str = 'fp32',
                 confident: bool = True, confident_frac: Optional[float] = None,
                 unknown: Optional[UnknownDetector] = None, pad: str = 'stride',
                 recall_similarity: float = 0.8, recall_agreement: float = 0.5,
                 recall_energy_tol: float = 0.15, recall_shift: int = 2,
                 recall_halt_members: int = 2, compile_encoder: bool = True,
                 cuda_graphs: bool = True):
        """Wrap a trained ``net`` on ``device`` ('cpu', 'cuda', 'cuda:1', ...) at ``precision``.

        ``precision`` is 'fp32' or 'fp16'; fp16 is accepted on CUDA only (CPU half-precision
        convolutions are slow and unsupported for some ops), so 'fp16' on a CPU device raises
        ``ValueError``. ``confident=False`` disables the 'confident' rule for every run (the
        ``ctx`` key ``'confident'`` does the same per run). ``confident_frac`` overrides the
        checkpoint's threshold of the 'confident' rule (the benchmark sweeps it). ``unknown``:
        the fitted unknown detector (``unknown.py``; stored in the checkpoint); without one
        :meth:`assess` flags nothing. ``pad``: how a letterboxed frame is padded, 'stride' (to a
        multiple of 4 only: a 640x480 frame becomes a 64x48 input; the default, better on
        validation) or 'square' (to input_size x input_size). ``recall_similarity`` and
        ``recall_agreement``: when a remembered latent is good enough to start from (see
        :meth:`warm_start`); ``recall_shift``: how far (latent cells) a hint is shifted to
        fit the frame; ``recall_energy_tol``: when a warm start has reached what the
        remembered run reached, and ``recall_halt_members``: the fewest runs a hint must
        stand for to halt that way before a step (see :meth:`halt`). ``compile_encoder``: on
        a CPU device, run the encoder as a frozen TorchScript graph optimised for inference
        (oneDNN convolutions with prepacked weights; :func:`compile_encoder_cpu`), checked
        against the eager encoder at construction and left eager when it differs or fails;
        ignored on CUDA. ``cuda_graphs``: on a CUDA device, the encoder and the step (with the
        energy's statistics fused into it) replay from CUDA graphs captured per input shape
        (:class:`~sage_irp_ros.accel.GraphedFunction`, eager where capture fails); ignored on
        the CPU. On CUDA the step decodes the energy's coarse logits in the same graph, so the
        halting check is one copy of two numbers per step.
        """
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        dev = torch.device(device)
        if dev.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError(f'device {device!r} requested but CUDA is not available')
        if precision == 'fp16' and dev.type != 'cuda':
            raise ValueError(f"precision 'fp16' needs a CUDA device; got device {device!r} "
                             "(use precision='fp32' on the CPU)")
        self.device = dev
        self.precision = precision
        self.dtype = torch.float16 if precision == 'fp16' else torch.float32
        self.net = net.to(device=dev, dtype=self.dtype).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.cfg: VisionConfig = net.cfg
        self.confident = bool(confident)
        self.confident_frac = float(self.cfg.confident_frac if confident_frac is None
                                    else confident_frac)
        self.unknown = None if unknown is None else unknown.to(dev)
        if pad not in ('stride', 'square'):
            raise ValueError(f"pad must be 'stride' or 'square', got {pad!r}")
        self.pad = pad
        self.recall_similarity = float(recall_similarity)
        self.recall_agreement = float(recall_agreement)
        if not recall_energy_tol >= 0:
            raise ValueError(f'recall_energy_tol must be >= 0, got {recall_energy_tol!r}')
        self.recall_energy_tol = float(recall_energy_tol)
        if int(recall_shift) != recall_shift or recall_shift < 0:
            raise ValueError(f'recall_shift must be an integer >= 0, got {recall_shift!r}')
        self.recall_shift = int(recall_shift)
        if int(recall_halt_members) != recall_halt_members or recall_halt_members < 1:
            raise ValueError(f'recall_halt_members must be an integer >= 1, got '
                             f'{recall_halt_members!r}')
        self.recall_halt_members = int(recall_halt_members)
        self.encoder_compiled = False
        self._encode = self.net.encode
        if compile_encoder and dev.type == 'cpu':
            fast = compile_encoder_cpu(self.net, self.dtype)
            if fast is not None:
                self._encode, self.encoder_compiled = fast, True
        #: The fused step (step, coarse decoding, halting statistics) on CUDA; None on the CPU,
        #: where the step stays lazy (a fixed-length run decodes once, at the end).
        self.step_graphs: Optional[GraphedFunction] = None
        self.encoder_graphs: Optional[GraphedFunction] = None
        if dev.type == 'cuda' and isinstance(self.net, PropagationNet):
            self.step_graphs = GraphedFunction(self._step_fused, enabled=cuda_graphs)
            self.encoder_graphs = GraphedFunction(self._encode_flat, enabled=cuda_graphs)
            self._encode = self._encode_graphed

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, device: str = 'cpu', precision: str = 'fp32',
                        **kwargs: Any) -> 'VisionIRP':
        """Load a checkpoint written by ``train.py``."""
        net, extra = load_checkpoint(path)
        if 'unknown' not in kwargs and extra.get('unknown'):
            kwargs['unknown'] = UnknownDetector.from_dict(extra['unknown'])
        return cls(net, device=device, precision=precision, **kwargs)

    @property
    def unknown_threshold(self) -> Optional[float]:
        """Threshold of the unknown score (None without a detector)."""
        return None if self.unknown is None else self.unknown.threshold

    @property
    def classes(self) -> Tuple[str, ...]:
        """Class names; index = class id in the mask (0 = background)."""
        return tuple(self.cfg.classes)

    def halt_config(self, max_steps: Optional[int] = None) -> HaltConfig:
        """Return the tuned halting parameters; ``max_steps`` defaults to ``steps_max``."""
        return HaltConfig(eps=float(self.cfg.eps), K=int(self.cfg.K),
                          max_steps=self.cfg.steps_max if max_steps is None else int(max_steps))

    def no_halt_config(self, max_steps: Optional[int] = None) -> HaltConfig:
        """Halting off: run exactly ``max_steps`` steps (use with ``ctx={'confident': False}``)."""
        n = self.cfg.steps_max if max_steps is None else int(max_steps)
        return HaltConfig(eps=0.0, K=n + 1, max_steps=n)

    # --- the contract -------------------------------------------------------------------
    def _to_input(self, x0: Any) -> Tuple[torch.Tensor, Tuple[int, int], Box]:
        """Letterbox an (H, W, 3) uint8 frame into the model's input, keeping its aspect ratio.

        The frame is scaled (bilinear, antialiased when shrinking) so that its longer side is
        ``input_size`` and centred on a canvas filled with its mean colour (:meth:`canvas_size`:
        the content rounded up to a multiple of 4, or the square). Returns the input tensor,
        the frame's (H, W) and the content box ``(top, left, height, width)`` in model pixels.
        """
        if isinstance(x0, torch.Tensor):
            x0 = x0.detach().cpu().numpy()
        a = np.asarray(x0)
        if a.dtype != np.uint8:
            raise ValueError(f'expected a uint8 RGB image, got dtype {a.dtype}')
        if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f'expected an (H, W, 3) RGB image, got shape {a.shape}')
        h, w = int(a.shape[0]), int(a.shape[1])
        x = torch.from_numpy(np.ascontiguousarray(a[..., :3])).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).to(self.dtype) / 255.0
        s = self.cfg.input_size
        box = letterbox_box(h, w, s)
        top, left, bh, bw = box
        if (bh, bw) != (h, w):
            x = F.interpolate(x.float(), size=(bh, bw), mode='bilinear', align_corners=False,
                              antialias=(h > bh or w > bw)).to(self.dtype)
        ch, cw = self.canvas_size(bh, bw)
        if (bh, bw) != (ch, cw):
            t, lft = (ch - bh) // 2, (cw - bw) // 2
            canvas = x.mean((2, 3), keepdim=True).expand(1, 3, ch, cw).clone()
            canvas[:, :, t:t + bh, lft:lft + bw] = x
            x = canvas
            box = (t, lft, bh, bw)
        else:
            box = (0, 0, bh, bw)
        return x, (h, w), box

    def canvas_size(self, bh: int, bw: int) -> Tuple[int, int]:
        """Return the model input size for letterboxed content of (bh, bw).

        pad='stride': the content rounded up to a multiple of 4 (at least 8; the network is
        fully convolutional); pad='square': input_size x input_size.
        """
        if self.pad == 'square':
            s = self.cfg.input_size
            return s, s
        m = 4
        return -(-max(bh, 8) // m) * m, -(-max(bw, 8) // m) * m

    def _stats_tensor(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 2) float32 per input: mean entropy in nats, fraction of uncertain pixels."""
        logp = torch.log_softmax(logits.float(), 1)
        p = logp.exp()
        ent = -(p * logp).sum(1).flatten(1).mean(1)
        unc = (p.max(1).values < self.cfg.uncertain_p).float().flatten(1).mean(1)
        return torch.stack([ent, unc], 1)

    def _stats(self, logits: torch.Tensor) -> Tuple[float, float]:
        """(mean entropy in nats, fraction of uncertain pixels) of one input: one host sync."""
        e, u = self._stats_tensor(logits)[0].tolist()
        return float(e), float(u)

    # --- CUDA: graphed encoder and fused step ---------------------------------------------
    def _encode_flat(self, x: torch.Tensor):
        z, inject, (f32, f64s, f64p) = self.net.encode(x)
        return z, inject, f32, f64s, f64p

    def _encode_graphed(self, x: torch.Tensor):
        z, inject, f32, f64s, f64p = self.encoder_graphs(x)
        return z, inject, (f32, f64s, f64p)

    def _step_fused(self, z: torch.Tensor, inject: torch.Tensor, f32: torch.Tensor,
                    f64p: torch.Tensor):
        """One step and its energy's inputs, as one pure tensor function (graphed on CUDA)."""
        z = self.net.step(z, inject)
        coarse = self.net.decode_coarse(z, (f32, None, f64p))
        return z, coarse, self._stats_tensor(coarse)

    def init_state(self, x0: Any, ctx: Optional[Mapping[str, Any]] = None) -> IRPState:
        """Letterbox the (H, W, 3) uint8 image into the model input and encode it.

        Decoding (logits, energy) is lazy: :meth:`energy` and :meth:`result` decode the
        current latent when they are first asked, so a run of fixed length that never reads
        the energy decodes once, at the end.
        """
        x, hw, box = self._to_input(x0)
        with torch.inference_mode():
            z, inject, skip = self._encode(x)
        ctx = ctx or {}
        confident = self.confident and bool(ctx.get('confident', True))
        meta = {'inject': inject, 'skip': skip, 'logits': None, 'coarse': None, 'E': None,
                'uncertain': None, 'hw': hw, 'box': box, 'confident_rule': confident,
                'key': None}
        recall = ctx.get('recall')
        if recall is not None and self.cfg.refiner == 'propagate':
            meta['key'] = self.memory_key(inject, box)
            z, meta['warm_start'] = self.warm_start(z, recall(meta['key']))
        return IRPState(payload=z, meta=meta)

    # --- memory: key, experience, warm start ----------------------------------------------
    def memory_key(self, inject: torch.Tensor, box: Box) -> np.ndarray:
        """Return the frame's key for memory: where what is, coarsely (1-D float32, unit norm).

        The encoder features of the frame's content, average-pooled to a 4x4 grid, centred
        (the mean of each channel over the grid removed, so only the layout remains) and
        normalised: a view of the same place with new noise or a shift of a few pixels keeps
        nearly the same key; another place does not.
        """
        c = self.cfg.latent_channels
        stride = self.cfg.latent_stride
        top, left, bh, bw = box
        with torch.inference_mode():
            e = inject[:, :c, top // stride:-(-(top + bh) // stride),
                       left // stride:-(-(left + bw) // stride)].float()
            g = F.adaptive_avg_pool2d(e, 4)[0]
            g = g - g.mean((1, 2), keepdim=True)
            k = g.reshape(-1)
            k = k / k.norm().clamp_min(1e-12)
        return k.cpu().numpy().astype(np.float32)

    def warm_start(self, z0: torch.Tensor, record: Any) -> Tuple[torch.Tensor, dict]:
        """Start from a remembered final latent when it fits this frame; else ``z0``.

        A record (``MemoryRecord`` of the memory store: ``latent``, ``similarity``,
        ``source``, ``id``) is used when (1) its key similarity is at least
        ``recall_similarity``, (2) its latent has this frame's shape, and (3) after aligning
        it to this frame (the shift of up to ``recall_shift`` latent cells, 2 = 4 pixels, that
        best matches the evidence the encoder already sees), it **agrees** with that evidence:
        the cosine between the two over the cells where this frame has evidence is at least
        ``recall_agreement``. A hint about another place, or with other classes where this
        frame can see its tags, is ignored. The start is then ``max(z0, aligned hint)``: the
        encoder's own evidence is never lost; the first step moves what the shift left off.
        (Weighting the hint by this frame's "object" probability, and searching 3 cells, were
        tried on validation streams: fewer steps saved, no better mIoU. Searching 1 cell is
        cheaper, with the same steps on the validation stream, but it fails the 1-point
        quality bound of ``test_memory_warm_start_helps_the_same_place_and_ignores_others``
        on hard places seen once: not the default. docs/MEMORY.md.) Returns the latent and
        the ``warm_start`` record for telemetry (``used``, ``similarity``, ``source``, ``id``,
        and why not).
        """
        lat, info = recalled_hint(record, self.recall_similarity)
        if lat is None:
            return z0, info
        hint = torch.as_tensor(np.asarray(lat) if not isinstance(lat, torch.Tensor) else lat)
        hint = hint.to(device=z0.device, dtype=z0.dtype).reshape(-1, *hint.shape[-3:])
        if tuple(hint.shape[1:]) != tuple(z0.shape[1:]):
            info['why'] = f'shape {tuple(hint.shape[1:])} != {tuple(z0.shape[1:])}'
            return z0, info
        with torch.inference_mode():
            aligned, shift, agree = _align(z0, hint[:1], self.recall_shift)
            info.update(shift=list(shift), agreement=agree)
            if agree < self.recall_agreement:
                info['why'] = 'disagrees with the evidence seen'
                return z0, info
        info['used'] = True
        return torch.maximum(z0, aligned), info

    def experience(self, state: IRPState, output: Any) -> Optional[dict]:
        """Return what memory keeps of a run: the frame's key, the refined latent, a summary.

        Only the ``propagate`` model is remembered (its latent is class evidence that a later
        view of the same place can start from), and only runs that started cold: a run that
        started from memory is not stored again, so an error in a remembered latent cannot
        compound from memory to memory (measured: day-1 runs that stored their warm-started
        results lost 1.6 mIoU points on the next day's visits, ``memory/demo.py``).
        """
        if self.cfg.refiner != 'propagate':
            return None
        m = state.meta
        if m.get('warm_start', {}).get('used'):
            return None
        key = m.get('key')
        if key is None:
            key = self.memory_key(m['inject'], m['box'])
        present = sorted(int(c) for c in np.unique(output)) if output is not None else []
        return {'key': key, 'latent': state.payload,
                'summary': {'hw': list(m['hw']), 'box': list(m['box']),
                            'classes_present': [self.classes[c] for c in present
                                                if c < len(self.classes)],
                            'warm_start': bool(m.get('warm_start', {}).get('used', False))}}

    def _logits(self, state: IRPState) -> torch.Tensor:
        m = state.meta
        if m['logits'] is None:
            with torch.inference_mode():
                m['logits'] = self.net.decode(state.payload, m['skip'])
        return m['logits']

    def _coarse_logits(self, state: IRPState) -> torch.Tensor:
        """Return the logits the energy reads (cached per state).

        At the latent's resolution for the ``propagate`` model (``decode_coarse``), else the
        full decoding.
        """
        m = state.meta
        if m.get('coarse') is None:
            with torch.inference_mode():
                m['coarse'] = (self.net.decode_coarse(state.payload, m['skip'])
                               if hasattr(self.net, 'decode_coarse') else self._logits(state))
        return m['coarse']

    def _ensure_stats(self, state: IRPState) -> None:
        m = state.meta
        if m['E'] is None:
            if m.get('stats') is not None:  # computed by the fused step: read them (one sync)
                m['E'], m['uncertain'] = (float(v) for v in m['stats'].tolist())
                return
            with torch.inference_mode():
                m['E'], m['uncertain'] = self._stats(self._coarse_logits(state))

    def energies(self, states: list) -> list:
        """Energies of several states, the fused steps' statistics read in one host sync."""
        fused = [s for s in states if s.meta['E'] is None and s.meta.get('stats') is not None]
        if len(fused) > 1:
            stats = torch.stack([s.meta['stats'] for s in fused]).tolist()
            for s, (e, u) in zip(fused, stats, strict=True):
                s.meta['E'], s.meta['uncertain'] = float(e), float(u)
        return [self.energy(s) for s in states]

    def energy(self, state: IRPState) -> float:
        """Mean per-pixel entropy of the decoded class distribution (nats), cached per state.

        For the ``propagate`` model the distribution is decoded at the latent's resolution
        (``PropagationNet.decode_coarse``, a third of a full decoding), for the older models at
        the model input's.
        """
        self._ensure_stats(state)
        return state.meta['E']

    def step(self, state: IRPState, schedule: Schedule) -> IRPState:
        """One refiner iteration of the latent.

        On the CPU decoding waits until something asks; on CUDA the fused step decodes the
        energy's coarse logits and statistics in the same graph.
        """
        if self.step_graphs is not None:
            return self.step_batch([state], [schedule])[0]
        with torch.inference_mode():
            z = self.net.step(state.payload, state.meta['inject'])
        return self._stepped(state, z)

    @staticmethod
    def _stepped(state: IRPState, z: torch.Tensor, coarse=None, stats=None) -> IRPState:
        return state.evolve(z, logits=None, coarse=coarse, stats=stats, E=None, uncertain=None,
                            assess=None)

    def step_batch(self, states: list, schedules: list) -> list:
        """Step the runs whose latents have the same shape in one pass of the network."""
        groups: dict = {}
        for i, s in enumerate(states):
            groups.setdefault(tuple(s.payload.shape), []).append(i)
        out: list = [None] * len(states)
        with torch.inference_mode():
            for idx in groups.values():
                if len(idx) == 1 and self.step_graphs is None:
                    out[idx[0]] = self.step(states[idx[0]], schedules[idx[0]])
                    continue
                group = [states[i] for i in idx]

                def cat(get, group=group):
                    ts = [get(s) for s in group]
                    return ts[0] if len(ts) == 1 else torch.cat(ts)
                z, inject = cat(lambda s: s.payload), cat(lambda s: s.meta['inject'])
                if self.step_graphs is not None:
                    z, coarse, stats = self.step_graphs(
                        z, inject, cat(lambda s: s.meta['skip'][0]),
                        cat(lambda s: s.meta['skip'][2]))
                    for k, i in enumerate(idx):
                        out[i] = self._stepped(states[i], z[k:k + 1], coarse[k:k + 1],
                                               stats[k])
                else:
                    z = self.net.step(z, inject)
                    for k, i in enumerate(idx):
                        out[i] = self._stepped(states[i], z[k:k + 1])
        return out

    def halt(self, state: IRPState, energies: list) -> Optional[str]:
        """'confident' when the frame is as certain as a finished run: two rules.

        (1) The fraction of uncertain pixels is below ``confident_frac``. (2) A warm start
        (``state.meta['warm_start']`` used, with the remembered run's final ``energy``) whose
        energy is within ``recall_energy_tol`` (relative) of the remembered run's: it has
        reached what that run reached, so more steps would only repeat it. A hint that is one
        raw experience (``members`` 1) must first take a step: a run remembered once carries
        its own outlines and mistakes, which the step corrects (warm starts from single
        experiences of hard places that stopped at step 0 lost several mIoU points on
        validation places). A consolidated hint (a prototype of ``members`` >=
        ``recall_halt_members``, 2, visits) may halt at step 0: on validation streams after a
        sleep this saved steps at no loss of mIoU (docs/MEMORY.md). Without rule (2) a warm
        start waited for the slope rule, about 1.5 steps; the tolerance, 0.15, was chosen on
        the validation stream (``bench/memory_bench.py --validation --recall-energy-tol T``,
        with the one-step condition for every hint then: 0: 1.19 steps, 0.15: 0.90, 0.3:
        0.88, mIoU within 0.04 points of each other): docs/MEMORY.md.
        """
        m = state.meta
        if not m['confident_rule']:  # off for this plugin or run: both rules
            return None
        self._ensure_stats(state)
        if m['uncertain'] < self.confident_frac:
            return HALT_CONFIDENT
        ws = m.get('warm_start')
        if (ws and ws.get('used')
                and (len(energies) >= 2 or ws.get('members', 1) >= self.recall_halt_members)
                and ws.get('energy') is not None
                and math.isfinite(ws['energy'])
                and energies[-1] <= ws['energy'] * (1.0 + self.recall_energy_tol)):
            return HALT_CONFIDENT
        return None

    def energy_scale(self, e0: float) -> float:
        """``ln C``: the maximum entropy, so ``eps`` is a fraction of it per step."""
        return math.log(self.cfg.num_classes)

    def _upsampled_logits(self, state: IRPState) -> torch.Tensor:
        logits = self._logits(state).float()
        h, w = state.meta['hw']
        top, left, bh, bw = state.meta['box']
        if (bh, bw) != tuple(logits.shape[-2:]):
            logits = logits[:, :, top:top + bh, left:left + bw]
        if tuple(logits.shape[-2:]) != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode='bilinear', align_corners=False)
        return logits[0]

    def result(self, state: IRPState) -> np.ndarray:
        """(H, W) uint8 class ids at the input's size: argmax of the upsampled logits.

        The logits are laid out class-last before the argmax: on a CPU the argmax over the
        outer, strided class axis cost 28 ms for a 640x480 frame, class-last 4 ms (the same
        mask; measured for the camera path, docs/DEMO.md).
        """
        with torch.inference_mode():
            logits = self._upsampled_logits(state)
            return (logits.permute(1, 2, 0).contiguous().argmax(-1).to(torch.uint8)
                    .cpu().numpy())

    def probabilities(self, state: IRPState) -> np.ndarray:
        """(H, W, C) float32 per-class probabilities at the input's size (for overlays)."""
        with torch.inference_mode():
            p = torch.softmax(self._upsampled_logits(state), 0)
            return p.permute(1, 2, 0).contiguous().cpu().numpy()

    def confidence(self, state: IRPState) -> np.ndarray:
        """(H, W) float32 max class probability at the input's size."""
        return self.probabilities(state).max(-1)

    def assess(self, state: IRPState) -> dict:
        """Per-frame confidence and "I don't know" of a state (cached in the state).

        Returns ``confidence`` (mean max class probability over the frame's content, in
        [1/C, 1]), ``unknown_score`` (``unknown.py``: how unlike the in-distribution latents
        the frame is; higher is stranger), ``unknown_threshold`` and ``unknown`` (score above
        the threshold calibrated on validation frames). Without a detector the score is the
        energy in units of its maximum (ln C) and nothing is flagged.
        """
        m = state.meta
        if m.get('assess') is not None:
            return m['assess']
        top, left, bh, bw = m['box']
        with torch.inference_mode():
            logits = self._logits(state)[:, :, top:top + bh, left:left + bw].float()
            conf = float(torch.softmax(logits, 1).max(1).values.mean())
            if self.unknown is None:
                score, thr = self.energy(state) / math.log(self.cfg.num_classes), None
                unknown = False
            else:
                feats = frame_features(state.payload, m['inject'])
                cells = content_cells(m['box'], tuple(m['logits'].shape[-2:]),
                                      tuple(feats.shape[-2:]), feats.device)
                energy = torch.tensor([self.energy(state)])
                doubt = None
                if 'class_conf' in self.unknown.components:
                    coarse = self._coarse_logits(state)
                    ccells = content_cells(m['box'], tuple(m['logits'].shape[-2:]),
                                           tuple(coarse.shape[-2:]), coarse.device)
                    doubt = class_doubt(coarse, ccells[None]).cpu()
                score = float(self.unknown.score_parts(
                    self.unknown.frame_parts(feats, cells[None], energy, doubt))[0])
                thr = self.unknown.threshold
                unknown = bool(score > thr)
        m['assess'] = {'confidence': conf, 'unknown_score': score, 'unknown_threshold': thr,
                       'unknown': unknown}
        return m['assess']


def _align(z0: torch.Tensor, hint: torch.Tensor, max_shift: int):
    """Shift ``hint`` (1, C, H, W) by up to ``max_shift`` cells to best match ``z0``.

    Returns ``(shifted hint, (dy, dx), agreement)``: the agreement is the cosine between
    ``z0`` and the shifted hint over the cells where ``z0`` has evidence (its channel sum is
    above a tenth of its maximum); 0 when ``z0`` has none. All ``(2p+1)^2`` shifts are
    strided views of the padded hint, contracted with the masked evidence in one matrix
    product (the same numbers as a convolution with a latent-sized kernel, with less work).
    """
    p = max_shift
    H, W = z0.shape[-2:]
    z = z0.float()
    s = z.sum(1, keepdim=True)
    mask = (s > 0.1 * s.max().clamp_min(1e-12)).float()[0, 0]     # (H, W)
    a = z[0] * mask                                                 # (C, H, W)
    padded = F.pad(hint.float(), (p, p, p, p))[0]                   # (C, H+2p, W+2p)
    k = 2 * p + 1
    sc, sh, sw = padded.stride()
    shifts = padded.as_strided((k, k, padded.shape[0], H, W), (sh, sw, sc, sh, sw))
    dot = torch.tensordot(shifts, a, dims=([2, 3, 4], [0, 1, 2]))  # (k, k): [i, j] is the
    sq = (padded * padded).sum(0)                                   # shift dy = p - i,
    qh, qw = sq.stride()                                            # dx = p - j
    nrm = torch.tensordot(sq.as_strided((k, k, H, W), (qh, qw, qh, qw)), mask,
                          dims=([2, 3], [0, 1])).clamp_min(0).sqrt()
    cos = dot / (nrm * a.norm()).clamp_min(1e-12)
    i = int(torch.argmax(cos))
    r, c = divmod(i, k)
    shifted = padded[None, :, r:r + H, c:c + W].to(hint.dtype)
    return shifted, (p - r, p - c), max(float(cos[r, c]), 0.0)


class _Encoder(torch.nn.Module):
    """The network's ``encode`` as a module's ``forward`` (what TorchScript traces)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        z, inject, skip = self.net.encode(x)
        return z, inject, tuple(skip)


def compile_encoder_cpu(net: torch.nn.Module, dtype: torch.dtype = torch.float32,
                        probes: Tuple[Tuple[int, int], ...] = ((64, 64), (48, 64), (64, 8)),
                        atol: float = 1e-4):
    """Return ``net.encode`` as a frozen, inference-optimised TorchScript graph, or None.

    Only the committed ``propagate`` model (:class:`PropagationNet`) at fp32. The encoder is
    the largest fixed part of every run (about 1.5 ms of a 6.5 ms cold run on this CPU, one
    thread): ``torch.jit.optimize_for_inference`` runs its convolutions through oneDNN with
    prepacked weights and fuses the activations: about 0.3 ms less inside runs (ratio
    0.78-0.79, ``bench/vision_encoder_bench.py``; the step and the decoders were measured
    slower that way and stay eager). The graph is traced once per set of weights (cached by a
    fingerprint of them, so reconfiguring a node reuses it); it is checked on letterboxed input
    shapes (``probes``, random pixels) against the eager encoder, every output within ``atol``:
    on a mismatch or any error (a build without oneDNN, ...) the result is None and the caller
    keeps the eager encoder.
    """
    if dtype != torch.float32 or not isinstance(net, PropagationNet):
        return None
    key = _weights_fingerprint(net) + repr((probes, atol))
    with _COMPILED_LOCK:
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key]
    fast = _compile_and_check(net, probes, atol)
    with _COMPILED_LOCK:
        _COMPILED[key] = fast
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    return fast


# Compiled encoders by the weights they froze (``compile_encoder_cpu``): a node that is
# configured again, or a second plugin on the same weights, reuses the graph instead of
# tracing anew (about 80 ms, and TorchScript keeps some memory per graph it has built).
_COMPILED: 'OrderedDict[str, Any]' = OrderedDict()
_COMPILED_LOCK = threading.Lock()
_COMPILED_MAX = 4


def _weights_fingerprint(net: torch.nn.Module) -> str:
    """SHA-1 of the network's configuration and every tensor of its state dict."""
    h = hashlib.sha1(json.dumps(net.cfg.to_dict(), sort_keys=True).encode())
    for name, t in net.state_dict().items():
        a = t.detach().to('cpu', torch.float32).contiguous().numpy()
        h.update(name.encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _compile_and_check(net: torch.nn.Module, probes, atol: float):
    """Trace, freeze and optimise ``net.encode``; check it on ``probes``; None on failure."""
    import warnings
    try:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            probe = torch.rand((1, 3) + probes[0], generator=g)
            fast = torch.jit.optimize_for_inference(torch.jit.freeze(
                torch.jit.trace(_Encoder(net).eval(), (probe,), check_trace=False)))
        with torch.inference_mode():
            for h, w in probes:
                x = torch.rand((1, 3, h, w), generator=g)
                ref = _Encoder(net)(x)
                for _ in range(2):  # the profiling executor's first calls take other paths
                    got = fast(x)
                flat_ref = [ref[0], ref[1], *ref[2]]
                flat_got = [got[0], got[1], *got[2]]
                if len(flat_ref) != len(flat_got) or any(
                        a.shape != b.shape or not torch.allclose(a, b, atol=atol, rtol=0)
                        for a, b in zip(flat_ref, flat_got, strict=True)):
                    return None
    except Exception:  # noqa: BLE001 - compiling is an optimisation: eager always works
        return None
    return fast  # returns (z, inject, skip) as encode does, skip a tuple


def letterbox_box(h: int, w: int, size: int) -> Tuple[int, int, int, int]:
    """Content box ``(top, left, height, width)`` of an (h, w) frame letterboxed into size^2."""
    scale = size / max(h, w)
    bh = min(max(int(round(h * scale)), 1), size)
    bw = min(max(int(round(w * scale)), 1), size)
    return (size - bh) // 2, (size - bw) // 2, bh, bw


def load_default(device: str = 'cpu', precision: str = 'fp32', **kwargs: Any) -> VisionIRP:
    """Load the plugin with the committed weights (``weights/vision_irp.pt`` beside it)."""
    if not os.path.exists(DEFAULT_WEIGHTS):
        raise FileNotFoundError(f'committed vision weights missing: {DEFAULT_WEIGHTS}')
    return VisionIRP.from_checkpoint(DEFAULT_WEIGHTS, device=device, precision=precision, **kwargs)
