"""The monitor's lifecycle and step clock: :class:`Recorder` ties the capture parts to a training
loop, one optimizer step at a time. ``gradscope.Monitor`` (gradscope/api.py) is a Recorder that
also reads its records into findings and reports.

Step ``s`` (numbered from 0) is logged when ``s % every == 0``. Everything between two optimizer
steps belongs to the coming step: forwards and backwards (several of them under gradient
accumulation) queue their partial results through the module hooks (hooks.py), the optimizer
step adds the parameter statistics (params.py) and ends the step, and the step's buffer
(buffer.py) leaves for the host in one copy, rescaled by what the statistics declare
(stats/rescale.py) and summed over ranks (distributed.py). Landed steps go to the history
(records.py) and to the sinks (sinks/).

A closure optimizer (LBFGS) evaluates its closure inside ``step()``, maybe many times: the step
records the first evaluation. An optimizer built after the monitor started is followed from
``attach_optimizer``; ``paused()`` leaves out passes that belong to another model's step (a GAN's).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch._C._functorch import peek_interpreter_stack
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)
from torch.optim.optimizer import register_optimizer_step_post_hook

from gradscope.amp import ScalerPatch, check_scaler, found_inf, record_skip, unscaled
from gradscope.buffer import Layout, PendingStep, StepBuffer
from gradscope.config import MonitorConfig
from gradscope.distributed import RankAgreement, local, rank_and_world, unwrap
from gradscope.errors import UsageError, UsageTypeError
from gradscope.events import (LR_LOOKBACK, SHARED_ALARMS, SHARED_COLUMNS, SpikeEvent, extended, extends, make_event,
                              merge_rank_alarms, shared_rows)
from gradscope.guard import StateSnapshot, all_finite, evaluates_closure_once
from gradscope.failures import FailurePolicy
from gradscope.hooks import HookManager, WeakHook, refuse_scripted
from gradscope.layers import join_name
from gradscope.params import ParameterStatistics
from gradscope.history import History
from gradscope.detectors import SKIPPABLE, alarm_names, skippable
from gradscope.pulse import PULSE_COLUMNS, Pulse, follow_backward, unfollow_backward
from gradscope.sinks import Sink, StepRecord, abort_sinks
from gradscope.stats import STATISTICS
from gradscope.stats.histograms import HistogramCollector
from gradscope.stats.rescale import RescalePlan
from gradscope.recipe import Recipe, unwrap_optimizer

_MONITORED: "weakref.WeakKeyDictionary[nn.Module, Recorder]" = weakref.WeakKeyDictionary()
"""Every module under an active monitor, so that two monitors never hook the same module."""

_MAX_IN_FLIGHT = 2
"""Host copies allowed in flight before the oldest is waited for (one wait per logged step)."""

ALL_LAYERS, ALL_PARAMETERS = "(all layers)", "(all parameters)"
"""Layer names in warnings about the whole model."""


SMALL_BATCH = 0.5
"""A step whose batch (the elements of the model's first input, summed over the step's forward
passes before the pulse is taken: samples, or tokens) is smaller than this share of the run's usual
size (a moving average over about 20 steps) is noisier than the band the spike detector learnt:
the last, short batch of an epoch (``DataLoader(drop_last=False)``). A mean over n terms spreads as
1 / sqrt(n), so the detector's threshold for it is sqrt(usual / size) times higher (8 times for a
batch of 1 where 64 is usual) and nothing of it enters the band; a non-finite value raises its
alarm as always. At the plain threshold such batches raised loss spikes of z 39 on digits that
the guard skipped; a 1000-fold spike in one is still caught."""
USUAL_START = 3
"""Steps whose median batch size starts the usual one (before it, no step is read as small): a
forward of a large batch before training (a dry run, a batch-size finder) is counted into the
first step's batch, and from it alone the next 27 steps read as small and went uncounted in the
detector's warm-up."""
USUAL_ALPHA = 0.1
"""The weight of a step in the usual batch size: a batch size schedule that quarters the batch
makes about 7 steps noisier before the usual size follows it."""

RING_ROWS = 4096
"""The most rows the pulse's ring holds for ``every`` (a larger ``every``, "log almost never", would
otherwise allocate that many rows up front: 10**8 took all the memory)."""


