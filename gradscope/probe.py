"""The recipe probe of ``gradscope.diagnose``: a few optimizer steps of the user's recipe on the
probe batch, and what they show about whether training will go anywhere.

It measures, in this order:

1. one forward at initialisation: per weight layer, the mean correlation between the samples'
   outputs (forward signal collapse) and the spread across samples of the log of their length
   (the width effect of deep narrow ReLU nets, Hanin & Rolnick 2018);
2. ``steps`` optimizer steps on the batch: the loss before each, the total gradient norm, and
   each weight's update ratio ``||Δw|| / ||w||``;
3. back at the initial weights, the largest eigenvalue of the loss Hessian on the batch by power
   iteration on Hessian-vector products (double backward; finite differences of gradients when
   the model has no double backward), preconditioned by the optimizer's per-parameter scale for
   adaptive optimizers, against the recipe's stability threshold (:mod:`gradscope.recipe`).

The caller (``diagnose``) restores the model and the optimizer afterwards; the probe restores the
initial weights itself before step 3. Results go to :class:`Dynamics`, which the rules read.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from gradscope.errors import first_line
from gradscope.layers import is_weight_layer
from gradscope.recipe import Recipe, lr_by_parameter
from gradscope.stats.reductions import stored_values

POWER_ITERATIONS = 20
POWER_TOLERANCE = 0.02
"""Power iteration stops when the eigenvalue estimate changes by less than this fraction."""

SIMILARITY_SAMPLES = 64
"""Samples of the batch that the forward statistics use (pairwise terms grow with its square)."""

FORWARD_LAYERS = (nn.RNNBase, nn.MultiheadAttention)
"""Layers besides the weight layers whose outputs the forward statistics read."""

DEFAULT_LOSS, GIVEN_LOSS = "default", "loss_fn"
"""``Dynamics.loss_kind`` and ``report.options["loss"]``: gradscope's default loss, the given
``loss_fn``, or else where in the model's output its own loss was found (``output.loss``,
``output[1]``)."""

DEFAULT_LOSS_MARGIN = 10.0
"""How far the size of gradscope's default loss (``diagnose`` without a loss) may be from the
user's real one: a mean where it is a sum, another reduction over the classes. The findings that
scale with the loss (curvature against the learning rate, the update ratio under SGD) need this
much more margin under the default loss, so that its scale alone never makes a finding."""

FITTED = 0.25
"""A first probe loss at most this share of the best constant prediction's loss is a model that
already fits the batch. At initialisation the share was 0.94 or more for every one of the
trainability benchmark's 176 architectures under both seeds (random outputs do no better than a
constant); models trained on digits to 93–99% measured 0.0001 to 0.05."""

DEEPLY_FITTED = 0.05
"""The share below which small gradients and updates are the fit's doing (the loss is small),
not the model's or the recipe's: the predictions that a model cannot learn (a vanishing gradient,
updates far below 1e-3, collapse) need it. Trained models flagged by updates-off-band measured
0.0002 to 0.014; untrained models whose loss a constant prediction does far worse on than they do
measured more: a residual denoiser (the identity skip leaves the loss at the noise's, 0.23), a
contrastive loss at a low temperature (random encoders tell the views apart, 0.11)."""


@dataclass(frozen=True)
class Dynamics:
    """What the recipe probe measured (``diagnose(..., probe_steps=N)``)."""

    recipe: Recipe
    loss_kind: str
    steps: int
    losses: list[float]
    """The loss before each probe step, then after the last one (steps + 1 values unless the loss
    became non-finite, where the list stops)."""
    grad_norms: list[float]
    """The total gradient norm (all parameters) at each probe step, before clipping."""
    update_ratios: list[float]
    """Per step, the median over the trained weight tensors (2+ dimensions) of ``||Δw|| / ||w||``:
    those the optimizer holds, in its parameter groups with the largest learning rates (at least
    a tenth of the largest), that got a gradient on that step. A weight left out of the optimizer,
    given a far smaller learning rate (discriminative learning rates) or that the loss does not
    reach (an unused head, a stop-gradient branch, an expert no sample was routed to) is not
    trained by this recipe by design."""
    layer_update_ratios: dict[str, float]
    """Per trained weight tensor, its update ratio at the first step."""
    curvature: float | None
    """The largest eigenvalue of the Hessian of the loss on the batch at initialisation;
    preconditioned by the optimizer's per-parameter scale for adaptive optimizers."""
    curvature_method: str | None
    curvature_note: str | None
    """Why the curvature was not measured, or how (for adaptive optimizers)."""
    threshold: float | None
    """The recipe's stability threshold for ``curvature`` (:meth:`Recipe.stability_threshold`)."""
    similarity: dict[str, float] = field(default_factory=dict)
    """Per weight layer in forward order: the mean correlation between the samples' outputs."""
    length_spread: dict[str, float] = field(default_factory=dict)
    """Per weight layer in forward order: the standard deviation across samples of ln ||output||."""
    constant_loss: float | None = None
    """The loss, at the initial weights, of the best of a few constant predictions, the same for
    every sample (:func:`constant_outputs`; for a model that computes its own loss, the output of
    its last weight layer made constant: :func:`constant_layer_losses`). None under gradscope's
    default loss or where the output has no batch."""
    weight_update_ratios: dict[str, float] = field(default_factory=dict)
    """Per trained weight tensor, the median of its update ratio over the probe steps."""
    seconds: float = 0.0

    @property
    def nonfinite(self) -> bool:
        return len(self.losses) < self.steps + 1 or not all(math.isfinite(v) for v in self.grad_norms)

    @property
    def fit(self) -> float | None:
        """The first probe loss as a share of :attr:`constant_loss` (both positive), else None."""
        first = self.losses[0] if self.losses else None
        if first is None or self.constant_loss is None or not (math.isfinite(first) and first > 0) \
                or not (math.isfinite(self.constant_loss) and self.constant_loss > 0):
            return None
        return first / self.constant_loss

    @property
    def fitted(self) -> bool:
        """The model already fits the probe batch: its loss is :data:`FITTED` of a constant
        prediction's or less (a trained model, or a checkpoint resumed)."""
        return self.fit is not None and self.fit <= FITTED

    @property
    def deeply_fitted(self) -> bool:
        """The model fits the batch so well (:data:`DEEPLY_FITTED`) that small gradients and
        updates are the fit's doing."""
        return self.fit is not None and self.fit <= DEEPLY_FITTED

    @property
    def loss_margin(self) -> float:
        """1 with the user's loss; :data:`DEFAULT_LOSS_MARGIN` with gradscope's default loss."""
        return DEFAULT_LOSS_MARGIN if self.loss_kind == DEFAULT_LOSS else 1.0

    @property
    def stability_ratio(self) -> float | None:
        """curvature / threshold: above 1 the recipe's steps overshoot along the sharpest direction."""
        if self.curvature is None or self.threshold is None or not math.isfinite(self.curvature):
            return None
        return self.curvature / self.threshold

    @property
    def median_update_ratio(self) -> float | None:
        """The median over the probe steps of :attr:`update_ratios` (None without a finite one)."""
        finite = [r for r in self.update_ratios if math.isfinite(r)]
        return statistics.median(finite) if finite else None

    @property
    def largest_stable_lr(self) -> float | None:
        return self.recipe.largest_stable_lr(self.curvature) if self.curvature is not None else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["recipe"] = self.recipe.to_dict()
        data["stability_ratio"] = self.stability_ratio
        data["largest_stable_lr"] = self.largest_stable_lr
        data["median_update_ratio"] = self.median_update_ratio
        data["fit"] = self.fit
        return data


def run_probe(
    model: nn.Module,
    loss_at: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    steps: int,
    loss_kind: str,
    constant_losses_at: Callable[[], list[Callable[[], torch.Tensor]]] | None = None,
) -> Dynamics:
    """Measure :class:`Dynamics`; ``loss_at()`` runs the forward and the loss on the probe batch
    (same randomness every call), ``constant_losses_at()`` one loss per constant prediction (each
    a callable: one that raises is left out)."""
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        initial = [p.detach().clone() for p in params]
    similarity, spread = _forward_statistics(model, loss_at)
    constant_loss = _constant_loss(constant_losses_at)
    losses, grad_norms, ratios, layer_ratios, weight_ratios = _steps(model, loss_at, optimizer, recipe,
                                                                     params, steps)
    with torch.no_grad():
        for p, value in zip(params, initial):
            p.copy_(value)
    curvature, method, note = _curvature(loss_at, params, optimizer, recipe)
    return Dynamics(
        recipe=recipe, loss_kind=loss_kind, steps=steps, losses=losses, grad_norms=grad_norms,
        update_ratios=ratios, layer_update_ratios=layer_ratios, curvature=curvature,
        curvature_method=method, curvature_note=note, threshold=recipe.stability_threshold(),
        similarity=similarity, length_spread=spread, constant_loss=constant_loss,
        weight_update_ratios=weight_ratios, seconds=time.perf_counter() - start,
    )


def _batch_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=0, keepdim=True)


def _zeros(x: torch.Tensor) -> torch.Tensor:
    return x[:1] * 0  # keeps the graph: a loss function may insist on an output that requires grad


def _mean_distribution(x: torch.Tensor) -> torch.Tensor:
    """The log of the samples' mean softmax over the last dimension: logits of the average
    predicted distribution (a cross-entropy's best constant is the labels' frequencies)."""
    return x.float().log_softmax(dim=-1).exp().mean(dim=0, keepdim=True).log().to(x.dtype)


CONSTANTS = (_batch_mean, _zeros, _mean_distribution)
"""Predictions that are the same for every sample: the batch's mean output, zero (uniform logits,
a regression's centre), the batch's mean distribution. Each is a constant; the loss of the best of
them bounds from above what a model that tells no sample apart can reach."""


def constant_outputs(output: object) -> list[object]:
    """``output`` with each floating-point tensor of a batch (2 or more samples along dim 0)
    replaced by each of :data:`CONSTANTS` (broadcast back to its shape). Tensors, tuples, lists
    and dicts; an empty list for anything else or where no tensor has a batch."""
    changed = [False]

    def constant(x, make):
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() and x.dim() >= 1 and x.shape[0] >= 2:
                changed[0] = True
                return make(x).expand_as(x).contiguous()  # a loss may .view() it, as nanoGPT does
            return x
        if type(x) in (tuple, list):
            return type(x)(constant(v, make) for v in x)
        if type(x) is dict:
            return {k: constant(v, make) for k, v in x.items()}
        raise TypeError(type(x).__name__)

    try:
        results = [constant(output, make) for make in CONSTANTS]
    except TypeError:
        return []
    return results if changed[0] else []


def output_layer(model: nn.Module, forward: Callable[[], object]) -> nn.Module | None:
    """The weight layer that ``forward()`` (one forward of ``model``) calls last with a batch
    (2 or more samples along dim 0) of floating-point output: the layer that makes the logits of
    a model that computes its own loss (``output.loss``)."""
    last: list[nn.Module | None] = [None]

    def hook(module, args, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point() and output.dim() >= 1 \
                and output.shape[0] >= 2:
            last[0] = module

    handles = [m.register_forward_hook(hook) for m in model.modules() if is_weight_layer(m)]
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return last[0]


def constant_layer_losses(layer: nn.Module, loss_at: Callable[[], torch.Tensor]) -> list[Callable[[], torch.Tensor]]:
    """One loss per :data:`CONSTANTS`, each from a forward whose ``layer`` output is replaced by
    that constant: the model's own loss of a prediction that is the same for every sample."""
    def with_constant(make):
        def loss() -> torch.Tensor:
            handle = layer.register_forward_hook(lambda m, a, out: make(out).expand_as(out).contiguous())
            try:
                return loss_at()
            finally:
                handle.remove()
        return loss

    return [with_constant(make) for make in CONSTANTS]


def _constant_loss(constant_losses_at) -> float | None:
    """The least finite loss of the constant predictions; None where there is none (a loss that
    refuses them is no reason to lose the probe)."""
    if constant_losses_at is None:
        return None
    try:
        losses = constant_losses_at()
    except Exception:
        return None
    values = []
    for loss in losses:
        try:
            values.append(float(loss().detach()))
        except Exception:
            continue
    finite = [v for v in values if math.isfinite(v)]
    return min(finite) if finite else None


def _forward_statistics(model: nn.Module, loss_at) -> tuple[dict[str, float], dict[str, float]]:
    names: list[str] = []
    values: list[torch.Tensor] = []

    def hook(module, args, output, name):
        out = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() < 2:
            return
        x = out.detach()[:SIMILARITY_SAMPLES].reshape(min(out.shape[0], SIMILARITY_SAMPLES), -1).double()
        if x.shape[0] < 2 or x.shape[1] < 2 or name in names:
            return
        centred = x - x.mean(dim=1, keepdim=True)
        unit = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-300)
        b = x.shape[0]
        # mean over pairs of samples of their correlation: (|sum of unit vectors|^2 - b) / (b (b - 1))
        correlation = (unit.sum(dim=0).square().sum() - b) / (b * (b - 1))
        log_length = x.norm(dim=1).clamp_min(1e-300).log()
        names.append(name)
        values.append(torch.stack([correlation, log_length.std()]))

    handles = [m.register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n))
               for n, m in model.named_modules() if is_weight_layer(m) or isinstance(m, FORWARD_LAYERS)]
    try:
        loss_at()  # with gradients: a default loss needs an output that requires grad
    finally:
        for h in handles:
            h.remove()
    if not values:
        return {}, {}
    table = torch.stack(values).cpu().tolist()  # one transfer for all layers
    return ({n: row[0] for n, row in zip(names, table)}, {n: row[1] for n, row in zip(names, table)})


def trained_weights(params, optimizer: torch.optim.Optimizer) -> list:
    """The weight tensors (2+ dimensions) of ``params`` that ``optimizer`` trains at about its
    full learning rate: in a parameter group whose learning rate is at least a tenth of the
    largest that holds a weight. Where the optimizer holds no weight, all of them: they do not
    move, which is what the update ratios must show."""
    lr_of = lr_by_parameter(optimizer)
    rates = [lr_of[p] for p in params if p.dim() >= 2 and p in lr_of and lr_of[p] is not None]
    lowest = max(rates) / 10 if rates else -math.inf
    weights = [p for p in params if p.dim() >= 2]
    held = [p for p in weights if p in lr_of]
    # a recipe that holds no weight, or none at its full rate (biases and norms only, a typo in a
    # group's lr), trains the weights it holds, or none: measured as they are, not left out
    return [p for p in held if not (lr_of[p] is not None and lr_of[p] < lowest)] or held or weights


def _steps(model, loss_at, optimizer, recipe, params, steps):
    names = {p: n for n, p in model.named_parameters()}
    weights = trained_weights(params, optimizer)
    losses: list[float] = []
    grad_norms: list[float] = []
    ratio_rows: list[torch.Tensor] = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_at()
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            break
        loss.backward()
        # a sparse gradient (nn.Embedding(sparse=True)) counts by the values it stores
        grads = [stored_values(p.grad) if p.grad.is_sparse else p.grad for p in params if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        grad_norms.append(float(total))
        if not math.isfinite(grad_norms[-1]):
            break
        if recipe.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad_norm)
        with torch.no_grad():
            before = [w.detach().clone() for w in weights]
            reached = torch.tensor([w.grad is not None for w in weights], dtype=torch.bool)
            optimizer.step()
            if weights:
                delta = torch._foreach_sub([w.detach() for w in weights], before)
                sizes = torch.stack(torch._foreach_norm(before))
                # a weight of zero norm, or that no gradient reached on this step, has no update
                # ratio (NaN, left out of the medians)
                ratios = torch.stack(torch._foreach_norm(delta)) / sizes.where(sizes > 0, torch.nan)
                if reached.any():  # no weight reached at all: the recipe moves none of them (0s)
                    ratios = ratios.where(reached.to(ratios.device), torch.nan)
                ratio_rows.append(ratios)
    else:
        losses.append(float(loss_at().detach()))
    optimizer.zero_grad(set_to_none=True)
    if not ratio_rows:
        return losses, grad_norms, [], {}, {}
    table = torch.stack(ratio_rows).cpu()  # one transfer for all steps and weights
    medians = table.nanmedian(dim=1).values.tolist()
    first = {names[w]: float(v) for w, v in zip(weights, table[0].tolist())}
    per_weight = {names[w]: float(v) for w, v in zip(weights, table.nanmedian(dim=0).values.tolist())
                  if math.isfinite(v)}
    return losses, grad_norms, medians, first, per_weight


