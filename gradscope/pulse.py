"""The pulse: a few scalars of every step, logged or not, kept on the device.

On every optimizer step the pulse takes the step's loss, the gradient norm of each parameter and
the total, runs the detector (gradscope/detectors.py) on them and writes one row into a ring on
the device: ``[loss, total gradient norm, z of the loss, z of the gradient norm, alarm bits,
skipped, micro-batch columns, the loss trend's smoothed loss, minimum and fall, each parameter's
gradient norm]``. Nothing is read back on an unlogged step: the ring is
copied to the host once per logged step (a blocking copy on a GPU; so the history keeps every step's loss and gradient norm
even at ``every=100``), and the alarm bits of each step follow in a tiny non-blocking copy, so the
host learns of a spike without waiting for the device. On the CPU, where reading memory is no
device synchronisation, both are read in place. On a GPU, once the detector is past its warm-up,
the step's arithmetic (about 170 small kernels) is replayed as one CUDA graph.

On the CPU each parameter's gradient norm is read from a fixed strided sample of at most
:data:`SAMPLE` elements and scaled by ``sqrt(numel / sampled)``: an estimate for large tensors
(exact for those of at most ``SAMPLE`` elements), which keeps the every-step cost to a fraction of
one pass over the gradients. On a GPU the norms are exact, from one foreach norm over the whole
gradients: a couple of launches, where a strided view per tensor would cost a launch (and its host
overhead) each, and a read of the gradients that takes a fraction of a percent of a step. Exact
per-parameter norms are recorded on logged steps as ``grad_norm``, and the guard
(gradscope/guard.py) reads every element when it decides on a non-finite gradient.

The loss arrives in one of two ways: ``mon.step(loss=...)`` / ``mon.observe_loss(loss)``, or by
itself, from the tensor ``backward()`` is called on, when that backward reaches the model (a scalar
tensor; with a GradScaler the scale is divided out). Several backward passes in one step (gradient
accumulation) are micro-batches: their losses add up, and each one's loss and the accumulated
gradient norm after it are kept for the step, to say which micro-batch a spike came from.
"""

from __future__ import annotations

import functools
import importlib
import math
import threading
import weakref

import numpy as np
import torch

from gradscope.buffer import to_device
from gradscope.detectors import GRAD_NONFINITE, LOSS_NONFINITE, Detector, has_bit, without_gradient_alarms
from gradscope.distributed import is_dtensor, local
from gradscope.stats.reductions import foreach_norms, group_by_device_and_dtype, stored_values

SAMPLE = 1024
"""Elements of each parameter's gradient read on every step (all of them for smaller tensors)."""

CUDA_GRAPHS = True
"""Whether the pulse's per-step arithmetic on a GPU is replayed as a CUDA graph once the detector
is past its warm-up (:meth:`Pulse._replayed`)."""

MICRO_BATCHES = 64
"""Micro-batches per step kept apart; later ones share the last slot."""

OVERFLOW_LOSS = 1e6
"""The size of loss a GradScaler's scale may be taken to have overflowed to Inf: a loss past it
that overflows is no ordinary loss (a diverged run is reported as one)."""

(LOSS, GRAD_NORM, Z_LOSS, Z_GRAD, ALARM, SKIPPED, MICRO_COUNT, MICRO_LOSS, MICRO_GRAD,
 LOSS_SMOOTHED, LOSS_LOWEST, LOSS_FALL, FIRST_PARAMETER) = range(13)
"""Columns of a ring row."""
PULSE_COLUMNS = ("loss", "grad_norm", "z_loss", "z_grad", "alarm", "skipped", "micro_batches",
                 "micro_batch_loss", "micro_batch_grad", "loss_smoothed", "loss_lowest", "loss_fall")
"""Names of the columns before the parameters' norms, as ``Recorder.pulse_history()`` gives them."""


