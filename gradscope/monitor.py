"""``gradscope.monitor``: the context manager that ties hooks, the step buffer and the history to
a training loop, one optimizer step at a time.

Step ``s`` (numbered from 0) is logged when ``s % every == 0``. Everything between two optimizer
steps belongs to the coming step: forwards and backwards (several of them under gradient
accumulation) queue their partial results, the optimizer step adds the parameter statistics and
ends the step, and the step's buffer leaves for the host in one copy.
"""

from __future__ import annotations

import os
import warnings
import zlib
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from gradscope.buffer import PRESENCE, Layout, PendingStep, StepBuffer
from gradscope.config import MonitorConfig
from gradscope.errors import GradscopeWarning, UsageError, UsageTypeError
from gradscope.hooks import HookManager
from gradscope.records import History, write_findings, write_meta
from gradscope.stats import STATISTICS
from gradscope.stats.reductions import (
    foreach_delta_norms,
    foreach_nonfinite_counts,
    foreach_norms,
    group_by_device_and_dtype,
    snapshot,
)

_MONITORED: "weakref.WeakKeyDictionary[nn.Module, Monitor]" = weakref.WeakKeyDictionary()
"""Every module under an active monitor, so that two monitors never hook the same module."""

_MAX_IN_FLIGHT = 2
"""Host copies allowed in flight before the oldest is waited for (one wait per logged step)."""


@dataclass
class _ParamSlots:
    name: str
    param: nn.Parameter
    sharded: bool
    grad_sq: int
    grad_n: int
    weight_sq: int
    weight_n: int
    nonfinite: int
    nonfinite_n: int


class Monitor:
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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UsageTypeError(
                f"Expected `model` to be a torch.nn.Module but got {type(model).__name__}; "
                "pass the model whose training you want to monitor."
            )
        self.config = MonitorConfig(
            every=every, functional=functional, log_dir=log_dir, window=window,
            flush_every=flush_every, strict=strict, weights_every=weights_every, tensorboard=tensorboard,
            histograms_every=histograms_every, findings_every=findings_every,
        )
        self.model = model
        self.optimizer = _check_optimizer(optimizer, model)
        self.scaler = _check_scaler(scaler, self.optimizer)
        self._scaler_step = None
        # a torch.compile'd model: statistics use the original module's names; module hooks
        # would run inside the compiled forward, so only parameter statistics are recorded
        self.compiled = _is_compiled(model)
        watched = model._orig_mod if self.compiled else model
        if _is_ddp(watched):
            watched = watched.module  # names without DDP's "module." prefix
        self.rank, self.world_size = _distributed()
        if self.rank != 0:  # rank 0 writes the records, dashboards and findings
            self.config.log_dir = None
            self.config.tensorboard = None
            log_dir = None
        self._agreed_step: int | None = None
        parameters = list(watched.named_parameters())
        primary = parameters[0][1].device if parameters else torch.device("cpu")
        self.layout = Layout()
        self.buffer = StepBuffer(self.layout, primary)
        self.hooks = HookManager(watched, self.layout, self.buffer, self._guard, functional)
        self._param_slots = [self._slots_for(name, p) for name, p in parameters]
        modules = dict(watched.named_modules())
        self._owner_types = {
            name: type(modules[name.rpartition(".")[0]]).__name__ for name, _ in parameters
        }
        owned = (
            {id(p) for group in self.optimizer.param_groups for p in group["params"]}
            if self.optimizer is not None else set()
        )
        self._updated = {id(p) for _, p in parameters if id(p) in owned}
        self.history = History(
            self._names, log_dir, window=self.config.window, flush_every=self.config.flush_every
        )
        self._step = 0
        self._in_flight: deque[PendingStep] = deque()
        self._optimizer_handles: list = []
        self._snapshot: list | None = None
        self._warned: set[tuple[str, str]] = set()
        self._reporter = None
        self._histograms: list[tuple[tuple[str, str], torch.Tensor]] = []
        self._active = False
        self._was_training = model.training

    # -- the public surface --------------------------------------------------------------------

    @property
    def current_step(self) -> int:
        """The step now in progress (the number of optimizer steps taken so far)."""
        return self._step

    def is_logged(self, step: int) -> bool:
        return step % self.config.every == 0

    def weights_logged(self, step: int) -> bool:
        """Whether ``weight_norm`` and ``update_ratio`` are recorded at (logged) step ``step``."""
        every = self.config.every
        return self.is_logged(step) and (step // every) % -(-self.config.weights_every // every) == 0

    def step(self, loss_scale: "torch.Tensor | float | None" = None) -> None:
        """End the current step when no ``optimizer=`` was given: call it once per optimizer step,
        right before ``optimizer.step()``, while the gradients are there. (Called after the step
        and before ``zero_grad()`` it works too, with ``weight_norm`` read after the update.)

        ``loss_scale``: the factor the loss was multiplied by before ``backward()`` (a GradScaler's
        scale), divided out of the backpropagated signal; the gradients must already be unscaled."""
        if self.optimizer is not None:
            raise UsageError(
                "mon.step() was called, but the monitor was given optimizer= and already ends "
                "each step at optimizer.step(); remove the mon.step() call."
            )
        if not self._active:
            raise UsageError("mon.step() was called outside the `with gradscope.monitor(...)` block.")
        try:
            if self.is_logged(self._step):
                self._guard("(all parameters)", "grad_norm", self._parameter_statistics, False)
        finally:
            if loss_scale is not None and not isinstance(loss_scale, torch.Tensor):
                loss_scale = torch.tensor(float(loss_scale))
            self._end_step(loss_scale)

    def to_dataframe(self) -> pd.DataFrame:
        """The history as a long table: columns step, layer, metric, value (float64).

        Steps are those completed so far; a step still in progress is not included.
        """
        self._drain(wait=True)
        return self.history.to_dataframe()

    def findings(self) -> list:
        """The rules (gradscope.rules) over the history so far: a list of ``Finding``."""
        return self.report().findings

    def report(self):
        """A ``gradscope.Report`` of the history so far: findings, per-layer statistics of the
        last logged step, the history."""
        from gradscope.report import build_report  # reports read records; records don't need them

        return build_report(self.to_dataframe(), self.layers, None, self._model_summary(), {
            "steps": self.history.steps_logged, "every": self.config.every, "loss": "training loop",
            "last_step": self.history.last_step,
        })

    def save_html(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Write the self-contained HTML report of the history so far (gradscope.reporters.html)."""
        from gradscope.reporters.html import write_html

        return write_html(self.report(), path, title or f"{type(self.model).__name__} training run")

    @property
    def layers(self) -> pd.DataFrame:
        """One row per layer seen: name, type, kind (parameter, module, activation), trainable
        (parameters with ``requires_grad``), order (parameters first, then forward order)."""
        rows = [
            {"layer": s.name, "type": self._owner_types[s.name], "kind": "parameter",
             "trainable": s.param.requires_grad}
            for s in self._param_slots
        ]
        for name in self.hooks.module_order:
            rows.append({
                "layer": name, "type": self.hooks.layer_types[name], "kind": self.hooks.layer_kinds[name],
                "trainable": False,
            })
        frame = pd.DataFrame(rows, columns=["layer", "type", "kind", "trainable"])
        frame["order"] = np.arange(len(frame))
        return frame

    def start(self) -> "Monitor":
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
        for module in self.model.modules():
            _MONITORED[module] = self
        self._was_training = self.model.training
        self._active = True
        if self.optimizer is not None:
            self._optimizer_handles = [
                self.optimizer.register_step_pre_hook(self._before_optimizer_step),
                self.optimizer.register_step_post_hook(self._after_optimizer_step),
            ]
        if self.scaler is not None:
            # the scaler may skip optimizer.step() (Inf/NaN gradients): the step ends when
            # scaler.step() returns, taken or skipped
            self._scaler_had_step = "step" in vars(self.scaler)
            self._scaler_step = self.scaler.step
            self.scaler.step = self._scaled_step
        if self.config.tensorboard is not None and self._reporter is None:
            from gradscope.reporters.tensorboard import TensorBoardReporter

            self._reporter = TensorBoardReporter(self.config.tensorboard)
        if self.is_logged(self._step):
            self._arm_step()
        if self.history.run_dir is not None:
            self._write_meta("running")
        return self

    def stop(self) -> None:
        """Remove every hook, bring the pending copies home and close the run directory.

        Each clean-up runs whatever the others did: a failure in one (a full disk, a broken
        writer) is reported as a warning and the hooks, the scaler, the model's mode and its
        registration are restored all the same; with ``strict=True`` the first failure is raised
        at the end."""
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
                    self._report("(all layers)", what, e)

        attempt("step buffer", self.buffer.discard)  # a step that never reached its optimizer step
        attempt("history", self._drain, True)
        attempt("history", self.history.flush)
        if self.history.run_dir is not None:
            attempt("meta.json", self._write_meta, "complete")
            attempt("findings.json", self._write_findings)
        if self._reporter is not None:
            attempt("tensorboard", self._close_reporter)
        attempt("hooks", self.hooks.detach)
        for handle in self._optimizer_handles:
            attempt("optimizer hooks", handle.remove)
        self._optimizer_handles.clear()
        attempt("scaler", self._restore_scaler)
        self._snapshot = None
        for module in self.model.modules():
            if _MONITORED.get(module) is self:
                del _MONITORED[module]
        attempt("model mode", self.model.train, self._was_training)
        if errors and self.config.strict:
            raise errors[0]

    def _restore_scaler(self) -> None:
        """Undo the ``scaler.step`` patch, exactly: only if it is still ours (a second monitor
        may share the scaler), putting back what was there before."""
        if self._scaler_step is None:
            return
        current = vars(self.scaler).get("step")
        if getattr(current, "__func__", None) is Monitor._scaled_step and current.__self__ is self:
            if self._scaler_had_step:
                self.scaler.step = self._scaler_step
            else:
                del self.scaler.step  # back to the class's method
        self._scaler_step = None

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()

    # -- steps ---------------------------------------------------------------------------------

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self._active and self.is_logged(self._step):
            self._guard("(all parameters)", "grad_norm", self._parameter_statistics, True)

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if not self._active:
            return
        try:
            if self._snapshot is not None:
                self._guard("(all parameters)", "update_ratio", self._update_ratios)
        finally:
            if self.scaler is None:
                self._end_step()

    def _scaled_step(self, optimizer, *args, **kwargs):
        """``scaler.step`` while monitored: the step (taken or skipped) ends when it returns."""
        scale = getattr(self.scaler, "_scale", None)
        try:
            return self._scaler_step(optimizer, *args, **kwargs)
        finally:
            if self._active and optimizer is self.optimizer:
                if self.is_logged(self._step):
                    self._guard("", "amp_skipped", self._record_skip, optimizer)
                self._end_step(scale)

    def _record_skip(self, optimizer) -> None:
        state = self.scaler._per_optimizer_states[id(optimizer)]
        found = [f.reshape(()) for f in state.get("found_inf_per_device", {}).values()]
        entry = self.layout.entry("", "amp_skipped")
        if found:
            self.buffer.add(self.layout.slot(entry, "found_inf"), torch.stack([f.to(found[0].device) for f in found]).sum())
        self.buffer.count(self.layout.slot(entry, PRESENCE))

    def _loss_scale_rescale(self, scale) -> tuple[list[int], torch.Tensor] | None:
        """The backpropagated signal was computed from the scaled loss: divide its squares by the
        scale squared, on the device (parameter gradients are read after unscaling)."""
        if scale is None or not isinstance(scale, torch.Tensor):
            return None
        offsets = [e.slots["sq"][0] for e in self.layout.entries
                   if e.metric == "out_grad_norm" and "sq" in e.slots]
        return offsets, scale.detach().double().reciprocal().square()

    def _rescales(self, scale) -> list[tuple[list[int], torch.Tensor]]:
        """Factors applied on the device before the step's copy: the loss scale out of the
        backpropagated signal, and, across data-parallel ranks, the duplicate copies of replicated
        parameters (each rank holds the whole averaged gradient) and the 1/world of the global
        loss (the mean of the ranks' losses) in the signal."""
        rescales = []
        loss_scaled = self._loss_scale_rescale(scale)
        if self.world_size > 1:
            signal, replicated = self._parallel_offsets()
            w = torch.tensor(float(self.world_size), dtype=torch.float64, device=self.buffer.primary_device)
            if loss_scaled is not None:
                loss_scaled = (loss_scaled[0], loss_scaled[1].to(w) / (w * w))
            else:
                loss_scaled = (signal, 1.0 / (w * w))
            rescales.append((replicated, 1.0 / w))
        if loss_scaled is not None:
            rescales.append(loss_scaled)
        return rescales

    def _parallel_offsets(self) -> tuple[list[int], list[int]]:
        """Slots of the backpropagated signal and of replicated parameters' statistics, cached
        while the layout does not grow."""
        cached = getattr(self, "_offsets_cache", None)
        if cached is not None and cached[0] == self.layout.size:
            return cached[1], cached[2]
        signal = [e.slots["sq"][0] for e in self.layout.entries if e.metric == "out_grad_norm" and "sq" in e.slots]
        replicated = [offset for s in self._param_slots if not s.sharded
                      for offset in (s.grad_sq, s.weight_sq, s.nonfinite)]
        for s in self._param_slots:
            entry = self.layout.find(s.name, "update_ratio")
            if entry is not None and not s.sharded:
                replicated += [entry.slots[c][0] for c in ("delta_sq", "weight_sq") if c in entry.slots]
        self._offsets_cache = (self.layout.size, signal, replicated)
        return signal, replicated

    def _layout_key(self) -> int:
        """A hash of the layout that is the same in every process (not Python's salted hash)."""
        cached = getattr(self, "_layout_key_cache", None)
        if cached is not None and cached[0] == self.layout.size:
            return cached[1]
        text = "|".join(f"{e.layer}/{e.metric}/{sorted(e.slots.items())}" for e in self.layout.entries)
        key = zlib.crc32(text.encode())
        self._layout_key_cache = (self.layout.size, key)
        return key

    def _agree(self, ok: bool) -> None:
        """Every rank, every logged step: gather (size, layout hash, ok) and refuse to sum
        buffers that do not line up slot by slot, or when a rank failed to build its buffer;
        all ranks see the same answer, so none is left waiting in the all-reduce."""
        import torch.distributed as dist

        device = self.buffer.primary_device
        mine = torch.tensor([self.layout.size if ok else -1, self._layout_key() if ok else -1, int(ok)],
                            dtype=torch.long, device=device)
        everyone = [torch.zeros_like(mine) for _ in range(self.world_size)]
        self._agreed_step = self._step
        dist.all_gather(everyone, mine)
        headers = [tuple(t.tolist()) for t in everyone]  # 3 numbers a rank: the one host read
        if len(set(headers)) != 1:
            raise RuntimeError(
                f"the ranks' statistics do not line up (size, layout hash, ok per rank: {headers}); "
                "the step is skipped on every rank. All ranks must run the same modules each step."
            )

    def _all_reduce(self, buffer: torch.Tensor) -> None:
        """Sum the step's buffer over the ranks: one all-reduce per logged step, after the check
        that the buffers line up."""
        import torch.distributed as dist

        self._agree(True)
        dist.all_reduce(buffer)

    def _end_step(self, scale=None) -> None:
        self._snapshot = None
        if self.is_logged(self._step):
            try:
                self._in_flight.append(self.buffer.finish(
                    self._step, self._rescales(scale),
                    reduce=self._all_reduce if self.world_size > 1 else None))
                self._drain(wait=False)
            except Exception as e:  # noqa: BLE001 - the user's loop must go on
                if self.world_size > 1 and getattr(self, "_agreed_step", None) != self._step:
                    # failed before the ranks' check: join it, saying so, so nobody waits
                    self._guard("(all layers)", "step buffer", self._agree, False)
                self._report("(all layers)", "step buffer", e)
                self.buffer.discard()
            if self._histograms:
                self._guard("(all layers)", "histograms", self._write_histograms, self._step)
        self.hooks.end_step()
        self._step += 1
        if self.is_logged(self._step):
            self._arm_step()
        else:
            self.hooks.detach()

    def _histogram_step(self, step: int) -> bool:
        every = self.config.histograms_every
        return every is not None and self._reporter is not None and (step // self.config.every) % every == 0

    def _arm_step(self) -> None:
        """Install the hooks for the coming logged step (and the activation histograms if due)."""
        if self.compiled:
            self._warn_once(
                "(all layers)", "torch.compile",
                "the model is compiled with torch.compile, so only parameter statistics "
                "(grad_norm, grad_nonfinite, weight_norm, update_ratio) are recorded; the module "
                "statistics (out_grad_norm, act_rms, dead_fraction, saturation) need hooks inside "
                "the forward: monitor the uncompiled model (model._orig_mod) to get them.",
            )
            return
        self.hooks.activation_observer = self._observe_activation if self._histogram_step(self._step) else None
        self.hooks.attach()

    def _observe_activation(self, name: str, output: torch.Tensor) -> None:
        from gradscope.stats.histograms import histogram_row

        self._histograms.append((("activation", name), histogram_row(output)))

    def _write_histograms(self, step: int) -> None:
        """One host copy of the step's histogram rows per device (histogram steps only)."""
        rows, self._histograms = self._histograms, []
        by_device: dict[torch.device, list] = {}
        for name, row in rows:
            by_device.setdefault(row.device, []).append((name, row))
        for items in by_device.values():
            host = torch.stack([row for _, row in items]).cpu().numpy()
            self._reporter.log_histograms(step, [name for name, _ in items], host)

    def _drain(self, wait: bool) -> None:
        """Move landed copies (all of them if ``wait``) into the history, oldest first."""
        while self._in_flight and (
            wait or self._in_flight[0].ready() or len(self._in_flight) > _MAX_IN_FLIGHT
        ):
            pending = self._in_flight.popleft()
            ids, values = self.layout.compute(pending.state(), pending.n_entries)
            self.history.append(pending.step, ids, values)
            if self._reporter is not None:
                self._guard("(all layers)", "tensorboard", self._to_tensorboard, pending.step, ids, values)

    def _to_tensorboard(self, step: int, ids: np.ndarray, values: np.ndarray) -> None:
        layers, metrics = self._names()
        self._reporter.log(step, layers[ids], metrics[ids], values)
        if self.history.steps_logged % self.config.findings_every == 1 or self.config.findings_every == 1:
            self._reporter.log_findings(self._recent_findings(), step)

    def _recent_findings(self) -> list:
        """The rules over the last logged steps held in RAM (cheap enough to run while training)."""
        from gradscope.report import build_report

        recent = self.history.recent()
        steps = sorted(recent["step"].unique())[-20:]
        recent = recent[recent["step"].isin(steps)]
        return build_report(recent, self.layers, None, self._model_summary(), {}).findings

    def _close_reporter(self) -> None:
        reporter, self._reporter = self._reporter, None
        try:
            if self.history.steps_logged and self.history.last_step is not None:
                reporter.log_findings(self.findings(), self.history.last_step)
        finally:
            reporter.close()

    # -- parameter statistics ------------------------------------------------------------------

    def _slots_for(self, name: str, param: nn.Parameter) -> _ParamSlots:
        def slot(metric: str, component: str) -> int:
            return self.layout.slot(self.layout.entry(name, metric), component)

        return _ParamSlots(
            name, param, _is_dtensor(param),
            slot("grad_norm", "sq"), slot("grad_norm", PRESENCE),
            slot("weight_norm", "sq"), slot("weight_norm", PRESENCE),
            slot("grad_nonfinite", "count"), slot("grad_nonfinite", PRESENCE),
        )

    def _parameter_statistics(self, keep_weights: bool) -> None:
        """Gradient, weight and NaN/Inf statistics of every parameter that has a gradient, with
        foreach kernels per (device, dtype) group; optionally a copy of the weights for the
        update ratio, held only until the optimizer step returns."""
        slots = [s for s in self._param_slots if s.param.grad is not None]
        if not slots:
            self._warn_once(
                "(all parameters)", "no gradients",
                "no parameter had a gradient at the end of the step, so grad_norm, weight_norm "
                "and grad_nonfinite were not recorded; call mon.step() before optimizer.step() "
                "and optimizer.zero_grad().",
            )
            return
        grads = [_local(s.param.grad) for s in slots]
        with_weights = self.weights_logged(self._step)
        self._snapshot = [] if keep_weights and with_weights and self._updated else None
        for positions in group_by_device_and_dtype(grads).values():
            group = [slots[i] for i in positions]
            group_grads = [grads[i] for i in positions]
            grad_norms = foreach_norms(group_grads)
            counts = _nonfinite_counts(group_grads, grad_norms)
            for weights in _same_dtype_runs(group) if with_weights else ():
                weight_norms = foreach_norms([_local(s.param.detach()) for s in weights])
                self.buffer.add_many(tuple(s.weight_sq for s in weights), torch.stack(weight_norms), square=True)
                self.buffer.counts(tuple(s.weight_n for s in weights))
                if self._snapshot is not None:
                    updated = [(s, n) for s, n in zip(weights, weight_norms) if id(s.param) in self._updated]
                    if updated:
                        self._snapshot.append((updated, snapshot([_local(s.param) for s, _ in updated])))
            if self._histogram_step(self._step):
                from gradscope.stats.histograms import histogram_row

                self._histograms.extend((("grad", s.name), histogram_row(_local(s.param.grad))) for s in group)
            # one partial per group, not one per parameter: big models allocate far fewer objects
            self.buffer.add_many(tuple(s.grad_sq for s in group), torch.stack(grad_norms), square=True)
            self.buffer.counts(tuple(s.grad_n for s in group))
            self.buffer.counts(tuple(s.nonfinite_n for s in group))
            for s, count in zip(group, counts):
                if count is not None:
                    self.buffer.add(s.nonfinite, count)

    def _update_ratios(self) -> None:
        for updated, before in self._snapshot:
            deltas = foreach_delta_norms(before, [_local(s.param.detach()).reshape(-1) for s, _ in updated])
            for (s, weight_norm), delta in zip(updated, deltas):
                entry = self.layout.entry(s.name, "update_ratio")
                self.buffer.add(self.layout.slot(entry, "delta_sq"), delta, square=True)
                self.buffer.add(self.layout.slot(entry, "weight_sq"), weight_norm, square=True)
                self.buffer.count(self.layout.slot(entry, PRESENCE))
        self._snapshot = None

    # -- errors inside gradscope never stop training -------------------------------------------

    def _guard(self, layer: str, statistic: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - reported, then the statistic is skipped
            if self.config.strict:
                raise
            self._report(layer, statistic, e)

    def _report(self, layer: str, statistic: str, error: Exception) -> None:
        self._warn_once(
            layer, statistic,
            f"computing {statistic} for layer {layer!r} failed ({type(error).__name__}: {error}); "
            "the statistic is skipped and training goes on. Pass strict=True to raise instead.",
        )

    def _warn_once(self, layer: str, what: str, message: str) -> None:
        if (layer, what) not in self._warned:
            self._warned.add((layer, what))
            warnings.warn(f"gradscope: {message}", GradscopeWarning, stacklevel=3)

    # -- naming and metadata -------------------------------------------------------------------

    def _names(self) -> tuple[np.ndarray, np.ndarray]:
        entries = self.layout.entries
        return (
            np.array([e.layer for e in entries], dtype=object),
            np.array([e.metric for e in entries], dtype=object),
        )

    def _model_summary(self) -> dict:
        return {
            "class": type(self.model).__name__,
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
        }

    def _write_findings(self) -> None:
        write_findings(Path(self.history.run_dir), [f.to_dict() for f in self.findings()])

    def _write_meta(self, status: str) -> None:
        write_meta(Path(self.history.run_dir), {
            "status": status,
            "every": self.config.every,
            "model": self._model_summary(),
            "metrics": {name: {"scope": s.scope, "doc": s.doc} for name, s in STATISTICS.items()},
            "layers": self.layers.to_dict(orient="records"),
            "steps_logged": self.history.steps_logged,
            "last_step": self.history.last_step,
        })


def _nonfinite_counts(grads: list[torch.Tensor], norms: list[torch.Tensor]) -> list:
    """NaN/Inf counts per gradient; None stands for a count of 0.

    On the CPU reading a value is not a device synchronisation, so the norms (already computed)
    tell which gradients can hold a NaN or Inf, and only those are counted: a finite norm means
    every element is finite. On a GPU one foreach kernel counts the whole group on the device.
    """
    if grads[0].device.type != "cpu":
        return foreach_nonfinite_counts(grads)
    finite = torch.isfinite(torch.stack(norms)).tolist()
    suspects = [g for g, ok in zip(grads, finite) if not ok]
    counted = iter(foreach_nonfinite_counts(suspects) if suspects else ())
    return [None if ok else next(counted) for ok in finite]


def _same_dtype_runs(group: list[_ParamSlots]) -> list[list[_ParamSlots]]:
    """Split a gradient group by the weights' dtype (normally one run: weights match gradients)."""
    runs: dict[tuple, list[_ParamSlots]] = {}
    for s in group:
        runs.setdefault((s.param.device, s.param.dtype), []).append(s)
    return list(runs.values())


def _is_dtensor(t: torch.Tensor) -> bool:
    """A sharded parameter (FSDP2's DTensor): its local shard is what this rank reduces."""
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if _is_dtensor(t) else t


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _is_compiled(model: nn.Module) -> bool:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # a torch without dynamo
        return False
    return isinstance(model, OptimizedModule)


def _check_scaler(scaler: object, optimizer: torch.optim.Optimizer | None) -> object:
    if scaler is None:
        return None
    if not all(hasattr(scaler, name) for name in ("step", "update", "scale", "_per_optimizer_states")):
        raise UsageTypeError(
            f"Expected `scaler` to be a torch.amp.GradScaler but got {type(scaler).__name__}."
        )
    if optimizer is None:
        raise UsageError(
            "scaler= needs optimizer= as well: the monitor reads the gradients once the scaler has "
            "unscaled them, at the optimizer's step; pass the optimizer you give to scaler.step()."
        )
    return scaler


def _check_optimizer(optimizer: object, model: nn.Module) -> torch.optim.Optimizer | None:
    if optimizer is None:
        return None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageTypeError(
            f"Expected `optimizer` to be a torch.optim.Optimizer but got {type(optimizer).__name__}; "
            "pass the optimizer that steps this model, or leave it out and call mon.step()."
        )
    model_params = {id(p) for p in model.parameters()}
    owned = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(id(p) in model_params for p in owned):
        raise UsageError(
            f"The optimizer ({type(optimizer).__name__}, {len(owned)} parameters) owns none of the "
            "model's parameters; pass the optimizer built from this model's parameters()."
        )
    return optimizer


def monitor(
    model: nn.Module,
    every: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    **options,
) -> Monitor:
    """Watch ``model``'s gradient flow, logging every ``every``-th optimizer step.

    Options: ``functional`` (capture ``F.relu``-style activations, default True), ``log_dir``
    (stream the history to a run directory), ``window``, ``flush_every``, ``strict``,
    ``weights_every`` (record ``weight_norm``/``update_ratio`` every this many steps, default 10),
    ``scaler`` (a ``torch.amp.GradScaler``: statistics unscaled, skipped steps recorded),
    ``tensorboard`` (a log directory or a ``SummaryWriter``), ``histograms_every``,
    ``findings_every``.

    >>> import torch, torch.nn as nn, gradscope
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with gradscope.monitor(model, every=1, optimizer=opt) as mon:
    ...     for _ in range(3):
    ...         model(torch.randn(16, 4)).pow(2).mean().backward()
    ...         opt.step()
    ...         opt.zero_grad()
    >>> df = mon.to_dataframe()
    >>> sorted(df.step.unique().tolist())
    [0, 1, 2]
    >>> sorted(df.metric.unique())  # doctest: +NORMALIZE_WHITESPACE
    ['act_rms', 'grad_nonfinite', 'grad_norm', 'out_grad_norm', 'saturation', 'update_ratio',
     'weight_norm']
    """
    return Monitor(model, every, optimizer, **options)