class Recorder:
    """Records per-layer gradient-flow statistics of ``model`` during training.

    Use it through :func:`gradscope.monitor`; ``start()``/``stop()`` do what ``with`` does.
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 1,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        functional: bool = True,
        log_dir: str | os.PathLike | None = None,
        window: int = 1000,
        flush_every: int = 100,
        strict: bool = False,
        weights_every: int = 10,
        tensorboard: object = None,
        histograms_every: int | None = None,
        findings_every: int = 10,
        scaler: object = None,
        detect: object = "zscore",
        guard: object = None,
        record_after: int = 10,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UsageTypeError(
                f"Expected `model` to be a torch.nn.Module but got {type(model).__name__}; "
                "pass the model whose training you want to monitor."
            )
        refuse_scripted(model, "gradscope.monitor")
        self.config = MonitorConfig(
            every=every, functional=functional, log_dir=log_dir, window=window,
            flush_every=flush_every, strict=strict, weights_every=weights_every, tensorboard=tensorboard,
            histograms_every=histograms_every, findings_every=findings_every,
            detect=detect, guard=guard, record_after=record_after,
        )
        self.failures = FailurePolicy(self.config.strict)
        self._guard, self._report, self._warn_once = (
            self.failures.guard, self.failures.report, self.failures.warn_once)
        self.model = model
        self.optimizer = _check_optimizer(optimizer, model)
        self.scaler = check_scaler(scaler, self.optimizer)
        self._scaler_patch = ScalerPatch(self.scaler, self._scaler_step_ended) if self.scaler is not None else None
        # a torch.compile'd model: statistics use the original module's names; module hooks
        # would run inside the compiled forward, so only parameter statistics are recorded
        self.compiled = _is_compiled(model)
        watched = unwrap(getattr(model, "_orig_mod", model) if self.compiled else model)
        self.rank, self.world_size = rank_and_world()
        if self.rank != 0:  # rank 0 writes the records, dashboards and findings
            self.config.log_dir = None
            self.config.tensorboard = None
        self.layout = Layout()
        first = next(watched.parameters(), None)
        self.buffer = StepBuffer(self.layout, first.device if first is not None else torch.device("cpu"))
        self.hooks = HookManager(watched, self.layout, self.buffer, self._guard, functional)
        self._watched = watched
        self._scripted = _scripted_submodules(watched)
        self.params = ParameterStatistics(watched, self.layout, self.buffer, self._owned())
        self._ranks = RankAgreement(self.layout, self.world_size)
        self._rescale = RescalePlan(self.layout, self.params.is_sharded)
        self.history = _open_history(self._names, self.config)
        self.history.on_write_error = self._history_write_failed
        self._step = 0
        self._in_flight: deque[PendingStep] = deque()
        self._optimizer_handles: list = []
        self._stepped_unfollowed: weakref.WeakSet = weakref.WeakSet()
        """Optimizers that stepped since the step in progress began, while the monitor follows
        none (read by :meth:`attach_optimizer`)."""
        self._sinks: list[Sink] = []
        self._histograms = HistogramCollector()
        self._names_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._registration_handles: list = []
        self._structure_changed = False
        self._active = False
        self._with_depth = 0
        """``with`` blocks of this monitor open now (nested ones leave it running)."""
        self._init_pulse()

    # -- the step clock ------------------------------------------------------------------------

    @property
    def current_step(self) -> int:
        """The step now in progress (the number of optimizer steps taken so far)."""
        return self._step

    def is_logged(self, step: int) -> bool:
        """Whether step ``step`` records every statistic: one in ``every``, and every step of the
        flight recorder's window after a detection."""
        return step % self.config.every == 0 or step <= self._record_until

    def weights_logged(self, step: int) -> bool:
        """Whether ``weight_norm`` and ``update_ratio`` are recorded at (logged) step ``step``."""
        return self.is_logged(step) and (step // self.config.every) % self.config.weights_every == 0

    def step(self, loss_scale: "torch.Tensor | float | None" = None, *,
             loss: "torch.Tensor | float | None" = None) -> None:
        """End the current step when the monitor follows no optimizer: call it once per optimizer
        step, right before ``optimizer.step()``, while the gradients are there. (Called after the
        step and before ``zero_grad()`` it works too, with ``weight_norm`` read after the update.)

        ``loss_scale``: the factor the loss was multiplied by before ``backward()`` (a GradScaler's
        scale), divided out of the backpropagated signal; the gradients must already be unscaled.
        ``loss``: the step's loss for the spike detector, when it should not be taken from the
        tensor ``backward()`` was called on (see :meth:`observe_loss`)."""
        if self.optimizer is not None:
            raise UsageError(
                "mon.step() was called, but the monitor follows an optimizer (optimizer= or "
                "mon.attach_optimizer) and already ends each step at optimizer.step(); remove the "
                "mon.step() call."
            )
        if not self._active:
            raise UsageError("mon.step() was called outside the `with gradscope.monitor(...)` block.")
        if loss_scale is not None and not isinstance(loss_scale, torch.Tensor):
            loss_scale = torch.tensor(float(loss_scale))
        if loss is not None:
            self.observe_loss(loss)
        if self.config.guard is not None and self.detects and not self._unfollowed and not self._guard_declined:
            self._warn_once(
                ALL_PARAMETERS, "guard without optimizer",
                "guard='skip' holds back the optimizer's update, but this monitor follows no "
                "optimizer (its steps end at mon.step()), so no update is skipped; spikes are still "
                "detected and reported. Pass optimizer=opt to gradscope.monitor (or call "
                "mon.attach_optimizer(opt)) and drop the mon.step() call.")
        self._observe_pulse(loss_scale)
        self._end_step_here(self._parameter_statistics, loss_scale)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Follow ``optimizer`` from now on, as if it had been passed as ``optimizer=``: each step
        ends at ``optimizer.step()`` and ``update_ratio`` is recorded. For loops that build their
        optimizer after the monitor started (a trainer that makes its own, as minGPT's does).

        Attaching the optimizer already followed does nothing, so the call can sit in a per-batch
        callback. Called after this step's ``optimizer.step()`` already ran (a callback at the
        end of the batch), it ends the step in progress at once, as ``mon.step()`` would have:
        its ``update_ratio`` is missing (the update was not seen), later steps have it.

        >>> import torch, torch.nn as nn, gradscope
        >>> model = nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built where the monitor cannot see
        >>> with gradscope.monitor(model, weights_every=1) as mon:
        ...     for _ in range(3):
        ...         model(torch.randn(8, 4)).pow(2).mean().backward()
        ...         opt.step()
        ...         mon.attach_optimizer(opt)  # the first call ends step 0; later calls do nothing
        ...         opt.zero_grad()
        >>> ratios = mon.to_dataframe().query("metric == 'update_ratio'")
        >>> sorted(ratios.step.unique().tolist())
        [1, 2]
        """
        if optimizer is self.optimizer and optimizer is not None:
            return
        if self.optimizer is not None:
            raise UsageError(
                f"mon.attach_optimizer() was given a {type(optimizer).__name__}, but the monitor "
                f"already follows a {type(self.optimizer).__name__}, and one monitor follows one "
                "optimizer; for models trained in turn by their own optimizers (a GAN's generator "
                "and discriminator), use one monitor per model (docs/monitor.md)."
            )
        self.optimizer = _check_optimizer(optimizer, self.model, attaching=True)
        self.params.sync(self._watched, self._owned())
        if self._active and self.config.guard is not None and self.detects:
            self._install_guard()
        if self._active:
            stepped = optimizer in self._stepped_unfollowed
            self._remove_optimizer_hooks()
            self._install_optimizer_hooks()
            if stepped:
                # no warning when the gradients are gone already: nothing was done wrong
                self._end_step_here(lambda keep: self.params.record(self.weights_logged(self._step), keep))

    @contextmanager
    def paused(self) -> Iterator["Recorder"]:
        """Forwards run inside the block are not recorded, nor the backward passes through them.

        For passes through this model that are not part of its training step: a GAN's
        generator step runs the discriminator, whose monitor would otherwise count that pass
        (and the generator's loss backpropagated through it) in the discriminator's next step.
        Parameter statistics are taken at the optimizer's step, as always.

        >>> import torch, torch.nn as nn, gradscope
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        >>> with gradscope.monitor(model) as mon:
        ...     with mon.paused():
        ...         model(torch.randn(8, 4)).sum().backward()
        ...     mon.step()
        >>> sorted(mon.to_dataframe().metric.unique())  # no module statistics
        ['grad_nonfinite', 'grad_norm', 'weight_norm']
        """
        self.hooks.paused += 1
        try:
            yield self
        finally:
            self.hooks.paused -= 1

    def _end_step_here(self, parameter_statistics: Callable[..., None], loss_scale=None) -> None:
        """End the step in progress now, outside an optimizer step; on a logged step
        ``parameter_statistics`` reads the gradients first (called with ``keep_weights=False``:
        no update follows)."""
        try:
            if self.is_logged(self._step):
                self._guard(ALL_PARAMETERS, "grad_norm", parameter_statistics, False)
        finally:
            self._end_step(loss_scale)

    def _before_optimizer_step(self, optimizer, args, kwargs):
        if not self._active:
            return None
        closure = _closure_argument(args, kwargs)
        if closure is None:
            self._observe_pulse(self._scale_now())
        if not self.is_logged(self._step):
            if closure is not None and self.detects:
                return _with_closure(args, kwargs, self._recording_first_evaluation(closure))
            return None
        if closure is None:
            self._guard(ALL_PARAMETERS, "grad_norm", self._parameter_statistics, True)
            return None
        # a closure optimizer (LBFGS) runs the forward and backward passes inside step()
        return _with_closure(args, kwargs, self._recording_first_evaluation(closure))

    def _recording_first_evaluation(self, closure: Callable) -> Callable:
        """``closure`` for a closure optimizer's logged step: the step's statistics are taken when
        its first evaluation returns, the gradient at the weights the step starts from (what
        any other optimizer's step records); the evaluations that follow (LBFGS's iterations and
        line search, at other weights) are not recorded."""
        step, first = self._step, True

        def recorded_closure(*args, **kwargs):
            nonlocal first
            loss = closure(*args, **kwargs)
            if first:
                first = False
                if self._active and self._step == step:
                    self._observe_pulse()
                    if self.is_logged(step):
                        self._guard(ALL_PARAMETERS, "grad_norm", self._parameter_statistics, True)
                        self._guard(ALL_LAYERS, "hooks", self._stop_module_statistics)
            return loss

        return recorded_closure

    def _stop_module_statistics(self) -> None:
        """No module statistics for the rest of this step (the hooks are re-armed when it ends)."""
        self.hooks.detach()
        self.hooks.end_step()

    def _unfollowed_optimizer_stepped(self, optimizer, args, kwargs) -> None:
        self._stepped_unfollowed.add(optimizer)

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if not self._active:
            return
        try:
            if self.params.holds_weights:
                self._guard(ALL_PARAMETERS, "update_ratio", self.params.record_updates)
        finally:
            if self.scaler is None:
                self._end_step()

    def _scaler_step_ended(self, optimizer, loss_scale) -> None:
        """``scaler.step`` returned, the optimizer step taken or skipped: the step ends."""
        if self._active and optimizer is self.optimizer:
            self._observe_pulse(loss_scale if isinstance(loss_scale, torch.Tensor) else None,
                                scaler_skipped=found_inf(self.scaler, optimizer))
            if self.is_logged(self._step):
                self._guard("", "amp_skipped", record_skip, self.scaler, optimizer, self.layout, self.buffer)
            self._end_step(loss_scale if isinstance(loss_scale, torch.Tensor) else None)

    def _parameter_statistics(self, keep_weights: bool) -> None:
        if self.params.record(self.weights_logged(self._step), keep_weights):
            return
        if not any(p.requires_grad for p in self._watched.parameters()):
            self._warn_once(
                ALL_PARAMETERS, "frozen",
                f"none of the model's parameters requires grad at step {self._step} (all frozen), so "
                "grad_norm, weight_norm and grad_nonfinite were not recorded; they are from the first "
                "logged step after some are unfrozen, and spike detection follows them from then on.")
            return
        where, way_out = (
            ("at optimizer.step() (with a closure: when its first evaluation returned)",
             "call backward() before optimizer.step(), or inside the closure")
            if self.optimizer is not None else
            ("at the end of the step", "call mon.step() before optimizer.step() and optimizer.zero_grad()")
        )
        self._warn_once(
            ALL_PARAMETERS, "no gradients",
            f"no parameter had a gradient {where}, so grad_norm, weight_norm and grad_nonfinite "
            f"were not recorded; {way_out}.",
        )

    def _end_step(self, loss_scale: torch.Tensor | None = None) -> None:
        self.params.drop()
        if self._stepped_unfollowed:
            self._stepped_unfollowed.clear()
        step = self._step
        self._guard(ALL_PARAMETERS, "pulse", self._pulse_step_ended, step)
        if self.is_logged(step):
            try:
                rescales = self._rescale.rescales(loss_scale, self.world_size, self.buffer.primary_device)
                reduce = (lambda buffer: (self._ranks.all_reduce(step, buffer),
                                          self._exchange_alarms(buffer.device))) if self.world_size > 1 else None
                self._in_flight.append(self.buffer.finish(step, rescales, reduce=reduce))
                self._drain(wait=False)
            except Exception as e:  # noqa: BLE001 - the user's loop must go on
                if self.world_size > 1 and self._ranks.agreed_step != step:
                    # failed before the ranks' check: join it, saying so, so nobody waits
                    self._guard(ALL_LAYERS, "step buffer", self._ranks.agree, step, False,
                                self.buffer.primary_device)
                self._report(ALL_LAYERS, "step buffer", e)
                self.buffer.discard()
            if self._histograms.rows:
                self._guard(ALL_LAYERS, "histograms", self._histograms.send, step, self._sinks)
        self.hooks.end_step()
        self._step += 1
        if self.is_logged(self._step):
            if self._structure_changed:  # followed only where it matters: before a logged step
                self._follow_new_structure()
            self._arm_step()
        else:
            self.hooks.detach()

    def _arm_step(self) -> None:
        """Install the hooks for the coming logged step (and the histogram observers if due)."""
        observe = self._histograms.collect if self._histogram_step(self._step) else None
        self.params.observer = None if observe is None else (lambda name, t: observe("grad", name, t))
        if self._scripted:
            names = ", ".join(repr(n) for n in self._scripted[:3]) + (" …" if len(self._scripted) > 3 else "")
            self._warn_once(
                ALL_LAYERS, "TorchScript",
                f"{len(self._scripted)} submodule(s) of the model are TorchScript ({names}), which runs no "
                "Python hooks: their module statistics (out_grad_norm, act_rms, dead_fraction, saturation) "
                "and those of the modules inside them are not recorded; their parameters' statistics are. "
                "Monitor the eager modules they were scripted from to get them.")
        if self.compiled:
            self._warn_once(
                ALL_LAYERS, "torch.compile",
                "the model is compiled with torch.compile, so only parameter statistics "
                "(grad_norm, grad_nonfinite, weight_norm, update_ratio) are recorded; the module "
                "statistics (out_grad_norm, act_rms, dead_fraction, saturation) need hooks inside "
                "the forward: monitor the uncompiled model (model._orig_mod of torch.compile(model), or "
                "the model before model.compile()) to get them.",
            )
            return
        self.hooks.activation_observer = None if observe is None else (lambda name, t: observe("activation", name, t))
        self.hooks.attach()

    def _on_registration(self, module: nn.Module, name: str, value: object) -> None:
        """A module or parameter was set on a module: if it is one of ours and new there, the
        model changed. (Frameworks that set the same parameter again around every forward, as
        FSDP's ``use_orig_params`` does, change nothing.)"""
        if value is None or self._structure_changed or not self.hooks.watches(module):
            return
        full_name = join_name(self.hooks.name_of(module), name)
        if self.hooks.name_of(value) != full_name and not self.params.holds(full_name, value):
            self._structure_changed = True

    def _follow_new_structure(self) -> None:
        """Modules and parameters added or replaced mid-run are recorded from the next logged
        step on (documented in docs/monitor.md)."""
        self._structure_changed = False
        self.hooks.detach()
        self.hooks.sync_modules()
        self.params.sync(self._watched, self._owned())
        self._sampled_params = None  # the gradients a backward must change are read afresh

    def _owned(self) -> set[int]:
        """Ids of the parameters the followed optimizer steps."""
        if self.optimizer is None:
            return set()
        return {id(p) for group in self.optimizer.param_groups for p in group["params"]}

    def _histogram_step(self, step: int) -> bool:
        every = self.config.histograms_every
        return every is not None and any(hasattr(s, "log_histograms") for s in self._sinks) \
            and (step // self.config.every) % every == 0

    # -- the pulse: every step's loss and gradient norm, spikes, the guard ---------------------

    def _init_pulse(self) -> None:
        self._pulse: Pulse | None = None
        self._pulse_failed = False
        self._pulse_keep: set[int] = set()
        """Parameters an earlier pulse read (by id), read by the next one whether or not they
        require grad then (:meth:`_follow_trainable`)."""
        self._observed_step: int | None = None
        self._step_alarm: torch.Tensor | None = None
        self._given_loss: torch.Tensor | None = None
        self._touched = False
        self._forward_seen = False
        self._step_samples = [0, 0, 0, 0]
        """The sizes of the step's training forward passes' batches (:func:`_batch_sizes`), summed."""
        self._usual_samples = [0.0, 0.0, 0.0, 0.0]
        """Moving averages of the steps' batch sizes (:data:`SMALL_BATCH`)."""
        self._first_sizes: list[list[int]] = []
        """The batch sizes of the run's first ``USUAL_START`` steps, whose median starts the usual size."""
        self._observed_samples: list[int] | None = None
        """The step's batch size when its pulse was taken (a closure's later evaluations, LBFGS's,
        are not the step's batch)."""
        self._output_hooked = False
        """Whether the last training forward's output held a tensor the output hooks marked."""
        self._trained_seen = False
        self._gradient_marks: list | None = None
        self._sampled_params: list | None = None
        self._record_until = -1
        self._pulse_read_upto = -1
        self._last_ring: tuple[np.ndarray, int] | None = None
        self._lrs: deque = deque(maxlen=LR_LOOKBACK)
        """The learning rate of the last steps (plain numbers only: a tensor's would need a read)."""
        self._lr_source: torch.optim.Optimizer | None = None
        """An optimizer whose learning rate the events read, where the monitor follows no
        optimizer's steps (a framework's callback calls ``mon.step()``): :meth:`read_lr_from`."""
        self._first_step = 0
        """The number of the first step (:meth:`number_from`)."""
        self._pulse_rows: list[tuple[list[str], np.ndarray]] = []
        self._pulse_steps: list[np.ndarray] = []
        self.events: list[SpikeEvent] = []
        """The detections so far (gradscope/events.py), oldest first."""
        self._unshared: list[SpikeEvent] = []
        """Events detected on this rank since the last logged step's exchange (DDP/FSDP2)."""
        self.skipped_steps: list[int] = []
        """Steps whose optimizer update the guard skipped."""
        self._pulse_handles: list = []
        self._guard_restore: Callable[[], None] | None = None
        self._unguarded_steps: deque = deque(maxlen=LR_LOOKBACK)
        """Recent steps the guard let through unguarded (a closure it cannot evaluate first)."""
        self._unfollowed: list[torch.optim.Optimizer] = []
        """Optimizers guarded whose steps the monitor does not follow (:meth:`_guard_unfollowed`)."""
        self._guard_declined = False
        """The guard said it cannot act in this run (:meth:`_decline_guard`)."""
        self._decided: tuple | None = None
        """(optimizer, skip) of the step :meth:`_decide_guard` decided on, until its update."""
        self._snapshot: StateSnapshot | None = None
        self._norms_at_backward = False
        """The pulse's gradient norms taken at the end of each step's last backward pass
        (:attr:`Pulse.norms_at_backward`): set by the Hugging Face callback, whose Trainer clips
        the gradients before the step ends."""
        self._host_arithmetic: bool | None = None
        """The pulse's arithmetic in numpy (True), torch (False) or by device (None: numpy on
        the CPU); tests set False to run the GPU's path on the CPU."""

    @property
    def detects(self) -> bool:
        return self.config.detect is not None and not self._pulse_failed

    def observe_loss(self, loss: "torch.Tensor | float") -> None:
        """Give the detector this step's loss; called once per micro-batch under gradient
        accumulation, the values add up (as the losses of the step's backward passes do).
        Without it the loss is taken from the tensor ``backward()`` is called on when that
        backward reaches the model, summed over the step's backward passes; with it, those are
        ignored for this step. Never a wait for the device: the value stays where it is."""
        if isinstance(loss, (np.ndarray, np.generic)) and np.asarray(loss).dtype.kind in "biuf":
            loss = torch.from_numpy(np.array(loss, dtype=np.float64))  # one element checked below
        elif not isinstance(loss, torch.Tensor):
            value = None
            if not isinstance(loss, (str, bytes, complex, np.ndarray, np.generic)):
                try:
                    value = float(loss)  # a Fraction, a Decimal, anything with __float__
                except (TypeError, ValueError):
                    pass
            if value is None:
                raise UsageTypeError(
                    f"Expected the loss to be a tensor or a real number but got {type(loss).__name__} "
                    f"({loss!r:.40}); pass the loss tensor of this step (mon.observe_loss(loss)).")
            loss = torch.tensor(value)
        if loss.is_complex():
            raise UsageTypeError(
                f"Expected the loss to be a real number but got a {loss.dtype} tensor; pass the "
                "real loss the step optimises.")
        if loss.numel() != 1:
            raise UsageError(
                f"Expected the loss to be one number (a scalar tensor) but got a tensor of shape "
                f"{tuple(loss.shape)}; pass the reduced loss the step optimises (e.g. "
                "per_sample.mean()), not the per-sample losses."
            )
        loss = loss.detach()
        self._given_loss = loss if self._given_loss is None else self._given_loss + loss.to(self._given_loss.device)

    def event_dicts(self) -> list[dict]:
        """The spike events as dicts (``SpikeEvent.to_dict()`` plus the one-line ``text``)."""
        return [{**e.to_dict(), "text": e.text} for e in self.events]

    def pulse_history(self) -> pd.DataFrame:
        """Every step's pulse read so far: step, loss, grad_norm (total), z_loss, z_grad, alarm
        (bits, gradscope.detectors), skipped, micro-batch columns, the loss trend (loss_smoothed,
        loss_lowest, loss_fall; NaN while it is off or warming up), and each parameter's gradient
        norm (``grad_norm/<parameter>``: estimated from a sample on the CPU, exact on a GPU;
        gradscope/pulse.py)."""
        self._read_pulse(wait=True)
        if not self._pulse_rows:
            names = self._pulse.names if self._pulse else []
            return pd.DataFrame(columns=["step", *PULSE_COLUMNS, *(f"grad_norm/{n}" for n in names)])
        frames = []  # one per run of reads over the same parameters (a new set after an unfreeze)
        start = 0
        for end in range(1, len(self._pulse_rows) + 1):
            if end < len(self._pulse_rows) and self._pulse_rows[end][0] is self._pulse_rows[start][0]:
                continue
            names = list(PULSE_COLUMNS) + [f"grad_norm/{n}" for n in self._pulse_rows[start][0]]
            rows = np.concatenate([r for _, r in self._pulse_rows[start:end]])
            frame = pd.DataFrame(rows[:, :len(names)], columns=names)
            frame.insert(0, "step", np.concatenate(self._pulse_steps[start:end]))
            frames.append(frame)
            start = end
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    def _start_pulse(self) -> None:
        if not self.detects:
            return
        follow_backward(self)
        self._pulse_handles.append(lambda: unfollow_backward(self))
        if not self.compiled:
            handle = self._watched.register_forward_hook(WeakHook(self, "_pulse_forward"))
            self._pulse_handles.append(handle.remove)
        if self.config.guard is not None and self.optimizer is not None:
            self._install_guard()

    def _stop_pulse(self) -> None:
        handles, self._pulse_handles = self._pulse_handles, []
        for remove in reversed(handles):
            remove()
        self._remove_guard()

    def wants_backward(self) -> bool:
        """Whether a ``backward()`` call now may carry this model's loss (gradscope/pulse.py)."""
        return self._active and self.detects and not self.hooks.paused

    def backward_starting(self) -> None:
        # a compiled forward takes no output hooks, a root whose forward never runs (a
        # LightningModule's training_step calls its layers) marks nothing, nor does an output
        # whose tensors cannot be found (an object of the user's own): there a backward counts
        # when it changed the model's gradients (another model's backward, a probe's, a
        # teacher's, does not)
        self._touched = False
        self._gradient_marks = self._mark_gradients() if self.compiled or not self._output_hooked else None
        pulse = self._pulse
        if pulse is not None and pulse.backwards:
            # backward passes counted in this step already, and the gradients are gone since
            # (zero_grad(): a batch the loop threw away, or a closure that raised): their losses
            # and norms are not this step's
            marks = self._gradient_marks if self._gradient_marks is not None else self._mark_gradients()
            if all(m is None for m in marks) and any(p.requires_grad for p in self._sampled_params):
                self._guard(ALL_PARAMETERS, "pulse", pulse.discard_backwards)

    def backward_ended(self, tensor: torch.Tensor | None) -> None:
        """A followed backward call returned; ``tensor``: the one it started from (None where it
        started from several: no loss is taken)."""
        if not self._active:
            return
        marks, self._gradient_marks = self._gradient_marks, None
        if not self._touched and not (marks is not None and self._mark_gradients() != marks):
            return
        self._touched = False
        self._guard(ALL_PARAMETERS, "pulse", self._count_backward, tensor)

    def gradients_clipping(self) -> None:
        """The gradients are about to be clipped in place (``torch.nn.utils.clip_grad_norm_``,
        ``clip_grad_value_``) after this step's backward passes: the pulse reads its norms first,
        so that the detector sees the gradients the backward passes made (a clipped norm would
        hide the spike the clipping is there for). A later backward pass into the model replaces
        them. The logged ``grad_norm`` is still read at the step: what the optimizer got."""
        pulse = self._pulse
        if not self._active or self.hooks.paused or pulse is None or not pulse.backwards:
            return
        if self.scaler is not None and not unscaled(self.scaler, self.optimizer):
            return  # still scaled (clipped before scaler.unscale_): read at the step, unscaled
        self._guard(ALL_PARAMETERS, "pulse", pulse.take_norms)

    def _mark_gradients(self) -> list:
        """Which gradient tensor (and its in-place version) a few of the model's parameters hold:
        a backward that reaches the model replaces or adds into them."""
        params = self._sampled_params
        if params is None:
            trainable = [p for p in self._watched.parameters() if p.requires_grad]
            step = max(1, len(trainable) // 8)
            params = self._sampled_params = trainable[::step][:8] + trainable[-1:]
        return [(id(g), g._version) if (g := p.grad) is not None else None for p in params]

    def _count_backward(self, tensor: torch.Tensor | None) -> None:
        pulse = self._pulse_for_step()
        if pulse is None:
            return
        if tensor is None:
            pulse.backward_done(None)
            return
        if pulse.on_host and tensor.is_cpu and tensor.numel() == 1:
            # a read of CPU memory that runs no torch op: right after a backward pass each op (a
            # detach, a view) costs microseconds, its code having left the caches
            value = tensor.tolist()
            while isinstance(value, list):
                value = value[0]
            if isinstance(value, float):
                pulse.add_loss_value(value, tensor.dtype)
                pulse.backward_done(tensor)
            else:
                pulse.backward_done(None)
            return
        loss = tensor if tensor.numel() == 1 and tensor.is_floating_point() else None
        if loss is not None:
            pulse.add_loss(loss)
        pulse.backward_done(loss)

    def _pulse_forward(self, module, args, output) -> None:
        """Marks the backward passes that reach the model's output (the root's forward hook). A
        forward in eval mode, once the model has trained in this run (a validation pass with
        gradients: a saliency map, an input-gradient attack), carries no training loss."""
        if self.hooks.paused or not torch.is_grad_enabled() or peek_interpreter_stack() is not None:
            return  # (inside a torch.func transform: no loss of this model's step goes through)
        self._forward_seen = True
        if module.training:
            self._trained_seen = True
        elif self._trained_seen:
            return
        outputs = _output_tensors(output)
        self._add_sizes(_batch_sizes(args, outputs))
        self._output_hooked = False
        for t in outputs:
            if t.requires_grad:
                t.register_hook(self._mark_touched)
                self._output_hooked = True

    def _count_batch(self, batch: object) -> None:
        """Count a batch a framework hands over (Lightning's ``on_train_batch_start``) into the
        step's batch size, by its first tensor (:func:`_batch_sizes`)."""
        if self.hooks.paused or not torch.is_grad_enabled():
            return
        try:
            first = tuple(_output_tensors(batch, limit=1))
        except Exception:  # noqa: BLE001 - a batch that cannot be walked (one that holds itself): not counted
            return
        self._add_sizes(_batch_sizes(first, []))

    def _add_sizes(self, sizes: tuple[int, int, int, int] | None) -> None:
        """Add a forward's (or a batch's) readings of its size into the step's."""
        if sizes is not None:
            step = self._step_samples
            for i, size in enumerate(sizes):
                step[i] += size

    def _mark_touched(self, grad):
        self._touched = True

    def _pulse_for_step(self) -> Pulse | None:
        """The pulse, made at first use (the parameters and their device are known by then)."""
        if self._pulse is None and not self._pulse_failed:
            params = [(n, p) for n, p in self._watched.named_parameters()
                      if p.requires_grad or id(p) in self._pulse_keep]
            if not params:  # all frozen (a head's warm-up before the backbone is unfrozen): later
                return None
            devices = {local(p.detach()).device for _, p in params}
            if len(devices) > 1:
                self._pulse_failed = True
                self._warn_once(ALL_PARAMETERS, "pulse",
                                f"the model's parameters are on {len(devices)} devices; spike detection "
                                "needs them on one and is off for this run.")
                return None
            # every logged step's rows, read once per logged step; at most RING_ROWS, read
            # every RING_ROWS steps where logged steps are further apart
            window = max(128, min(self.config.every, RING_ROWS), self.config.detect.window)
            self._pulse = Pulse([n for n, _ in params], [p for _, p in params], self.config.detect, window,
                                self._host_arithmetic)
            self._pulse.norms_at_backward = self._norms_at_backward
        return self._pulse

    def _observe_pulse(self, loss_scale: torch.Tensor | None = None,
                       finite: torch.Tensor | None = None,
                       scaler_skipped: torch.Tensor | None = None) -> torch.Tensor | None:
        """Take this step's pulse (once per step): the alarm bits on the device, or None."""
        if not self._active or not self.detects:
            return None
        if self._observed_step == self._step:
            return self._step_alarm
        self._observed_step = self._step
        self._step_alarm = None
        self._guard(ALL_PARAMETERS, "pulse", self._take_pulse, loss_scale, finite, scaler_skipped)
        return self._step_alarm

    def _take_pulse(self, loss_scale, finite, scaler_skipped=None) -> None:
        pulse = self._pulse_for_step()
        if pulse is None:
            return
        given, self._given_loss = self._given_loss, None
        samples = self._observed_samples = list(self._step_samples)
        noise = _noise(samples, self._usual_samples)
        alarm = pulse.observe(self._step, given, loss_scale, finite, scaler_skipped, noise)
        pulse.send_alarm(self._step, alarm)
        self._step_alarm = alarm

    def _pulse_step_ended(self, step: int) -> None:
        """Host side of the step's pulse: alarms that landed become events (and open the flight
        recorder's window); on a logged step the ring is read into the pulse history."""
        pulse = self._pulse
        if pulse is None:
            return
        if self._observed_step != step:
            self._observe_pulse()  # a step that ended without passing an observation point
        self._step_alarm = None
        samples, self._observed_samples, self._step_samples = self._observed_samples, None, [0, 0, 0, 0]
        if samples is not None:
            if len(self._first_sizes) <= USUAL_START:
                self._first_sizes.append(samples)
            usual = self._usual_samples
            if len(self._first_sizes) == USUAL_START:  # the median of the first steps: a dry run's forward
                for k in range(4):  # counted into the first step's batch does not set the usual size
                    usual[k] = float(sorted(sizes[k] for sizes in self._first_sizes)[USUAL_START // 2])
            elif len(self._first_sizes) > USUAL_START:
                for k, size in enumerate(samples):
                    if size:
                        usual[k] = size if not usual[k] else usual[k] + USUAL_ALPHA * (size - usual[k])
        landed = pulse.landed_alarms()
        if landed:
            self._read_pulse(wait=True)
            for alarm_step, bits in landed:
                self._detected(alarm_step, bits)
        elif self.is_logged(step) or (step + 1) % pulse.window == 0:
            self._read_pulse(wait=False)
        pulse.next_step()
        if self.is_logged(step):
            self._guard(ALL_PARAMETERS, "pulse", self._follow_trainable)
        lr = self._current_lr(plain_only=True)  # a tensor's would be a read from the device every step
        if lr is not None or self._lrs:
            self._lrs.append(lr)

    def _follow_trainable(self) -> None:
        """On a logged step: where a parameter requires grad that the pulse does not read (a
        backbone unfrozen after the head's warm-up, a module added), or one it reads has left the
        model, the alarms and rows so far are taken and a new pulse reads the model's parameters
        that require grad or were read before (one frozen again reads 0, as a parameter without a
        gradient does: two parts trained in turn do not make a new pulse every step) from the
        next step on, its detector warming up again (a gradient norm over more parameters is a
        new level, not a spike; the non-finite checks act from its first step)."""
        pulse = self._pulse
        if pulse is None:
            return
        read = {id(p) for p in pulse.params}
        in_model = 0
        for p in self._watched.parameters():
            if id(p) in read:
                in_model += 1
            elif p.requires_grad:
                break
        else:
            if in_model == len(read):
                return
        landed = pulse.landed_alarms(wait=True)  # an alarm of the steps so far still on its way
        self._read_pulse(wait=True)
        for alarm_step, bits in landed:
            self._detected(alarm_step, bits)
        self._pulse_keep = read | {id(p) for p in self._watched.parameters() if p.requires_grad}
        self._pulse = None
        self._sampled_params = None

    def _read_pulse(self, wait: bool) -> None:
        """Copy the ring rows not read yet into the pulse history."""
        pulse = self._pulse
        if pulse is None or pulse.last_step is None or pulse.last_step <= self._pulse_read_upto:
            return
        if not wait and pulse.device.type != "cpu":
            wait = True  # read at most once per logged step: the ring is small
        ring = pulse.read()
        first = max(self._pulse_read_upto + 1, pulse.last_step - pulse.window + 1, self._first_step)
        steps = np.arange(first, pulse.last_step + 1)
        self._pulse_rows.append((pulse.names, ring[steps % pulse.window]))
        self._pulse_steps.append(steps)
        self._pulse_read_upto = pulse.last_step
        self._last_ring = (ring, first)

    def number_from(self, step: int) -> None:
        """Number this monitor's steps from ``step`` rather than 0: a run resumed at a trainer's
        global step (the framework callbacks do this). Only before its first step."""
        if self._step != self._first_step or self._pulse_read_upto >= self._first_step:
            raise UsageError("number_from() is for a monitor that has not recorded a step yet.")
        self._step = self._first_step = int(step)
        self._pulse_read_upto = self._first_step - 1

    def read_lr_from(self, optimizer: torch.optim.Optimizer) -> None:
        """Read the learning rate of ``optimizer``'s first parameter group at each step, for the
        spike events (``lr``, and ``lr_before``: whether a schedule raised it, a warm restart's
        expected jolt), without following its steps: for a framework's callback, which ends each
        step with ``mon.step()``. An optimizer the monitor follows is read anyway."""
        self._lr_source = optimizer

    def _current_lr(self, plain_only: bool = False) -> float | None:
        """The first parameter group's learning rate; a tensor's only when not ``plain_only``."""
        optimizer = self.optimizer if self.optimizer is not None else self._lr_source
        groups = getattr(optimizer, "param_groups", None)
        if not groups or (plain_only and torch.is_tensor(groups[0].get("lr"))):
            return None
        return Recipe.number(groups[0].get("lr"))

    def _detected(self, step: int, bits: int) -> None:
        pulse = self._pulse
        ring, _ = self._last_ring
        first = max(self._first_step, pulse.last_step - pulse.window + 1)
        skipped = self.config.guard is not None and self._guard_restore is not None \
            and bool(bits & SKIPPABLE) and step not in self._unguarded_steps
        lr = self._current_lr()
        if skipped and step not in self.skipped_steps[-3:]:  # the host's guard counted it already
            self.skipped_steps.append(step)
        if self.events and extends(self.events[-1], step, bits):
            # the same episode: counted, no new event and no new flight-recorder window
            self.events[-1] = extended(self.events[-1], step, skipped, bits)
            return
        event = make_event(step, bits, ring, pulse.window, pulse.names, pulse.band(),
                           skipped=skipped, rank=self.rank, lr=lr, first_step=first)
        if self.config.guard is not None:
            acts = not self._guard_declined and step not in self._unguarded_steps \
                and (self.optimizer is not None or bool(self._unfollowed))
            event = replace(event, guard="on" if acts else "could not act")
        before = [v for v in self._lrs if v is not None]
        if before:
            event = replace(event, lr_before=float(min(before)))
        self.events.append(event)
        if self.world_size > 1:
            self._unshared.append(event)
        if self.world_size == 1:
            # under DDP/FSDP2 every logged step is a collective that all ranks must join, and a
            # rank cannot know of another's detection before the next one: no flight recorder
            self._record_until = max(self._record_until, self._step + self.config.record_after)
        for sink in self._sinks:
            if hasattr(sink, "log_event"):
                self._guard(ALL_LAYERS, _sink_name(sink), sink.log_event, event)

    def _exchange_alarms(self, device: torch.device) -> None:
        """Every rank, every logged step (after the buffers' all-reduce, which every rank joins or
        none): share the events detected since the last one; rank 0 merges them into its own
        (gradscope/events.py). Whatever fails here, the rank still joins the gather."""
        rows = np.full((SHARED_ALARMS, SHARED_COLUMNS), -1.0)
        try:
            rows = shared_rows(self._unshared)
        except Exception as e:  # noqa: BLE001 - join the gather with nothing rather than leave the others waiting
            self._report(ALL_PARAMETERS, "rank events", e)
        self._unshared = []
        gathered = self._ranks.gather_rows(torch.tensor(rows, dtype=torch.float64, device=device))
        if self.rank == 0:
            self._guard(ALL_PARAMETERS, "rank events", self._merge_rank_alarms, gathered)

    def _merge_rank_alarms(self, gathered: list) -> None:
        pulse = self._pulse
        lr = self._current_lr()

        def make(step, bits, rank, loss, z_loss, z_grad):
            if pulse is None or pulse.last_step is None or step <= pulse.last_step - pulse.window:
                return SpikeEvent(step, alarm_names(bits), loss, float("nan"), round(z_loss, 2),
                                  round(z_grad, 2), False, rank=rank, ranks=(rank,), lr=lr)
            ring = pulse.read()
            event = make_event(step, bits, ring, pulse.window, pulse.names, pulse.band(), skipped=False,
                               rank=rank, lr=lr,
                               first_step=max(self._first_step, pulse.last_step - pulse.window + 1))
            return replace(event, loss=loss, z_loss=round(z_loss, 2), z_grad=round(z_grad, 2), ranks=(rank,))

        self.events, new = merge_rank_alarms(self.events, gathered, make)
        for event in new:
            for sink in self._sinks:
                if hasattr(sink, "log_event"):
                    self._guard(ALL_LAYERS, _sink_name(sink), sink.log_event, event)

    # -- the guard ----------------------------------------------------------------------------

    def _install_guard(self) -> None:
        self._snapshot = StateSnapshot(self.optimizer)
        self._wrap_step(self.optimizer, "_guarded_call")

    def _guard_unfollowed(self, optimizer: torch.optim.Optimizer, closure_free: bool = False) -> None:
        """Guard ``optimizer``, whose steps this monitor does not follow: a framework callback ends
        each step with ``mon.step()`` after :meth:`_decide_guard`, inside the framework's
        optimizer step (Lightning, in its closure) or right before it (the Hugging Face Trainer);
        the optimizer's wrapped step then acts on that decision. ``closure_free``: the framework
        steps without a closure, so any optimizer can be guarded (a step called with a closure
        anyway is let through unguarded, with a warning, as in a plain loop)."""
        if not self._active or self.config.guard is None or not self.detects \
                or any(o is optimizer for o in self._unfollowed):
            return
        if not closure_free and not evaluates_closure_once(optimizer):
            self._decline_guard(
                f"guard='skip' cannot guard {type(optimizer).__name__}: the framework steps it with a "
                "closure that only the step evaluates (maybe several times), after which the update "
                "cannot be held back; spikes are still detected and reported, and no step is "
                "skipped. The guard acts on torch's own optimizers other than LBFGS.")
            return
        self._unfollowed.append(optimizer)
        self._wrap_step(optimizer, "_decided_call")

    def _decline_guard(self, message: str) -> None:
        """The guard cannot act in this run (said once, in ``message``); ``mon.step()`` then says
        nothing more of it."""
        self._guard_declined = True
        self._warn_once(ALL_PARAMETERS, "guard declined", message)

    def _wrap_step(self, optimizer: torch.optim.Optimizer, call: str) -> None:
        """Route ``optimizer.step`` through the method ``call(opt, original, args, kwargs)`` while
        the monitor is active; put back exactly when the guard is removed. Where something
        wrapped the step after the guard did (an LR scheduler built inside the monitor), the
        guard's wrapper stays in the chain after the monitor stopped, passing every call
        straight through and holding the monitor only weakly (its history is freed)."""
        original = optimizer.step
        had_own = "step" in vars(optimizer)
        owner = weakref.ref(self)

        def guarded_step(opt, *args, **kwargs):
            monitor = owner()
            if monitor is None or not monitor._active:
                return original(*args, **kwargs)
            return getattr(monitor, call)(opt, original, args, kwargs)

        guarded_step.__wrapped__ = original
        if hasattr(original, "_wrapped_by_lr_sched"):
            # a scheduler built before the monitor checks at its first step that step() is still
            # the one it wrapped; ours calls it
            guarded_step._wrapped_by_lr_sched = True
        # a bound method, as the optimizer's own step is: a scheduler built inside the monitor
        # wraps ``step.__func__``
        optimizer.step = types.MethodType(guarded_step, optimizer)

        def restore() -> None:
            if getattr(vars(optimizer).get("step"), "__func__", None) is guarded_step:
                if had_own:
                    optimizer.step = original
                else:
                    del optimizer.step

        earlier = self._guard_restore
        self._guard_restore = restore if earlier is None else (lambda: (restore(), earlier()))

    def _remove_guard(self) -> None:
        restore, self._guard_restore = self._guard_restore, None
        self._unfollowed.clear()
        self._decided = None
        if restore is not None:
            restore()

    def _evaluated_closure(self, opt, args: tuple, kwargs: dict):
        """``(args, kwargs, loss)`` of a guarded step, its closure (if any) evaluated already and
        replaced by its loss, so that the update can be decided on before it is made; None for
        a closure the step must evaluate itself (warned: such a step is not guarded)."""
        closure = _closure_argument((opt, *args), kwargs)
        if closure is None:
            return args, kwargs, None
        if not evaluates_closure_once(opt):
            self._unguarded_steps.append(self._step)
            self._warn_once(
                ALL_PARAMETERS, "guard closure",
                f"guard='skip' cannot guard {type(opt).__name__}.step(closure): the closure is "
                "evaluated inside the step (maybe several times), after which the update cannot "
                "be held back; spikes are still detected and reported, and no step is skipped. "
                "The guard acts on a step without a closure, or on one of torch's own optimizers "
                "other than LBFGS (their closure is evaluated once, before the update).")
            return None
        with torch.enable_grad():  # as the step would run it
            loss = closure()
        args, kwargs = _with_closure((opt, *args), kwargs, lambda: loss)
        return args[1:], kwargs, loss

    def _guarded_call(self, opt, original, args, kwargs):
        """The followed optimizer's guarded step."""
        evaluated = self._evaluated_closure(opt, args, kwargs)
        if evaluated is None:
            return original(*args, **kwargs)
        args, kwargs, loss = evaluated
        out = self._guarded_step(original, args, kwargs)
        return loss if out is None else out

    def _decide_guard(self, optimizer: torch.optim.Optimizer, loss_scale: torch.Tensor | None = None,
                      scaler_skipped: torch.Tensor | None = None) -> None:
        """For an optimizer guarded by :meth:`_guard_unfollowed`, before ``mon.step()`` ends the
        step: take the step's pulse with every gradient checked, and decide whether the coming
        update is skipped (recorded now, acted on by the optimizer's wrapped step).
        ``scaler_skipped``: the GradScaler's found-Inf count, when a scaler will skip the step
        itself (its gradient alarms are then not the guard's to act on)."""
        self._decided = None  # an earlier decision no guarded step took (a scaler skipped it)
        if not self._active or not any(o is optimizer for o in self._unfollowed):
            return
        alarm = self._guard_alarm(optimizer, loss_scale, scaler_skipped)
        if alarm is None:
            return
        step = self._step
        if isinstance(alarm, np.ndarray):  # on the host: read in place
            skip = bool(int(alarm[0]) & SKIPPABLE)
            if skip:
                if self._pulse is not None:
                    self._pulse.mark_skipped(step, 1.0)
                if step not in self.skipped_steps[-1:]:
                    self.skipped_steps.append(step)
        else:  # on the device: the decision stays there
            skip = skippable(alarm).reshape(())
            if self._pulse is not None:
                self._pulse.mark_skipped(step, skip.float())
        self._decided = (optimizer, skip)

    def _decided_call(self, opt, original, args, kwargs):
        """The step of an optimizer guarded by :meth:`_guard_unfollowed`: its closure evaluated
        first (which ends the monitor's step and decides), then the update held back or made."""
        evaluated = self._evaluated_closure(opt, args, kwargs)
        if evaluated is None:
            return original(*args, **kwargs)
        args, kwargs, loss = evaluated
        decided, self._decided = self._decided, None
        if decided is None or decided[0] is not opt:
            return original(*args, **kwargs)
        skip = decided[1]
        if not isinstance(skip, bool):
            snapshot = StateSnapshot(opt)
            why_not = snapshot.restorable(skip.device)
            if why_not is None:
                snapshot.take()
                out = original(*args, **kwargs)
                snapshot.put_back_where(skip)
                return out
            self._warn_state_on_host(why_not)
            skip = bool(skip)  # a wait for the device
        if skip:
            _stepped_for_schedulers(opt)
            return loss
        return original(*args, **kwargs)

    def _warn_state_on_host(self, why_not: str) -> None:
        if why_not in ("state on another device", "state in Python numbers"):
            self._warn_once(ALL_PARAMETERS, "guard sync",
                            "guard='skip': the optimizer keeps state on the host (torch's Adam keeps "
                            "its step count on the CPU unless capturable=True or fused=True; "
                            "Adafactor counts its steps in a Python int), so the guard reads the "
                            "alarm from the GPU before each step: one wait per step.")

    def _guard_alarm(self, optimizer: torch.optim.Optimizer, loss_scale: torch.Tensor | None,
                     scaler_skipped: torch.Tensor | None = None):
        """The step's alarm the guard acts on: the pulse taken with every gradient of
        ``optimizer`` checked for NaN/Inf, agreed by all ranks; None without a pulse."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        finite = None
        try:
            finite = all_finite(params)
        except Exception as e:  # noqa: BLE001 - the step goes on unguarded
            self._report(ALL_PARAMETERS, "guard", e)
        alarm = self._observe_pulse(loss_scale, finite, scaler_skipped)
        if self.world_size > 1:
            alarm = self._skip_on_every_rank(alarm, params)
        return alarm

    def _guarded_step(self, original, args, kwargs):
        alarm = self._guard_alarm(self.optimizer, self._scale_now())
        if alarm is None:
            return original(*args, **kwargs)
        on_host = self._pulse is None or self._pulse.on_host
        why_not = None if on_host else self._snapshot.restorable(alarm.device)
        if on_host or why_not is not None:
            if why_not is not None:
                self._warn_state_on_host(why_not)
            if int(alarm[0]) & SKIPPABLE:  # on the CPU this reads memory in place
                self._skip_step()
                return None
            return original(*args, **kwargs)
        self._snapshot.take()
        out = original(*args, **kwargs)
        skip = skippable(alarm).reshape(())
        self._snapshot.put_back_where(skip)
        if self._pulse is not None:
            self._pulse.mark_skipped(self._step, skip.float().reshape(()))
        return out

    def _skip_on_every_rank(self, alarm, params):
        """Under DDP/FSDP2 the guard's decision is taken together: a rank whose own loss spiked
        must not leave its replica (or shard) one update behind the others. Each rank's skip flag
        is all-reduced with max, every guarded step (every rank joins, whatever its pulse did), and
        the result stands in for the alarm: 1 to skip, 0 to step."""
        if alarm is None:
            flag = 0.0
        elif isinstance(alarm, np.ndarray):
            flag = float(bool(int(alarm[0]) & SKIPPABLE))
        else:
            flag = skippable(alarm).float().reshape(1)
        device = alarm.device if isinstance(alarm, torch.Tensor) else \
            (local(params[0].detach()).device if params else torch.device("cpu"))
        agreed = self._ranks.any_rank(flag if isinstance(flag, torch.Tensor)
                                      else torch.tensor([flag], device=device))
        if isinstance(alarm, torch.Tensor):
            return agreed
        return np.array([float(agreed[0]) * SKIPPABLE])  # on the host: a read of memory, no wait

    def _scale_now(self) -> torch.Tensor | None:
        if self.scaler is None:
            return None
        scale = getattr(self.scaler, "_scale", None)
        return scale if isinstance(scale, torch.Tensor) else None

    def _skip_step(self) -> None:
        """The guard skipped this step's update: it ends as if taken (statistics recorded)."""
        _stepped_for_schedulers(self.optimizer)
        if self._pulse is not None:
            self._pulse.mark_skipped(self._step, 1.0)
        if self._step not in self.skipped_steps[-1:]:
            self.skipped_steps.append(self._step)
        if self.is_logged(self._step):
            self._guard(ALL_PARAMETERS, "grad_norm", self._parameter_statistics, False)
        if self.scaler is None:  # with a scaler, the step ends when scaler.step() returns
            self._end_step()

    # -- landed steps: history and sinks -------------------------------------------------------

    def _drain(self, wait: bool) -> None:
        """Move landed copies (all of them if ``wait``) into the history and the sinks, oldest first."""
        while self._in_flight and (
            wait or self._in_flight[0].ready() or len(self._in_flight) > _MAX_IN_FLIGHT
        ):
            pending = self._in_flight.popleft()
            ids, values = self.layout.compute(pending.state(), pending.n_entries)
            self.history.append(pending.step, ids, values)
            if self._sinks:
                layers, metrics = self._names()
                record = StepRecord(pending.step, layers[ids], metrics[ids], values)
                for sink in self._sinks:
                    self._guard(ALL_LAYERS, _sink_name(sink), sink.log, record)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "Recorder":
        """Install the hooks and open the sinks. If anything fails halfway, what was already
        installed is removed before the error propagates."""
        if self._active:
            return self
        self._refuse_if_watched()
        undo: list = []
        try:
            for module in self.model.modules():
                _MONITORED[module] = self
            undo.append(self._unregister)
            self._active = True
            undo.append(self._remove_optimizer_hooks)
            self._stepped_unfollowed.clear()
            self._install_optimizer_hooks()
            if self._scaler_patch is not None:
                self._scaler_patch.install()
                undo.append(self._scaler_patch.restore)
            undo.append(self._remove_registration_hooks)
            self._registration_handles.append(register_module_module_registration_hook(self._on_registration))
            self._registration_handles.append(register_module_parameter_registration_hook(self._on_registration))
            undo.append(self._abort_open_sinks)
            self._sinks = self._open_sinks()
            undo.append(self._stop_pulse)
            self._start_pulse()
            self._follow_new_structure()  # the model may have changed since the last block
            if self.is_logged(self._step):
                undo.append(self.hooks.detach)
                self._arm_step()
        except BaseException:
            self._active = False
            for action in reversed(undo):
                try:
                    action()
                except Exception:  # noqa: BLE001 - the start's own error is the one to raise
                    pass
            raise
        return self

    def _open_sinks(self) -> list[Sink]:
        """The destinations of each logged step besides the history; a Recorder has none
        (``gradscope.Monitor`` opens those its options ask for: TensorBoard, the run directory)."""
        return []

    def _abort_open_sinks(self) -> None:
        """Release the sinks a failed start opened."""
        sinks, self._sinks = self._sinks, []
        abort_sinks(sinks)

    def stop(self) -> None:
        """Remove every hook, bring the pending copies home, close the sinks.

        Each clean-up runs whatever the others did: a failure in one (a full disk, a broken
        writer) is reported as a warning and the hooks, the scaler and the model's registration
        are restored all the same; with ``strict=True`` the first failure is raised at the end.
        The model's train/eval modes are never touched."""
        if not self._active:
            return
        self._active = False
        errors: list[Exception] = []

        def attempt(what: str, fn, *args) -> None:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - every clean-up must run
                errors.append(e)
                if not self.config.strict:
                    self._report(ALL_LAYERS, what, e)

        attempt("step buffer", self.buffer.discard)  # a step that never reached its optimizer step
        attempt("pulse", self._stop_pulse)
        attempt("pulse", self._read_pulse, True)
        attempt("history", self._drain, True)
        attempt("history", self._final_flush)
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            attempt(_sink_name(sink), sink.close)
        attempt("hooks", self.hooks.detach)
        attempt("optimizer hooks", self._remove_optimizer_hooks)
        attempt("registration hooks", self._remove_registration_hooks)
        if self._scaler_patch is not None:
            attempt("scaler", self._scaler_patch.restore)
        self.params.drop()
        self._unregister()
        if errors and self.config.strict:
            raise errors[0]

    def __enter__(self) -> "Recorder":
        # a with block of this monitor inside another one (a train() that opens it, called in a
        # block that did): the inner exit leaves it running, the outer one stops it
        depth = self._with_depth
        if not (self._active and depth):
            self.start()
        self._with_depth = depth + 1
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._with_depth = max(0, self._with_depth - 1)
        if not self._with_depth:
            self.stop()

    def _refuse_if_watched(self) -> None:
        for module in self.model.modules():
            other = _MONITORED.get(module)
            if other is not None:
                where = (
                    "This model is" if other.model is self.model
                    else f"This model shares a {type(module).__name__} module with a "
                         f"{type(other.model).__name__} that is"
                )
                raise UsageError(
                    f"{where} already watched by another gradscope monitor; leave the first "
                    "`with gradscope.monitor(...)` block before starting a second one."
                )

    def _unregister(self) -> None:
        for module in self.model.modules():
            if _MONITORED.get(module) is self:
                del _MONITORED[module]

    def _remove_registration_hooks(self) -> None:
        handles, self._registration_handles = self._registration_handles, []
        for handle in handles:
            handle.remove()

    def _install_optimizer_hooks(self) -> None:
        """Hooks on the followed optimizer's step; without one, a global optimizer hook that only
        notes which optimizers stepped, for :meth:`attach_optimizer`. Each handle is kept as soon
        as it exists."""
        if self.optimizer is None:
            self._optimizer_handles.append(register_optimizer_step_post_hook(self._unfollowed_optimizer_stepped))
            return
        self._optimizer_handles.append(self.optimizer.register_step_pre_hook(self._before_optimizer_step))
        self._optimizer_handles.append(self.optimizer.register_step_post_hook(self._after_optimizer_step))

    def _remove_optimizer_hooks(self) -> None:
        handles, self._optimizer_handles = self._optimizer_handles, []
        for handle in handles:
            handle.remove()

    # -- what was recorded ---------------------------------------------------------------------

    def to_dataframe(self) -> pd.DataFrame:
        """The history as a long table: columns step, layer, metric, value (float64).

        Steps are those completed so far; a step still in progress is not included.
        """
        self._drain(wait=True)
        return self.history.to_dataframe()

    def recent_history(self) -> pd.DataFrame:
        """The logged steps held in RAM (all of them without a run directory)."""
        return self.history.recent()

    @property
    def layers(self) -> pd.DataFrame:
        """One row per layer seen: name, type, kind (parameter, module, activation), trainable
        (parameters with ``requires_grad``), order (parameters first, then forward order)."""
        rows = self.params.layer_rows()
        for name in self.hooks.module_order:
            rows.append({
                "layer": name, "type": self.hooks.layer_types[name], "kind": self.hooks.layer_kinds[name],
                "trainable": False,
            })
        frame = pd.DataFrame(rows, columns=["layer", "type", "kind", "trainable"])
        frame["order"] = np.arange(len(frame))
        return frame

    @property
    def layer_count(self) -> int:
        """Rows of :attr:`layers`, without building the table."""
        return len(self.params.names) + len(self.hooks.module_order)

    def model_summary(self) -> dict:
        return {
            "class": type(self.model).__name__,
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
        }

    def run_meta(self) -> dict:
        """What a run directory's ``meta.json`` says of this run besides its status and layers."""
        return {
            "every": self.config.every,
            "detects": self.config.detect is not None,
            "model": self.model_summary(),
            "metrics": {name: {"scope": s.scope, "doc": s.doc} for name, s in STATISTICS.items()},
            "steps_logged": self.history.steps_logged,
            "last_step": self.history.last_step,
            "lost_steps": self.history.lost_steps,
        }

    def _names(self) -> tuple[np.ndarray, np.ndarray]:
        """(layer, metric) arrays indexed by entry id, rebuilt only when the layout grew."""
        entries = self.layout.entries
        if self._names_cache is None or self._names_cache[0] != len(entries):
            self._names_cache = (
                len(entries),
                np.array([e.layer for e in entries], dtype=object),
                np.array([e.metric for e in entries], dtype=object),
            )
        return self._names_cache[1], self._names_cache[2]

    # -- errors inside gradscope never stop training -------------------------------------------

    def _final_flush(self) -> None:
        """Write what is left; what cannot be written is listed as lost in meta.json."""
        try:
            self.history.flush()
        finally:
            if self.history.unwritten:
                self.history.mark_unwritten_lost()

    def _history_write_failed(self, error: OSError) -> None:
        if self.config.strict:
            raise error
        self._warn_once(
            ALL_LAYERS, "history parts",
            f"writing the history to {str(self.history.run_dir)!r} failed ({error}); training goes "
            f"on, the steps are kept in RAM (at most {max(self.config.window, self.config.flush_every)}) "
            "and the write is retried with a growing interval. Steps that do not fit are listed "
            "as lost_steps in meta.json.",
        )


def _stepped_for_schedulers(optimizer) -> None:
    """The user called ``optimizer.step()`` and the guard held the update back: an LR scheduler
    still counts it as called (what torch's own step wrapper marks), so that its ``step()``
    right after does not warn that it came before the optimizer's."""
    try:
        optimizer._opt_called = True
    except (AttributeError, TypeError):  # no optimizer, or one without attributes of its own
        pass


def _batch_sizes(args: tuple, outputs: list[torch.Tensor]) -> tuple[int, int, int, int] | None:
    """Four readings of a forward pass's batch size, each 0 where it has none: the leading dimension
    and the elements of its first positional tensor input with a dimension, and the same of its
    first output tensor with one (``outputs``: :func:`_output_tensors` of the output). Each is wrong
    for some models (a sequence-first input leads with its time, an EmbeddingBag's with its tokens;
    images of several resolutions change the elements, batches of few long sequences the leading
    dimension), rarely three of four for a batch of the usual size: :func:`_noise` needs three.
    None when they cannot be read (a tensor subclass without sizes)."""
    try:
        lead = elements = 0
        for value in args:
            if isinstance(value, torch.Tensor):
                if value.dim():
                    lead, elements = value.shape[0], value.numel()
                break
        for value in outputs:
            if value.dim():
                return lead, elements, value.shape[0], value.numel()
        return lead, elements, 0, 0
    except Exception:  # noqa: BLE001 - the step is read as a usual one
        return None


def _noise(sizes: list[int], usual: list[float]) -> float:
    """How many times as spread as usual a step's loss and gradient norm are expected to be:
    sqrt(usual / size) by the reading of its batch size that fell least, of those that fell under
    :data:`SMALL_BATCH` of their usual value, where all readings there are fell so, or three of
    four (a sequence-first input padded to a fixed length keeps its leading dimension whatever
    the batch); 1 otherwise."""
    ratios = [u / n for n, u in zip(sizes, usual) if n and u]
    fell = [r for r in ratios if r * SMALL_BATCH > 1.0]
    if not fell or len(fell) < len(ratios) - (len(ratios) == 4):
        return 1.0
    return math.sqrt(min(fell))


def _output_tensors(output: object, limit: int = 8) -> list[torch.Tensor]:
    """The tensors of a forward's output (a tensor, a tuple/list, a dict or ModelOutput, a
    dataclass), at most ``limit`` of them."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        values = output.values()
    elif isinstance(output, (tuple, list)):
        values = output
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        values = [getattr(output, f.name, None) for f in dataclasses.fields(output)]
    else:
        return []
    found: list[torch.Tensor] = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif len(found) < limit and value is not None and not isinstance(value, (str, bytes)):
            found.extend(_output_tensors(value, limit - len(found)))
        if len(found) >= limit:
            break
    return found[:limit]


def _sink_name(sink: Sink) -> str:
    return getattr(sink, "name", type(sink).__name__)


def _open_history(names, config: MonitorConfig) -> History:
    try:
        return History(names, config.log_dir, window=config.window, flush_every=config.flush_every)
    except OSError as e:
        raise UsageError(
            f"`log_dir` {str(config.log_dir)!r} cannot be used as a run directory "
            f"({e.strerror or e}); pass a directory gradscope can create and write to."
        ) from e


def _scripted_submodules(model: nn.Module) -> list[str]:
    """Names of the outermost TorchScript submodules of ``model`` (``torch.jit.script``'ed parts)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule) and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return found


def _is_compiled(model: nn.Module) -> bool:
    """``torch.compile(model)`` (an ``OptimizedModule``) or ``model.compile()``, in place (what
    Hugging Face's ``torch_compile=True`` calls): the forward runs as a compiled graph."""
    if getattr(model, "_compiled_call_impl", None) is not None:
        return True
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # a torch without dynamo
        return False
    return isinstance(model, OptimizedModule)


def _check_optimizer(
    optimizer: object, model: nn.Module, attaching: bool = False
) -> torch.optim.Optimizer | None:
    if optimizer is None and not attaching:
        return None
    optimizer = unwrap_optimizer(optimizer)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageTypeError(
            f"Expected `optimizer` to be a torch.optim.Optimizer but got {type(optimizer).__name__}; "
            + ("pass the optimizer that steps this model (a trainer's, once it has built it)."
               if attaching else
               "pass the optimizer that steps this model, or leave it out and call mon.step().")
        )
    model_params = {id(p) for p in model.parameters()}
    owned = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(id(p) in model_params for p in owned):
        raise UsageError(
            f"The optimizer ({type(optimizer).__name__}, {len(owned)} parameters) owns none of the "
            "model's parameters; pass the optimizer built from this model's parameters()."
        )
    return optimizer


def _closure_argument(args: tuple, kwargs: dict) -> Callable | None:
    """The closure given to ``optimizer.step`` (``args`` starts with the optimizer), if any."""
    closure = kwargs.get("closure")
    if closure is None and len(args) > 1:
        closure = args[1]
    return closure if callable(closure) else None


def _with_closure(args: tuple, kwargs: dict, closure: Callable) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of ``optimizer.step`` with its closure replaced."""
    if kwargs.get("closure") is not None:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs
