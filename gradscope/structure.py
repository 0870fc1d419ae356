"""What the rules need to know about a model beyond its statistics: the weight layers in forward
order with their init scale, the weights they share with other modules and the activation that
follows them, normalisation layers, the batch size, and two facts read off the autograd graph of
one forward pass: the *effective depth* (weight layers on the shortest path from the loss to the
input-side layer, which skip connections shorten) and LayerNorms applied to the residual stream
after each sum (post-LN).

A :class:`StructureProbe` watches one forward with its own hooks (removed on exit) and then walks
``loss.grad_fn``; nothing is read from the device except the weights' init statistics.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from gradscope.hooks import ActivationCapture
from gradscope.layers import (
    BATCH_NORMS, NORMS, SIGMOID, TANH, ActivationKind, activation_family, family_of_type,
    functional_layer_name, functional_type, is_norm_type, is_weight_layer, parameter_owner, weight_fans,
    weight_spans,
)


@dataclass(frozen=True)
class WeightLayer:
    name: str
    type: str
    fan_in: int
    fan_out: int
    gain: float
    """std(weight) * sqrt(fan_in) when the structure was taken: 0.58 is PyTorch's default init,
    1.41 He, about 1 Xavier, sqrt(fan_in) N(0, 1)."""
    activation: str | None
    """Family of the activation that follows before the next weight layer: "relu", "tanh",
    "sigmoid", or None."""
    normalized: bool
    """A normalisation layer runs between this layer and its activation."""
    activation_layer: str | None = None
    """The activation that follows, as a layer name (a module, or a functional call such as
    ``"block:relu#0"``)."""
    activation_type: str | None = None
    """Its type: ``"GELU"``, ``"NewGELUActivation"``, ``"functional relu"``."""
    default_init: bool = False
    """The weights look drawn from PyTorch's default Linear/Conv init, uniform on
    ±1/sqrt(fan_in) (``kaiming_uniform_(a=sqrt(5))``)."""
    tied_to: list[str] = field(default_factory=list)
    """Other modules that hold this very weight tensor (a language model's output layer tied to
    its input embedding)."""


@dataclass(frozen=True)
class ModelStructure:
    model_class: str
    parameters: int
    batch_size: int | None
    weight_layers: list[WeightLayer]
    batch_norms: list[str]
    bounded_activations: list[str]
    """Tanh/sigmoid-family activation layers (modules and functional calls) in forward order."""
    effective_depth: int | None = None
    post_ln: list[str] = field(default_factory=list)
    norm_layers: list[str] = field(default_factory=list)
    """Every normalisation layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm …) in forward order."""

    @property
    def normalized(self) -> bool:
        """The model has a normalisation layer."""
        return bool(self.norm_layers) or any(w.normalized for w in self.weight_layers)

    @property
    def skips(self) -> bool:
        """Skip connections shorten the gradient's path to under half the weight layers."""
        return self.effective_depth is not None and 2 * self.effective_depth < len(self.weight_layers)

    def to_dict(self) -> dict:
        return asdict(self)


class StructureProbe:
    """Records the forward order and which module made each autograd node during one forward;
    with ``functional=True`` also the activation functions called inside forwards (``F.relu``,
    ``torch.tanh`` …), named as a monitor names them.

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> with StructureProbe(model) as probe:
    ...     loss = model(torch.randn(8, 4)).sum()
    >>> s = probe.structure(loss, batch_size=8)
    >>> [(w.name, w.activation) for w in s.weight_layers], s.effective_depth
    ([('0', 'relu'), ('2', None)], 2)
    """

    def __init__(self, model: nn.Module, functional: bool = False) -> None:
        self.model = model
        self._names = {m: name for name, m in model.named_modules()}
        self._handles: list = []
        self.order: list[str] = []
        self.calls: list[str] = []
        """Every module call in the order its forward ended, repeats included (a shared activation
        module runs after each of several layers, but is in ``order`` once)."""
        self.last_entered: str | None = None
        """The module whose forward began last (named when the model raises)."""
        self._node_owner: dict[object, str] = {}
        self._capture = ActivationCapture(self._on_functional) if functional else None
        self._running: list[tuple[nn.Module, dict[str, int]]] = []
        """The modules whose forward runs, innermost last, each with its activation calls so far."""
        self._functional_types: dict[str, str] = {}

    def __enter__(self) -> "StructureProbe":
        for module in self._names:
            if isinstance(module, torch.jit.ScriptModule):
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._post))
        if self._capture is not None:
            self._capture.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._capture is not None:
            self._capture.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre(self, module: nn.Module, args: tuple) -> None:
        self.last_entered = self._names[module]
        self._running.append((module, defaultdict(int)))

    def _post(self, module: nn.Module, args: tuple, output: object) -> None:
        running = [m for m, _ in self._running]
        if module in running:  # frames above it raised before their hook ran
            del self._running[running.index(module):]
        name = self._names[module]
        self.calls.append(name)
        if name not in self.order:
            self.order.append(name)
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            self._node_owner.setdefault(output.grad_fn, name)

    def _on_functional(self, kind: ActivationKind, out: object, producer: str | None) -> None:
        if not self._running or activation_family(self._running[-1][0]) is not None:
            return  # outside the model's forward, or an activation module's own call
        module, calls = self._running[-1]
        name = functional_layer_name(self._names[module], kind.name, calls[kind.name])
        calls[kind.name] += 1
        if name not in self._functional_types:
            self._functional_types[name] = functional_type(kind.name)
            self.order.append(name)

    def structure(
        self,
        loss: torch.Tensor | None,
        batch_size: int | None,
        layer_types: dict[str, str] | None = None,
        forward_order: list[str] | None = None,
    ) -> ModelStructure:
        """The structure of the watched forward; ``forward_order`` and ``layer_types`` (the
        monitor's, which include functional activations) refine the activation that follows each
        weight layer."""
        modules = dict(self.model.named_modules())
        order = forward_order or self.order
        types = {**self._functional_types, **(layer_types or {})}

        def type_of(name: str) -> str:
            module = modules.get(name)
            return type(module).__name__ if module is not None else types.get(name, "")

        def family(name: str) -> str | None:
            module = modules.get(name)
            return activation_family(module) if module is not None else family_of_type(types.get(name, ""))

        is_weight = lambda n: is_weight_layer(modules.get(n))  # noqa: E731
        spans = weight_spans(order, is_weight, family)
        # a layer followed by a shared activation module (one nn.ReLU called after every layer)
        # has it only in the call sequence: the first-seen order lists the module once
        in_calls = {}
        for span in weight_spans(self.calls, is_weight, family):
            in_calls.setdefault(span.weight, span)
        spans = [in_calls[s.weight] if s.activation is None and s.weight in in_calls
                 and in_calls[s.weight].activation is not None else s for s in spans]
        holders = _weight_holders(self.model)
        layers = []
        for span in spans:
            module, after = modules[span.weight], span.activation
            layers.append(_weight_layer(
                module, span.weight, normalized=any(isinstance(modules.get(n), NORMS) or is_norm_type(type_of(n))
                                                    for n in span.between),
                activation_layer=after, activation_type=type_of(after) if after is not None else None,
                activation=family(after) if after is not None else None,
                tied_to=_tied_to(module, holders)))
        graph = _GraphFacts(loss.grad_fn if loss is not None else None, self._node_owner)
        return ModelStructure(
            model_class=type(self.model).__name__,
            parameters=int(sum(p.numel() for p in self.model.parameters())),
            batch_size=batch_size,
            weight_layers=layers,
            batch_norms=[n for n in order if isinstance(modules.get(n), BATCH_NORMS)],
            bounded_activations=[n for n in order if family(n) in (TANH, SIGMOID)],
            effective_depth=graph.effective_depth,
            post_ln=graph.post_ln,
            norm_layers=[n for n in order if isinstance(modules.get(n), NORMS) or is_norm_type(
                type(modules[n]).__name__ if n in modules else types.get(n, ""))],
        )


def _weight_layer(module: nn.Module, name: str, **facts) -> WeightLayer:
    fan_in, fan_out = weight_fans(module)
    return WeightLayer(
        name=name, type=type(module).__name__, fan_in=fan_in, fan_out=fan_out,
        gain=init_gain(module), default_init=is_default_init(module.weight, fan_in), **facts,
    )


