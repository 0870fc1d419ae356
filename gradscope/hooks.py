"""The hook manager: forward and backward hooks that turn a model's activations and gradients into
device-side partial statistics in the step buffer.

Per module, a forward pre-hook pushes a frame on a module stack and a forward hook (``always_call``)
pops it and reduces the output: ``act_rms``, dead units or saturation for activation modules, and a
tensor hook on each output that reduces the incoming gradient (``out_grad_norm``). While the root
module's forward runs, a ``TorchFunctionMode`` sees activation functions called inside forwards
(``F.relu``, ``torch.tanh``, ``x.sigmoid()`` …) and attributes them to the module on top of the
stack. Hooks are only installed for logged steps; every reduction stays on the device.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from torch._C._functorch import peek_interpreter_stack
from torch.overrides import TorchFunctionMode

from gradscope.buffer import Layout, StepBuffer
from gradscope.errors import UsageTypeError
from gradscope.layers import (
    FUNCTIONAL_ACTIVATIONS,
    ActivationKind,
    activation_family,
    functional_layer_name,
    functional_type,
    module_activation,
)
from gradscope.stats import FLAT, NUMEL, PRESENCE, SQ, site_components
from gradscope.stats.reductions import flat_count, floating_tensors, sum_of_squares_partial, unit_dim, unit_maxima

OFF, GRAD_ONLY, FULL = 0, 1, 2
"""Frame modes: record nothing (eval, no-grad); only gradients (a checkpoint's recomputation
inside backward, whose forward statistics were taken in the original forward); everything."""

Guard = Callable[..., None]


@dataclass
class _Frame:
    module: nn.Module
    name: str
    mode: int
    producer: str | None = None
    function_calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class _Reduced:
    """A tensor already reduced in this forward, so containers that return their last child's
    output reuse the result. Valid while the tensor is alive and not modified in place."""

    ref: weakref.ref
    version: int
    sum_sq: tuple[torch.Tensor | float, bool] | None = None
    """Its sum of squares as the step buffer takes it (gradscope.stats.reductions.sum_of_squares_partial)."""
    grad_targets: list[tuple[int, int]] | None = None


class ActivationCapture(TorchFunctionMode):
    """Sees tracked activation functions called while the root module's forward runs."""

    def __init__(self, on_call: Callable) -> None:
        super().__init__()
        self._on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind_of = FUNCTIONAL_ACTIVATIONS.get(func)
        if kind_of is None:
            return func(*args, **kwargs)
        x = args[0] if args else kwargs.get("input")
        producer = _producer(x)
        out = func(*args, **kwargs)
        self._on_call(kind_of(*args, **kwargs), out, producer)
        return out


def _producer(x: object) -> str | None:
    """Name of the autograd node that made ``x`` (read before an in-place op replaces it)."""
    if isinstance(x, torch.Tensor) and x.dim() == 3 and x.grad_fn is not None:
        return type(x.grad_fn).__name__
    return None


def refuse_scripted(model: nn.Module, doing: str) -> None:
    """Raise a usage error for a TorchScript model (``torch.jit.script``/``trace``), which takes no
    Python hooks; ``doing`` names what needs them (``"gradscope.monitor"``)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UsageTypeError(
            f"Expected an eager torch.nn.Module but got a TorchScript module ({type(model).__name__}); "
            f"{doing} needs Python hooks on the model's modules, which TorchScript does not run. Pass "
            "the nn.Module it was scripted or traced from."
        )


class InertHook:
    """What a copy of a watched model holds in place of gradscope's hooks: at its module's first
    forward it removes itself (as the hook's handle would), so the copy is left as if never
    watched; until then it does nothing."""

    def __call__(self, module: object = None, *args, **kwargs) -> None:
        if isinstance(module, nn.Module):
            for table in ("_forward_pre_hooks", "_forward_hooks"):
                hooks = getattr(module, table, {})
                for key in [k for k, hook in hooks.items() if hook is self]:
                    del hooks[key]  # the module iterates over a copy of its hooks: safe here
                    for flags in ("_forward_hooks_always_called", "_forward_hooks_with_kwargs",
                                  "_forward_pre_hooks_with_kwargs"):
                        getattr(module, flags, {}).pop(key, None)
        return None


class WeakHook:
    """A module hook that calls ``owner.<method>`` while ``owner`` lives, holding it weakly. A copy
    of the model made while it is watched (``copy.deepcopy`` for an EMA or teacher model,
    ``torch.save(model)`` for a checkpoint) gets an :class:`InertHook` in its place, not a copy
    of the owner, which would record the copy's forwards into memory nobody reads (and cannot be
    pickled)."""

    __slots__ = ("_owner", "_method")

    def __init__(self, owner: object, method: str) -> None:
        self._owner = weakref.ref(owner)
        self._method = method

    def __call__(self, *args):
        owner = self._owner()
        if owner is not None:
            return getattr(owner, self._method)(*args)
        return None

    def __deepcopy__(self, memo) -> InertHook:
        return InertHook()

    def __reduce__(self):
        return InertHook, ()


class HookManager:
    """Installs and removes the statistic hooks of one model.

    >>> import torch, torch.nn as nn
    >>> from gradscope.buffer import Layout, StepBuffer
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    >>> layout = Layout()
    >>> hooks = HookManager(model, layout, StepBuffer(layout, torch.device("cpu")),
    ...                     guard=lambda layer, stat, fn, *a: fn(*a))
    >>> hooks.attach(); _ = model(torch.randn(2, 3, requires_grad=True)); hooks.detach()
    >>> hooks.module_order
    ['0', '1', '']
    """

    def __init__(
        self,
        model: nn.Module,
        layout: Layout,
        buffer: StepBuffer,
        guard: Guard,
        functional: bool = True,
    ) -> None:
        self.model = model
        self.layout = layout
        self.buffer = buffer
        self._guard = guard
        self._names = {m: name for name, m in model.named_modules()}
        self._kinds = {m: module_activation(m) for m in self._names}
        self._activation_modules = {m for m in self._names if activation_family(m) is not None}
        self._capture = ActivationCapture(self._on_functional) if functional else None
        self._functional_checked = False
        self._functional_seen = False
        self._handles: list = []
        self._pre_hook, self._post_hook = WeakHook(self, "_pre"), WeakHook(self, "_post")
        self._stack: list[_Frame] = []
        self._root_depth = 0
        self._root_mode = OFF
        self._capturing = False
        self._site_counts: dict[str, int] = defaultdict(int)
        self._reduced: dict[int, _Reduced] = {}
        self._slots: dict[tuple[str, str, str], int] = {}
        self._site_slots: dict[tuple[str, int, int], tuple[int, int, int]] = {}
        self.token = 0
        """Changes at every step end; a gradient hook from an earlier step then does nothing."""
        self.module_order: list[str] = []
        """Module and functional-activation names in the order their forwards first ran."""
        self._ordered: set[str] = set()
        self.layer_types: dict[str, str] = {}
        self.layer_kinds: dict[str, str] = {}
        """"module", or "activation" for activation modules and functional activations."""
        self.paused = 0
        """While positive, forwards are not recorded (``Recorder.paused`` blocks, nested)."""
        self.activation_observer: Callable[[str, torch.Tensor], None] | None = None
        """Called with (layer, output) for each activation output of a recorded forward (the
        monitor sets it on TensorBoard histogram steps)."""

    # -- installing ----------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self._handles:
            return
        for module in self._names:
            if isinstance(module, torch.jit.ScriptModule):
                continue  # scripted modules take no Python hooks
            self._handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook, always_call=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stop_capture()
        self._stack.clear()
        self._root_depth = 0

    def watches(self, module: nn.Module) -> bool:
        return module in self._names

    def name_of(self, module: object) -> str | None:
        """The name of a watched module, None for any other object."""
        return self._names.get(module) if isinstance(module, nn.Module) else None

    def sync_modules(self) -> None:
        """Follow the model's modules as they are now: modules added or replaced since the hooks
        were made get hooks at the next attach (call it while detached)."""
        kinds, old = self._kinds, self._names
        self._names = {m: name for name, m in self.model.named_modules()}
        self._kinds = {m: kinds[m] if m in kinds else module_activation(m) for m in self._names}
        for module, name in self._names.items():
            if module not in old:  # new or replaced: its type is read again when it next runs
                self.layer_types.pop(name, None)
                self.layer_kinds.pop(name, None)

    def end_step(self) -> None:
        """Forget per-step state; gradient hooks still pending from this step become no-ops."""
        self.token += 1
        self._site_counts.clear()
        self._reduced.clear()

    # -- forward hooks -------------------------------------------------------------------------

    def _mode(self, module: nn.Module) -> int:
        if self.paused:
            return OFF
        if peek_interpreter_stack() is not None:
            # inside a torch.func transform (per-sample gradients with vmap(grad(...)) over
            # functional_call): its tensors are wrapped per level and are not this step's batch;
            # the gradients the loop then sets are recorded at the step as usual
            return OFF
        if torch._C._current_graph_task_id() != -1:
            return GRAD_ONLY  # inside backward: a checkpoint recomputing its forward
        if self._root_depth > 0:
            return self._root_mode
        return FULL if self.model.training and torch.is_grad_enabled() else OFF

    def _pre(self, module: nn.Module, args: tuple) -> None:
        frame = _Frame(module, self._names[module], OFF)
        self._stack.append(frame)
        self._guard(frame.name, "forward pre-hook", self._enter, frame, args)

    def _enter(self, frame: _Frame, args: tuple) -> None:
        module = frame.module
        frame.mode = self._mode(module)
        if frame.mode == FULL and self._kinds[module] is not None and args:
            frame.producer = _producer(args[0])
        if module is self.model:
            self._root_depth += 1
            if self._root_depth == 1:
                self._root_mode = frame.mode
                self._site_counts.clear()
                if frame.mode == FULL:
                    self._start_capture()

    def _post(self, module: nn.Module, args: tuple, output: object) -> None:
        frame = self._pop(module)
        try:
            if frame is not None and frame.mode != OFF and output is not None:
                self._guard(frame.name, "forward hook", self._record_module, frame, output)
        finally:
            if module is self.model:
                self._root_depth = max(0, self._root_depth - 1)
                if self._root_depth == 0:
                    self._stop_capture()
                    if frame is not None and frame.mode == FULL and not self._functional_checked:
                        # a model whose first recorded forward calls no activation function pays
                        # nothing for the TorchFunctionMode afterwards (it sees every torch call)
                        self._functional_checked = True
                        if not self._functional_seen:
                            self._capture = None

    def _pop(self, module: nn.Module) -> _Frame | None:
        # frames above ours belong to forwards that raised before their hook could run
        if not any(f.module is module for f in self._stack):
            return None
        while self._stack:
            frame = self._stack.pop()
            if frame.module is module:
                return frame
        return None

    def _start_capture(self) -> None:
        if self._capture is not None and not self._capturing:
            self._capture.__enter__()
            self._capturing = True

    def _stop_capture(self) -> None:
        if self._capturing:
            self._capturing = False
            self._capture.__exit__(None, None, None)

    # -- statistics ----------------------------------------------------------------------------

    def _slot(self, layer: str, metric: str, component: str) -> int:
        key = (layer, metric, component)
        offset = self._slots.get(key)
        if offset is None:
            offset = self.layout.slot(self.layout.entry(layer, metric), component)
            self._slots[key] = offset
        return offset

    def _seen(self, layer: str, type_name: str, kind: str) -> None:
        if layer not in self.layer_types:
            self.layer_types[layer] = type_name
            self.layer_kinds[layer] = kind
            if layer not in self._ordered:  # a replaced module keeps its place
                self._ordered.add(layer)
                self.module_order.append(layer)

    def _record_module(self, frame: _Frame, output: object) -> None:
        tensors = list(floating_tensors(output))
        if not tensors:
            return
        name = frame.name
        if frame.mode == FULL:
            kind = self._kinds[frame.module]
            self._seen(name, type(frame.module).__name__, "module" if kind is None else "activation")
            # every reduction works on detached tensors, so no autograd context is needed
            self._guard(name, "act_rms", self._act_rms, name, tensors)
            if kind is not None:
                site = self._site_counts[name]
                self._site_counts[name] += 1
                self._activation(name, kind, tensors[0], frame.producer, site)
        self._guard(name, "out_grad_norm", self._hook_gradients, name, tensors)

    def _on_functional(self, kind: ActivationKind, out: object, producer: str | None) -> None:
        frame = self._stack[-1] if self._stack else None
        if frame is None or frame.mode != FULL or frame.module in self._activation_modules:
            return  # outside a recorded forward, or an activation module's own call (the tanh of a GELU)
        self._functional_seen = True
        index = frame.function_calls[kind.name]
        frame.function_calls[kind.name] += 1
        name = functional_layer_name(frame.name, kind.name, index)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return
        self._seen(name, functional_type(kind.name), "activation")
        site = self._site_counts[name]
        self._site_counts[name] += 1
        self._activation(name, kind, out, producer, site)

    def _act_rms(self, name: str, tensors: list[torch.Tensor]) -> None:
        tensors = [t for t in tensors if t.numel()]  # an empty batch has no RMS, not a NaN one
        if not tensors:
            return
        sq, numel = self._slot(name, "act_rms", SQ), self._slot(name, "act_rms", NUMEL)
        for t in tensors:
            value, square = self._sum_sq(t)
            self.buffer.add(sq, value, square=square)
            self.buffer.count(numel, t.numel())
        self.buffer.count(self._slot(name, "act_rms", PRESENCE))

    def _reduced_record(self, t: torch.Tensor) -> _Reduced:
        """This forward's record of ``t``, new if ``t`` is new or was modified in place."""
        seen = self._reduced.get(id(t))
        if seen is None or seen.ref() is not t or seen.version != t._version:
            seen = _Reduced(weakref.ref(t), t._version)
            self._reduced[id(t)] = seen
        return seen

    def _sum_sq(self, t: torch.Tensor) -> tuple[torch.Tensor | float, bool]:
        seen = self._reduced_record(t)
        if seen.sum_sq is None:
            seen.sum_sq = sum_of_squares_partial(t)
        return seen.sum_sq

    def _activation(
        self, name: str, kind: ActivationKind, t: torch.Tensor, producer: str | None, site: int
    ) -> None:
        if t.numel() == 0:
            return  # an empty batch: no unit fired or saturated, nothing to judge
        if self.activation_observer is not None:
            self._guard(name, "activation histogram", self.activation_observer, name, t)
        if kind.dead_units:
            self._guard(name, "dead_fraction", self._dead_units, name, t, producer, site)
        else:
            self._guard(name, "saturation", self._saturation, name, kind, t)

    def _dead_units(self, name: str, t: torch.Tensor, producer: str | None, site: int) -> None:
        maxima = unit_maxima(t, unit_dim(t, producer))  # whether each fired: taken at the step end
        key = (name, site, maxima.numel())
        slots = self._site_slots.get(key)
        if slots is None:
            entry = self.layout.entry(name, "dead_fraction")
            alive_name, calls_name = site_components(site, maxima.numel())
            slots = (self.layout.slot(entry, alive_name, maxima.numel()), self.layout.slot(entry, calls_name),
                     self._slot(name, "dead_fraction", PRESENCE))
            self._site_slots[key] = slots
        self.buffer.add_positive(slots[0], maxima)
        self.buffer.count(slots[1])
        self.buffer.count(slots[2])

    def _saturation(self, name: str, kind: ActivationKind, t: torch.Tensor) -> None:
        self.buffer.add(self._slot(name, "saturation", FLAT), flat_count(t, kind.bounds))
        self.buffer.count(self._slot(name, "saturation", NUMEL), t.numel())
        self.buffer.count(self._slot(name, "saturation", PRESENCE))

    # -- backward: the gradient arriving at each output ----------------------------------------

    def _hook_gradients(self, name: str, tensors: list[torch.Tensor]) -> None:
        target = (self._slot(name, "out_grad_norm", SQ), self._slot(name, "out_grad_norm", PRESENCE))
        for t in tensors:
            if not t.requires_grad:
                continue
            seen = self._reduced_record(t)
            if seen.grad_targets is None:
                seen.grad_targets = [target]
                t.register_hook(self._gradient_hook(name, seen.grad_targets))
            elif target not in seen.grad_targets:
                seen.grad_targets.append(target)

    def _gradient_hook(self, name: str, targets: list[tuple[int, int]]) -> Callable:
        token = self.token

        def reduce_gradient(grad: torch.Tensor) -> None:
            if token != self.token:
                return
            self._guard(name, "out_grad_norm", self._add_gradient, grad, targets)

        return reduce_gradient

    def _add_gradient(self, grad: torch.Tensor, targets: list[tuple[int, int]]) -> None:
        value, square = sum_of_squares_partial(grad)
        for sq, presence in targets:
            self.buffer.add(sq, value, square=square)
            self.buffer.count(presence)