class Pulse:
    """The every-step scalars of the parameters ``names``/``params`` (on one device) and their
    detector, in a ring of ``window`` rows.

    On a GPU the ring, the loss and the detector's state are tensors there; on the CPU they are
    numpy arrays (the host is the device: numpy's cost per call on a few numbers is a fraction of
    torch's, and the per-step budget is a few tens of microseconds)."""

    def __init__(self, names: list[str], params: list[torch.nn.Parameter], detector: Detector,
                 window: int, host_arithmetic: bool | None = None) -> None:
        self.names = list(names)
        self.params = list(params)
        self.device = local(self.params[0].detach()).device
        self.on_host = self.device.type == "cpu" if host_arithmetic is None else host_arithmetic
        xp = self.xp = np if self.on_host else torch
        self.window = window
        self.detector = detector
        self._sharded = any(is_dtensor(p) for p in self.params)
        sizes = [local(p.detach()).numel() for p in self.params]
        rows = [local(p.detach()).shape[-1] if local(p.detach()).dim() else 1 for p in self.params]
        # on a GPU whole gradients: one foreach norm over contiguous tensors is a couple of
        # launches and a read the memory bandwidth hardly notices, where a strided view per
        # tensor takes the per-tensor path (a launch and its host overhead each)
        self._strides = [_stride(n, row) if self.on_host else 1 for n, row in zip(sizes, rows)]
        sampled = [len(range(0, n, s)) for n, s in zip(sizes, self._strides)]
        scale = [math.sqrt(n / max(m, 1)) for n, m in zip(sizes, sampled)]
        self._sampled = sampled
        self._new = (lambda shape, value: np.full(shape, value)) if self.on_host \
            else (lambda shape, value: torch.full(shape, value, device=self.device))
        self.ring = self._new((window, FIRST_PARAMETER + len(self.params)), float("nan"))
        self._scale = np.array(scale)  # the host's estimate (a GPU reads whole gradients)
        self._constants: dict[tuple[float, ...], torch.Tensor] = {}
        self._indices: dict[tuple[int, ...], torch.Tensor] = {}
        self._graphs: dict | None = {} if CUDA_GRAPHS and self.device.type == "cuda" and not self.on_host else None
        """The CUDA graphs of :meth:`_replayed`, by kind of step; None where the arithmetic runs
        as plain kernels (the CPU, other detectors, a capture that failed)."""
        self._state = detector.state(2 + len(self.params), self.device, xp)
        self.loss = self._new((1,), 0.0)
        """The losses of this step's backward passes, summed (in the scale ``backward()`` got)."""
        self.losses_seen = 0
        self.loss_limit = math.inf
        """The largest finite value of the narrowest dtype among this step's losses (65504 for a
        float16 one): what a GradScaler's scale can overflow."""
        self.micro = self._new((MICRO_BATCHES, 2), 0.0)
        """Per micro-batch of this step: its loss and the accumulated gradient norm after it."""
        self.backwards = 0
        self._accumulating = False
        self.norms_at_backward = False
        """Take each step's gradient norms when its last backward pass ends rather than when the
        step is observed: for a framework that clips the gradients in between (the Hugging Face
        Trainer), whose clipped norms would hide a gradient spike."""
        self._backward_norms = None
        """The step's norms, taken since its last backward pass (:attr:`norms_at_backward`,
        :meth:`take_norms`); None: taken when the step is observed."""
        self._alarm_host: list[tuple[int, object, object]] = []
        self.last_step: int | None = None
        self._cat = np.concatenate if xp is np else torch.cat
        if self.on_host:
            self._plan = list(zip(self.params, self._strides))
            self._host_scale = self._scale.tolist()

    # -- during the step -----------------------------------------------------------------------

    def _value(self, t: torch.Tensor):
        """A 1-element loss as a 1-element array of this pulse's kind."""
        t = t.detach().reshape(1)
        if self.on_host:
            return (t if t.dtype in (torch.float32, torch.float64) else t.float()).cpu().numpy()
        return t.to(device=self.device, dtype=torch.float32)

    def add_loss(self, loss: torch.Tensor) -> None:
        """One backward pass's loss (a 1-element tensor)."""
        if self.on_host and loss.device.type == "cpu" and loss.dtype in (torch.float32, torch.float64):
            self.loss[0] += float(loss.detach().numpy().reshape(-1)[0])  # a view of CPU memory: no copy
        else:
            self.loss += self._value(loss)
        self.losses_seen += 1
        self.loss_limit = min(self.loss_limit, torch.finfo(loss.dtype).max)

    def add_loss_value(self, value: float, dtype: torch.dtype) -> None:
        """One backward pass's loss, read on the host already (the CPU), and its dtype."""
        self.loss[0] += value
        self.losses_seen += 1
        self.loss_limit = min(self.loss_limit, torch.finfo(dtype).max)

    def _overflow_plausible(self, scale) -> bool:
        """Whether ``scale`` (a float, or an array) times a loss of an ordinary size (up to
        :data:`OVERFLOW_LOSS`) can pass this step's losses' largest finite value: an Inf scaled loss
        then says nothing about the loss (float16 losses at any usual scale, float32 ones from a
        scale near 2**108; a float64 loss never). Below, an Inf is the loss's own (a log of 0)."""
        with np.errstate(over="ignore"):  # a float32 scale near 2**127 times 1e6 is Inf: plausible
            return scale * OVERFLOW_LOSS >= self.loss_limit

    def backward_done(self, loss: torch.Tensor | None) -> None:
        """A backward pass through the model ended: under gradient accumulation (more than one
        pass per step, seen on the previous step or this one) its micro-batch row is kept; with
        :attr:`norms_at_backward` the gradient norms are taken now, for the step's row."""
        slot = min(self.backwards, MICRO_BATCHES - 1)
        self.backwards += 1
        if self.backwards > 1:
            self._accumulating = True
        self._backward_norms = None  # taken before a clipping that this pass's gradients replace
        if not (self._accumulating or self.norms_at_backward):
            return
        norms = self._host_norms() if self.on_host else self._sampled_norms()
        if self.norms_at_backward:
            self._backward_norms = norms
        if not self._accumulating:
            return
        self.micro[slot, 0:1] = self._value(loss) if loss is not None else float("nan")
        if self.on_host:
            self.micro[slot, 1] = math.sqrt(sum(n * n for n in norms))
        else:
            self.micro[slot, 1:2] = ((norms * norms).sum() ** 0.5).reshape(1)

    def discard_backwards(self) -> None:
        """The step's backward passes so far were thrown away (their gradients zeroed before the
        next pass): their losses, norms and micro-batch rows leave the step."""
        self.loss[:] = 0.0
        self.losses_seen = 0
        self.loss_limit = math.inf
        self.backwards = 0
        self._backward_norms = None

    def take_norms(self) -> None:
        """The gradients are about to be changed in place (clipped) after this step's backward
        passes: the step's gradient norms are taken now, as the backward passes left them (a
        clipped norm would hide the spike it was clipped for). Nothing before the step's first
        backward pass, nor twice after the same one."""
        if self.backwards and self._backward_norms is None:
            self._backward_norms = self._host_norms() if self.on_host else self._sampled_norms()

    def observe(self, step: int, loss: torch.Tensor | None = None,
                loss_scale: torch.Tensor | None = None, finite: torch.Tensor | None = None,
                scaler_skipped: torch.Tensor | None = None, noise: float = 1.0):
        """The step's row: gradient norms, the loss (``loss`` if given, else the backward passes'
        sum, divided by ``loss_scale``), the detector. ``finite``: whether every gradient element
        is finite, when checked in full (the guard). ``scaler_skipped``: the GradScaler's found-Inf
        count of the step (a tensor); where positive the scaler skipped the update, as it does
        while it calibrates its scale, so the gradient's alarms are dropped (the loss's stay).
        ``noise``: how many times as spread as the band's this step's values are expected to be
        (a small batch; :meth:`DetectorState.update`).
        Returns the alarm bits, a 1-element array (a tensor on the device on a GPU)."""
        if self.on_host and finite is None:
            alarm = self._observe_on_host(step, loss, loss_scale, noise)
            if scaler_skipped is not None and float(scaler_skipped) > 0:
                alarm[0] = without_gradient_alarms(alarm, 1.0)[0]
                self.ring[step % self.window, ALARM] = alarm[0]
            return alarm
        norms = self._sampled_norms() if self._backward_norms is None else self._backward_norms
        if isinstance(norms, list):  # taken on the host at the backward's end
            norms = np.array(norms)
        if loss is not None:  # given by the user: as it is
            self.loss[:] = self._value(loss)
            self.losses_seen = max(self.losses_seen, 1)
        unknown = None
        if loss is None and loss_scale is not None:  # taken from backward(): scaled by the GradScaler
            scale = self._value(loss_scale)
            unknown = self.xp.isinf(self.loss) & self._overflow_plausible(scale)  # see _unscaled_on_host
            self.loss[:] = self.xp.where(unknown, float("nan"), self.loss / scale)
        if finite is not None:
            finite = finite.reshape(1).cpu().numpy() if self.on_host else finite.reshape(1)
        if scaler_skipped is not None:
            scaler_skipped = scaler_skipped.reshape(1).float()
            scaler_skipped = scaler_skipped.cpu().numpy() if self.on_host else scaler_skipped.to(self.device)
        inputs = (norms, finite, scaler_skipped, unknown, self._micro_columns())
        # not while the user captures a graph of their own step: the kernels go into theirs
        if self._graphs is not None and self._state.steady() and noise == 1.0 \
                and not torch.cuda.is_current_stream_capturing():
            alarm, row = self._replayed(self.losses_seen > 0, inputs)
        else:  # (a noisier step runs its kernels one at a time, on the same persistent state)
            alarm, row = self._row(self.losses_seen > 0, *inputs, noise=noise)
        self.ring[step % self.window] = row
        self.last_step = step
        return alarm

    def _row(self, has_loss: bool, norms, finite, skipped, unknown, columns, noise: float = 1.0):
        """(alarm bits, ring row) of the step: the detector's update on the step's gradient norms,
        its loss (``self.loss``), the guard's finite flag, the scaler's skip flag and whether the
        scale overflowed the loss (1-element arrays, or None) and the micro-batch columns. Moves
        the detector's state on, in place."""
        xp = self.xp
        loss_value = self.loss if has_loss else self.loss * float("nan")
        total = ((norms * norms).sum() ** 0.5).reshape(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = self._cat((loss_value, xp.log(total), xp.log(norms)))
            alarm, z = self._state.update(y, has_loss, noise)
        if finite is not None:
            alarm = xp.where(finite | has_bit(alarm, GRAD_NONFINITE), alarm, alarm + float(GRAD_NONFINITE))
        if skipped is not None:
            alarm = without_gradient_alarms(alarm, skipped > 0)
        if unknown is not None:
            alarm = alarm - has_bit(alarm, LOSS_NONFINITE) * unknown * float(LOSS_NONFINITE)
        return alarm, self._cat((loss_value, total, z[0:2], alarm, columns, self._trend_columns(), norms))

    def _replayed(self, has_loss: bool, inputs: tuple):
        """:meth:`_row` as one CUDA graph launch. Once the detector is past its warm-up its
        arithmetic is the same every step (the same kernels on the same persistent tensors), so
        it is captured once per kind of step (with or without a loss, a guard's flag, a scaler's
        flag) and replayed, its inputs copied into the graph's own: about 170 small kernels a step
        become one launch. The capture waits for the device once; a capture that fails leaves
        the pulse on plain kernels for the run."""
        key = (has_loss, *(None if t is None else (t.dtype, tuple(t.shape)) for t in inputs))
        entry = self._graphs.get(key)
        if entry is None:
            static = tuple(None if t is None else t.clone() for t in inputs)
            graph = torch.cuda.CUDAGraph()
            seen = self._state.seen
            try:  # on the pulse's device, whichever is current (the capture waits for it once)
                with torch.cuda.device(self.device), torch.cuda.graph(
                        graph, stream=torch.cuda.Stream(self.device), capture_error_mode="thread_local"):
                    out = self._row(has_loss, *static)
            except Exception:  # noqa: BLE001 - the same arithmetic, a kernel at a time
                self._graphs = None
                self._state.seen = seen
                return self._row(has_loss, *inputs)
            self._state.seen = seen  # the capture ran no kernel: the state has not moved yet
            entry = self._graphs[key] = (graph, static, out)
        graph, static, out = entry
        for mine, given in zip(static, inputs):
            if mine is not None:
                mine.copy_(given)
        with torch.cuda.device(self.device):
            graph.replay()
        self._state.seen += 1
        return out

    def _observe_on_host(self, step: int, loss: torch.Tensor | None, loss_scale: torch.Tensor | None,
                         noise: float = 1.0):
        """:meth:`observe` on the CPU, where the step's budget is a few tens of microseconds and
        every numpy call counts (right after a backward pass each one costs microseconds: its
        code and data have left the caches): the norms, the detector and the row in Python
        floats, the row written into the ring in one assignment."""
        norms = self._host_norms() if self._backward_norms is None else self._backward_norms
        known = True
        if loss is not None:
            self.loss[0] = self._value(loss)[0]
            self.losses_seen = max(self.losses_seen, 1)
        elif loss_scale is not None:
            known = self._unscaled_on_host(float(loss_scale))
        total = math.sqrt(sum(n * n for n in norms))
        has_loss = self.losses_seen > 0 and known
        loss_value = float(self.loss[0]) if has_loss else math.nan
        alarm, z_loss, z_grad = self._state.host_update([loss_value, _log(total), *map(_log, norms)],
                                                        has_loss, noise)
        if self._accumulating or self.backwards != 1:
            micro = self._micro_columns().tolist()
        else:  # one backward pass: no micro-batches to tell apart
            micro = (0.0, 1.0, 0.0, 0.0)
        trend = self._state.trend
        self.ring[step % self.window] = (loss_value, total, z_loss, z_grad, alarm, *micro,
                                         *(trend.values() if trend is not None else (math.nan,) * 3), *norms)
        self.last_step = step
        return np.array([alarm])

    def _unscaled_on_host(self, scale: float) -> bool:
        """The backward passes' loss divided by the GradScaler's ``scale``; False where it is
        unknown: the scale can have turned a finite loss Inf (:meth:`_overflow_plausible`:
        float32 holds 100 * 2**120 but not 100 * 2**121, and a scaler whose gradients never
        overflow, as under bf16, doubles its scale every 2,000 steps up to there). The scaler
        skips or makes that update on its gradients' own check; the loss is NaN, with no alarm."""
        if math.isinf(self.loss[0]) and self._overflow_plausible(scale):
            self.loss[0] = math.nan
            return False
        self.loss[0] = self.loss[0] / scale
        return True

    def _host_norms(self) -> list[float]:
        """:meth:`_sampled_norms` as Python floats, read through numpy views of the gradients (no
        copy; on the CPU each torch call costs several numpy ones). Gradients numpy cannot view
        (half precision, sparse, sharded, needing a gradient of their own) go the torch way."""
        if self._sharded:
            return self._sampled_norms().tolist()
        squares = []
        dot = np.dot
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is redone, a NaN is data
                for p, stride in self._plan:
                    g = p.grad
                    if g is None or not p.requires_grad:  # frozen: what it holds is from before
                        squares.append(0.0)
                        continue
                    a = g.numpy().reshape(-1)  # raises for what numpy cannot view
                    if a.dtype.kind != "f" or a.itemsize < 4:
                        # half precision's dot would overflow past 65504; a complex one is not |a|²
                        raise TypeError(f"{a.dtype} gradient")
                    if stride > 1:
                        a = a[::stride]
                    squares.append(dot(a, a))
        except (TypeError, RuntimeError, ValueError):
            return self._sampled_norms().tolist()
        norms = [math.sqrt(q) * c for q, c in zip(squares, self._host_scale)]
        for i, n in enumerate(norms):
            if n == math.inf:  # a float32 sum past ~3e38: redone in float64 (a NaN is data)
                a = self.params[i].grad.numpy().reshape(-1)[::self._plan[i][1]].astype(np.float64)
                norms[i] = math.sqrt(dot(a, a)) * self._host_scale[i]
        return norms

    def _micro_columns(self):
        """[skipped (0 until the guard says), micro-batches, the one with the highest loss, the
        one after which the accumulated gradient norm grew most]."""
        n = min(self.backwards, MICRO_BATCHES)
        if self.on_host:
            columns = self._new((4,), 0.0)
            columns[1] = float(n)
        else:  # a Python number written into device memory would make the host wait
            columns = self._constant((0.0, float(n), 0.0, 0.0))
        if self._accumulating and n >= 2:
            columns = columns if self.on_host else columns.clone()
            rows = self.micro[:n]
            squares = rows[:, 1] * rows[:, 1]
            growth = squares - self._cat((squares[:1] * 0.0, squares[:-1]))
            columns[2:3] = rows[:, 0].argmax().reshape(1) * 1.0
            columns[3:4] = growth.argmax().reshape(1) * 1.0
        return columns

    def _constant(self, values: tuple[float, ...]) -> torch.Tensor:
        """``values`` on the device, copied there once (without a wait) and kept; not to be
        written into."""
        if values not in self._constants:
            self._constants[values] = to_device(torch.tensor(values, dtype=self.ring.dtype), self.device)
        return self._constants[values]

    def _positions(self, positions: list[int]) -> torch.Tensor:
        """``positions`` as an index on the device (a list would be copied there, with a wait,
        every step); the last few kept."""
        key = tuple(positions)
        if key not in self._indices:
            if len(self._indices) >= 16:
                self._indices.clear()
            self._indices[key] = to_device(torch.tensor(positions, dtype=torch.long), self.device)
        return self._indices[key]

    def _trend_columns(self):
        """[smoothed loss, its minimum, the fall made to it] of the detector's loss trend."""
        trend = self._state.trend
        if trend is None:
            return self._new((3,), float("nan"))
        return np.array(trend.values()) if trend.xp is None else self._cat(trend.values())

    def mark_skipped(self, step: int, skipped) -> None:
        """The guard's decision for ``step`` (a number, or a 0-dim tensor on the device)."""
        self.ring[step % self.window, SKIPPED] = skipped

    def next_step(self) -> None:
        self._backward_norms = None
        self.loss[:] = 0.0
        self.losses_seen = 0
        self.loss_limit = math.inf
        if self.backwards <= 1:
            self._accumulating = False
        self.backwards = 0

    def _sampled_norms(self):
        """Each parameter's gradient norm (0 without a gradient), one array: estimated from a
        strided sample on the host, exact on a GPU."""
        grads = [p.grad if p.requires_grad else None for p in self.params]  # frozen: from before
        if self._sharded:
            grads = [None if g is None else local(g) for g in grads]
        positions = [i for i, g in enumerate(grads) if g is not None]
        # a sparse gradient (nn.Embedding(sparse=True)) is read whole: its stored values, the rows
        # the step touched, are few
        whole = [i for i in positions if grads[i].is_sparse]
        # a strided view reads every stride-th element: one op per large tensor, no copy
        samples = [
            stored_values(grads[i]).reshape(-1) if grads[i].is_sparse else
            grads[i] if self._strides[i] == 1 else
            grads[i].as_strided((self._sampled[i],), (self._strides[i],)) if grads[i].is_contiguous() else
            grads[i].reshape(-1)[::self._strides[i]]
            for i in positions
        ]
        if not samples:
            return self._new((len(self.params),), 0.0)
        # one foreach norm per dtype (a list of several takes the per-tensor path), half precision
        # reduced in float32 (a float16 norm overflows past 65504)
        norms: list = [None] * len(samples)
        for at in group_by_device_and_dtype(samples).values():
            for i, norm in zip(at, foreach_norms([samples[i] for i in at])):
                norms[i] = norm
        found = torch.stack(norms if len({n.dtype for n in norms}) == 1 else [n.float() for n in norms])
        if found.dtype not in (torch.float32, torch.float64):
            found = found.float()  # half precision: numpy has no bfloat16
        found = found.numpy().astype(np.float64) if self.on_host else found
        if len(positions) < len(self.params):
            full = self._new((len(self.params),), 0.0)
            full[positions if self.on_host else self._positions(positions)] = found
            found = full
        if not self.on_host:
            return found  # whole gradients: exact
        if whole:
            scale = self._scale.copy()
            scale[whole] = 1.0
            return found * scale
        return found * self._scale

    # -- on the host ---------------------------------------------------------------------------

    def send_alarm(self, step: int, alarm) -> None:
        """Start the alarm bits' trip to the host (non-blocking on CUDA; in place on the CPU)."""
        if self.on_host:
            self._alarm_host.append((step, int(alarm[0]), None))
            return
        if alarm.device.type != "cuda":  # torch arithmetic on the CPU (tests of the GPU's path)
            self._alarm_host.append((step, alarm.clone(), None))
            return
        host = torch.empty(1, dtype=alarm.dtype, pin_memory=True)
        host.copy_(alarm, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._alarm_host.append((step, host, event))

    def landed_alarms(self, wait: bool = False) -> list[tuple[int, int]]:
        """(step, alarm bits) of the steps whose bits reached the host, oldest first; only those
        with an alarm."""
        out = []
        while self._alarm_host:
            step, host, event = self._alarm_host[0]
            if event is not None and not wait and not event.query():
                break
            if event is not None:
                event.synchronize()
            if isinstance(host, torch.Tensor):
                host = int(host.numpy()[0])
            self._alarm_host.pop(0)
            if host:
                out.append((step, host))
        return out

    def read(self) -> np.ndarray:
        """The whole ring on the host (float64); a wait for the device on a GPU."""
        if self.on_host:
            return self.ring.copy()
        return self.ring.detach().to("cpu", torch.float64).numpy()

    def band(self) -> tuple[np.ndarray, np.ndarray]:
        """The detector's running mean and standard deviation of the log gradient norm of each
        parameter (zscore; zeros for the loss rules), on the host."""
        mean, var = self._state.mean[2:], self._state.var[2:]
        if not self.on_host:
            mean, var = (t.detach().to("cpu", torch.float64).numpy() for t in (mean, var))
        return np.array(mean, dtype=float), np.sqrt(np.array(var, dtype=float))


def _log(x: float) -> float:
    """``log(x)`` of a norm: -inf at 0, NaN for NaN, without numpy's warnings machinery."""
    return math.log(x) if x > 0 else -math.inf if x == 0 else math.nan


def _stride(numel: int, row: int) -> int:
    """Every how many elements a gradient of ``numel`` elements is sampled: about ``numel / SAMPLE``,
    made coprime with its last dimension ``row`` so that the sample walks through every column
    instead of a few (a stride of 64 on 256 columns would read 4 of them)."""
    stride = max(1, numel // SAMPLE)
    while stride > 1 and math.gcd(stride, row) != 1:
        stride += 1
    return stride


_ACTIVE: "weakref.WeakSet" = weakref.WeakSet()
_ORIGINAL_BACKWARD = None
_ORIGINAL_AUTOGRAD_BACKWARD = None
_CALLING = threading.local()
"""``calling``: this thread is inside a followed backward call (``Tensor.backward`` calls
``torch.autograd.backward``: one pass)."""


def _nested() -> bool:
    """Whether a backward call now is part of one already followed: made by ``Tensor.backward``
    on this thread, or inside a running backward pass (a reentrant checkpoint's, on autograd's
    own thread on a GPU: it has a graph task there)."""
    return getattr(_CALLING, "calling", False) or torch._C._current_graph_task_id() != -1


def _followed(original, loss_of):
    """``original`` (a backward function) routed to the owners; ``loss_of(args)``: the tensor the
    pass starts from (None where several do)."""

    def backward(*args, **kwargs):
        owners = [o for o in list(_ACTIVE) if o.wants_backward()] if not _nested() else ()
        if not owners:
            return original(*args, **kwargs)
        for o in owners:
            o.backward_starting()
        _CALLING.calling = True
        try:
            return original(*args, **kwargs)
        finally:
            _CALLING.calling = False
            tensor = loss_of(args, kwargs)
            for o in owners:
                o.backward_ended(tensor)

    backward.__doc__ = original.__doc__
    backward.__wrapped__ = original
    return backward


def _tensor_self(args, kwargs):
    return args[0]


def _autograd_tensors(args, kwargs):
    tensors = args[0] if args else kwargs.get("tensors")
    if isinstance(tensors, (tuple, list)) and len(tensors) == 1:
        tensors = tensors[0]
    return tensors if isinstance(tensors, torch.Tensor) else None


def follow_backward(owner) -> None:
    """Route ``Tensor.backward`` and ``torch.autograd.backward`` calls to
    ``owner.backward_starting()`` and ``owner.backward_ended(tensor)``, and in-place gradient
    clipping to ``owner.gradients_clipping()`` before it clips, while any owner follows them (the
    patches are installed once and removed with the last owner)."""
    global _ORIGINAL_BACKWARD, _ORIGINAL_AUTOGRAD_BACKWARD
    _follow_clipping()
    if _ORIGINAL_BACKWARD is None:
        _ORIGINAL_BACKWARD = torch.Tensor.backward
        torch.Tensor.backward = _followed(_ORIGINAL_BACKWARD, _tensor_self)
    if _ORIGINAL_AUTOGRAD_BACKWARD is None:
        _ORIGINAL_AUTOGRAD_BACKWARD = torch.autograd.backward
        torch.autograd.backward = _followed(_ORIGINAL_AUTOGRAD_BACKWARD, _autograd_tensors)
    _ACTIVE.add(owner)


def unfollow_backward(owner) -> None:
    """Stop routing to ``owner``; the last one out puts the backward functions back, unless
    something wrapped them after gradscope did (then the wrapper stays, passing every call
    straight through)."""
    global _ORIGINAL_BACKWARD, _ORIGINAL_AUTOGRAD_BACKWARD
    _ACTIVE.discard(owner)
    if len(_ACTIVE):
        return
    _unfollow_clipping()
    if _ORIGINAL_BACKWARD is not None and getattr(torch.Tensor.backward, "__wrapped__", None) is _ORIGINAL_BACKWARD:
        torch.Tensor.backward = _ORIGINAL_BACKWARD
        _ORIGINAL_BACKWARD = None
    if _ORIGINAL_AUTOGRAD_BACKWARD is not None and \
            getattr(torch.autograd.backward, "__wrapped__", None) is _ORIGINAL_AUTOGRAD_BACKWARD:
        torch.autograd.backward = _ORIGINAL_AUTOGRAD_BACKWARD
        _ORIGINAL_AUTOGRAD_BACKWARD = None


_CLIPPING = (
    ("torch.nn.utils.clip_grad", "_clip_grads_with_norm_"),
    ("torch.nn.utils", "clip_grads_with_norm_"),
    ("torch.nn.utils.clip_grad", "clip_grad_value_"),
    ("torch.nn.utils", "clip_grad_value_"),
)
"""The functions that clip gradients in place, by module and name. ``clip_grad_norm_`` calls the
first once it has the total norm, by its module-level name, so a ``clip_grad_norm_`` imported
before the monitor started is followed too."""
_CLIPPING_BEFORE_2_6 = (("torch.nn.utils.clip_grad", "clip_grad_norm_"), ("torch.nn.utils", "clip_grad_norm_"))
"""Where torch has no ``_clip_grads_with_norm_``: the public names of ``clip_grad_norm_``."""
_CLIP_PATCHES: dict[tuple[str, str], tuple] = {}
"""(module, name) -> (the original function, gradscope's wrapper of it)."""


def _follow_clipping() -> None:
    if _CLIP_PATCHES:
        return
    places = _CLIPPING
    if not hasattr(importlib.import_module("torch.nn.utils.clip_grad"), "_clip_grads_with_norm_"):
        places = _CLIPPING_BEFORE_2_6 + _CLIPPING[2:]
    for module_name, name in places:
        module = importlib.import_module(module_name)
        original = getattr(module, name, None)
        if callable(original):
            wrapper = _clipping(original)
            _CLIP_PATCHES[(module_name, name)] = (original, wrapper)
            setattr(module, name, wrapper)


def _unfollow_clipping() -> None:
    """Put the clipping functions back, each unless something replaced gradscope's wrapper since
    (then the wrapper stays, passing every call straight through)."""
    for (module_name, name), (original, wrapper) in list(_CLIP_PATCHES.items()):
        module = importlib.import_module(module_name)
        if getattr(module, name, None) is wrapper:
            setattr(module, name, original)
    _CLIP_PATCHES.clear()


def _clipping(original):
    """``original`` (a function that clips gradients in place), telling the owners first."""

    @functools.wraps(original)
    def clip(*args, **kwargs):
        for owner in list(_ACTIVE):
            try:
                owner.gradients_clipping()
            except Exception:  # noqa: BLE001 - the owner reports its own failures; clipping goes on
                pass
        return original(*args, **kwargs)

    return clip