def _weight_holders(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """Each parameter (by identity) and the modules that hold it, under every name it has."""
    holders: dict[int, list[tuple[str, nn.Module]]] = defaultdict(list)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owner = parameter_owner(name)
        holders[id(parameter)].append((owner, model.get_submodule(owner)))
    return holders


def _tied_to(module: nn.Module, holders: dict[int, list[tuple[str, nn.Module]]]) -> list[str]:
    """The other modules that hold ``module``'s weight, each by the first of its names."""
    others: dict[nn.Module, str] = {}
    for name, holder in holders[id(module.weight)]:
        if holder is not module:
            others.setdefault(holder, name)
    return list(others.values())


def init_gain(layer: nn.Module) -> float:
    """std(weight) * sqrt(fan_in): about 0.58 for PyTorch's default Linear/Conv init, 1.41 for He
    (ReLU), 1 for Xavier on a square layer, sqrt(fan_in) for N(0, 1) weights."""
    return float(layer.weight.detach().double().std()) * math.sqrt(weight_fans(layer)[0])


def is_default_init(weight: torch.Tensor, fan_in: int | None = None) -> bool:
    """Whether ``weight`` looks drawn from PyTorch's default Linear/Conv init,
    ``kaiming_uniform_(a=sqrt(5))``: uniform on ±b with b = 1/sqrt(fan_in) (``fan_in`` if given,
    else read from the weight's shape as torch's layers hold it). Every weight lies
    within b, the largest in magnitude comes close to it, and the std is b/sqrt(3).

    >>> is_default_init(nn.Linear(64, 32).weight)
    True
    >>> is_default_init(torch.randn(32, 64) / math.sqrt(3 * 64))  # the same std, but normal
    False
    """
    w = weight.detach().double().flatten()
    n = w.numel()
    if n < 2:
        return False
    bound = 1.0 / math.sqrt(fan_in or (weight[0].numel() if weight.dim() > 1 else n))
    rounding = 2 * torch.finfo(weight.dtype).eps if weight.is_floating_point() else 0.0
    largest, std = (float(v) for v in torch.stack([w.abs().max(), w.std()]))
    # n uniform draws all stay below b(1 - 10/n) in magnitude with probability about e^-10; the
    # std of n draws strays from b/sqrt(3) by 0.45/sqrt(n) (relative standard error)
    near_bound = largest >= bound * (1 - min(0.5, 10 / n))
    uniform_std = abs(std * math.sqrt(3) / bound - 1) <= 0.05 + 2.5 / math.sqrt(n)
    return largest <= bound * (1 + rounding) and near_bound and uniform_std


class _GraphFacts:
    """Effective depth and post-LN norms, from one walk over the autograd graph."""

    def __init__(self, root: object, owner: dict[object, str]) -> None:
        self.effective_depth: int | None = None
        self.post_ln: list[str] = []
        if root is None:
            return
        weighted, consumers, children = self._walk(root)
        # 0-1 breadth-first search: a weighted node (one that consumes a 2-D+ leaf parameter,
        # i.e. a Linear/Conv/LSTM weight) costs one, everything else is free
        depth = {root: int(root in weighted)}
        queue = deque([root])
        while queue:
            node = queue.popleft()
            for child in children.get(node, ()):
                d = depth[node] + int(child in weighted)
                if d < depth.get(child, 1 << 30):
                    depth[child] = d
                    if child in weighted:
                        queue.append(child)
                    else:
                        queue.appendleft(child)
        self.effective_depth = max((depth[n] for n in weighted if n in depth), default=0)
        # post-LN: norm(x + f(x)), the sum used by the norm alone, x used by f as well. The norm
        # applied once after the last block of a pre-LN stack has the same shape, but there x is
        # itself a sum: the residual stream it closes was never normalised on the way.
        for node, node_children in children.items():
            if "LayerNorm" in type(node).__name__ and node_children:
                source = node_children[0]
                stream = [k for k in children.get(source, ()) if consumers[k] >= 2]
                if (_is_sum(source) and consumers[source] == 1 and stream
                        and not any(_is_sum(k) for k in stream)):
                    self.post_ln.append(owner.get(node, type(node).__name__))

    @staticmethod
    def _walk(root: object):
        """Nodes that apply a weight (a 2-D+ leaf parameter reached directly or through nodes that
        only transform parameters, such as ``TBackward0`` in a Linear), consumer counts, and each
        node's children on the data path."""
        leaf_2d: dict[object, bool] = {}
        inputs: dict[object, list] = {}
        stack = [root]
        seen = {root}
        while stack:
            node = stack.pop()
            kids, has_leaf = [], False
            for child, _ in getattr(node, "next_functions", ()):
                if child is None:
                    continue
                variable = getattr(child, "variable", None)
                if variable is not None:  # AccumulateGrad: a leaf parameter
                    has_leaf = has_leaf or variable.dim() >= 2
                    continue
                kids.append(child)
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
            leaf_2d[node] = has_leaf
            inputs[node] = kids
        # parameter-only nodes: unary chains ending at a leaf parameter (``TBackward0`` of a weight)
        param_only: dict[object, bool] = {}
        carries_weight: dict[object, bool] = {}
        for node in _post_order(root, inputs):
            kids = inputs[node]
            edges = getattr(node, "next_functions", ())
            param_only[node] = len(edges) == 1 and edges[0][0] is not None and (
                not kids or param_only[kids[0]]
            )
            carries_weight[node] = leaf_2d[node] or any(param_only[k] and carries_weight[k] for k in kids)
        weighted = {n for n in inputs if carries_weight[n] and not param_only[n]}
        children = {n: [k for k in kids if not param_only[k]] for n, kids in inputs.items() if not param_only[n]}
        consumers: dict[object, int] = dict.fromkeys(children, 0)
        for kids in children.values():
            for k in kids:
                consumers[k] += 1
        return weighted, consumers, children


def _is_sum(node: object) -> bool:
    return type(node).__name__.startswith("AddBackward")


def _post_order(root: object, inputs: dict[object, list]) -> list:
    order, done, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in done:
            continue
        done.add(node)
        stack.append((node, True))
        stack.extend((k, False) for k in inputs[node] if k not in done)
    return order