def _curvature(loss_at, params, optimizer, recipe) -> tuple[float | None, str | None, str | None]:
    if not params:
        return None, None, "no trainable parameters"
    scale = None
    note = None
    if recipe.adaptive:
        scale = _preconditioner(optimizer, params)
        if scale is None:
            return None, None, (f"{recipe.optimizer}'s per-parameter scale was not found in its state, "
                                "so its preconditioned curvature was not measured")
        note = "preconditioned by the optimizer's per-parameter scale after the probe steps"
    shares = _lr_shares(optimizer, params)
    if shares is not None:  # parameter groups at other learning rates: steps scaled by lr / largest lr
        scale = [s * share for s, share in zip(scale, shares)] if scale is not None else \
            [torch.full_like(p, share) for p, share in zip(params, shares)]
        note = (note + "; " if note else "") + "each parameter group's steps scaled by its share of the largest learning rate"
    try:
        matvec, method = _hessian_vector_product(loss_at, params), "Hessian-vector products"
    except (RuntimeError, NotImplementedError) as e:
        matvec, method = _finite_difference_product(loss_at, params), "finite differences of gradients"
        note = (note + "; " if note else "") + f"no double backward ({type(e).__name__})"
    if scale is not None:
        roots = [s.sqrt() for s in scale]
        inner = matvec

        def matvec(v):
            return torch._foreach_mul(inner(torch._foreach_mul(v, roots)), roots)
    try:
        value, unresolved = _top_eigenvalue(matvec, params)
    except (RuntimeError, NotImplementedError) as e:
        return None, None, f"the curvature could not be measured: {type(e).__name__}: {first_line(e)}"
    if unresolved is not None:
        return None, method, unresolved
    if value is None or not math.isfinite(value):
        return None, method, "the curvature is not finite"
    return value, method, note


def _lr_shares(optimizer: torch.optim.Optimizer, params) -> list[float] | None:
    """Per parameter, its group's learning rate as a share of the largest group's (0 for a
    parameter the optimizer does not hold); None where every parameter has the largest."""
    lr_of = lr_by_parameter(optimizer)
    rates = [lr for lr in lr_of.values() if lr is not None and lr > 0]
    if not rates:
        return None
    largest = max(rates)

    def share(p) -> float:
        if p not in lr_of:
            return 0.0
        return 1.0 if lr_of[p] is None else max(lr_of[p], 0.0) / largest

    shares = [share(p) for p in params]
    return None if all(s == 1.0 for s in shares) else shares


def _preconditioner(optimizer: torch.optim.Optimizer, params) -> list[torch.Tensor] | None:
    """Per parameter, the step size per unit gradient of an adaptive optimizer:
    ``1 / (sqrt(v̂) + eps)`` from Adam's bias-corrected second moment (RMSprop's square_avg,
    Adagrad's sum); Adadelta's ``sqrt(acc_delta + eps) / sqrt(square_avg + eps)``, whose
    numerator (the running size of its past updates) starts at ``sqrt(eps)``."""
    group_of = {p: g for g in optimizer.param_groups for p in g["params"]}
    scale = []
    for p in params:
        state = optimizer.state.get(p, {})
        group = group_of.get(p, {})
        eps = float(group.get("eps", 1e-8))
        if "acc_delta" in state and "square_avg" in state:  # Adadelta
            scale.append((state["acc_delta"] + eps).sqrt() / (state["square_avg"] + eps).sqrt())
            continue
        if "exp_avg_sq" in state:
            beta2 = float(group.get("betas", (0.9, 0.999))[1])
            step = float(state.get("step", 1))
            second = state["exp_avg_sq"] / (1 - beta2 ** max(step, 1.0))
        elif "square_avg" in state:
            second = state["square_avg"]
        elif "sum" in state:
            second = state["sum"]
        elif not state:  # no gradient reached it in the probe steps (or not the optimizer's): it did not move
            scale.append(torch.zeros_like(p))
            continue
        else:
            return None
        scale.append(1.0 / (second.sqrt() + eps))
    return scale if any(optimizer.state.get(p) for p in params) else None


def _hessian_vector_product(loss_at, params):
    loss = loss_at()
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not pairs:
        raise RuntimeError("the gradient does not depend on the parameters")

    def matvec(v):
        out = torch.autograd.grad([g for _, g in pairs], params, grad_outputs=[v[i] for i, _ in pairs],
                                  retain_graph=True, allow_unused=True)
        return [o if o is not None else torch.zeros_like(p) for o, p in zip(out, params)]

    matvec([torch.zeros_like(p) for p in params])  # fails here, not mid-iteration, without double backward
    return matvec


def _finite_difference_product(loss_at, params):
    with torch.no_grad():
        size = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in params]))))
    eps = 1e-3 * max(size, 1.0)
    by_backward: list[bool] = [False]  # set once autograd.grad was refused (a reentrant checkpoint)

    def gradient_at(v, sign):
        with torch.no_grad():
            torch._foreach_add_(params, v, alpha=sign * eps)
        try:
            grads = _gradients(loss_at, params, by_backward)
        finally:
            with torch.no_grad():
                torch._foreach_add_(params, v, alpha=-sign * eps)
        return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]

    def matvec(v):
        plus, minus = gradient_at(v, 1.0), gradient_at(v, -1.0)
        return torch._foreach_div(torch._foreach_sub(plus, minus), 2 * eps)

    return matvec


def _gradients(loss_at, params, by_backward: list[bool]) -> list:
    """The gradients of the loss with respect to ``params`` (None where it does not depend on one).
    A reentrant activation checkpoint (``use_reentrant=True``, Hugging Face's default for
    ``gradient_checkpointing_enable()``) refuses ``autograd.grad``; there the loss is evaluated
    again and its gradients are read from a plain ``backward()`` into the parameters' ``.grad``,
    which is put back as it was (``by_backward[0]`` remembers it for the next call)."""
    if not by_backward[0]:
        try:
            return list(torch.autograd.grad(loss_at(), params, allow_unused=True))
        except RuntimeError as e:
            if "use_reentrant" not in str(e):
                raise
            by_backward[0] = True
    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
        loss_at().backward()
        return [p.grad for p in params]
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def _top_eigenvalue(matvec, params) -> tuple[float | None, str | None]:
    """The algebraically largest eigenvalue of the symmetric operator ``matvec`` by power
    iteration; when the dominant eigenvalue is negative, again on the operator shifted by it.
    The second pass approaches its top from below, so a result under ``POWER_TOLERANCE`` of the
    shift (negative, or float32 noise of a large shift) says nothing of the largest eigenvalue:
    None, with the reason."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    start = [torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype) for p in params]
    dominant = _power(matvec, start)
    if dominant is None or dominant >= 0:
        return dominant, None

    def shifted(v):
        return torch._foreach_sub(matvec(v), torch._foreach_mul(v, dominant))

    top = _power(shifted, start)
    if top is None:
        return None, None
    resolution = POWER_TOLERANCE * abs(dominant)
    if top + dominant <= resolution:
        return None, (f"the Hessian's dominant eigenvalue is negative ({dominant:.3g}) and the shifted "
                      f"pass resolved no positive one above {resolution:.3g}")
    return top + dominant, None


def _power(matvec, start) -> float | None:
    v = _normalized(start)
    estimate = None
    for _ in range(POWER_ITERATIONS):
        hv = matvec(v)
        value = float(torch.stack([x.sum() for x in torch._foreach_mul(v, hv)]).sum())
        if not math.isfinite(value):
            return None
        converged = estimate is not None and abs(value - estimate) <= POWER_TOLERANCE * abs(value)
        estimate = value
        if converged:
            break
        norm = _norm(hv)
        if norm == 0:
            return 0.0
        v = torch._foreach_div(hv, norm)
    return estimate


def _norm(vectors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(stored_values(x).float())
                                                       for x in vectors])))


def _normalized(vectors):
    return torch._foreach_div(vectors, _norm(vectors))
