"""The instability benchmark: loss and gradient spikes in a small GPT, caught as they start?

A byte-level pre-LN GPT trains on the source of Python's standard library with AdamW at one learning
rate that trains smoothly and at several larger ones where the run is lost. The harness records its
own per-step reference traces with plain torch (float64): the loss, the total and per-parameter
gradient norms, the largest attention logit per block and the largest output logit. The peer
spike rules (Lightning, llm-foundry; benchmarks/peer_spike_rules.py) are scored offline on the
loss traces, with the parameter whose gradient norm moved first as the attribution ground truth.

    python benchmarks/instability.py                 # train every run, save, score (docs/instability.md)
    python benchmarks/instability.py --score-only    # score the committed results file in seconds

Any online detector plugs into ``train(lr, seed, steps, on_step=..., wrap=...)`` and is scored
with ``score(run, detection_steps)``; see docs/instability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_spike_rules import foundry_spike_steps, lightning_spike_steps  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRACES = RESULTS / "instability_traces.npz"
VOCAB = 256
INITIAL_LOSS = math.log(VOCAB)


# --- data ------------------------------------------------------------------------------------

def corpus() -> bytes:
    """The top-level .py files of the running Python's standard library (the directory of ``os``),
    sorted by name and concatenated as bytes. Nothing is downloaded; the size and SHA-256 are
    stored with the results, since they follow the Python version."""
    stdlib = Path(os.__file__).resolve().parent
    return b"".join(path.read_bytes() for path in sorted(stdlib.glob("*.py")))


def split(data: bytes, validation_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 90 % of the bytes for training, the last 10 % for validation (no shuffling, so
    that no file straddles both)."""
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    cut = int(len(tokens) * (1 - validation_fraction))
    return tokens[:cut], tokens[cut:]


def sample_batch(tokens: torch.Tensor, generator: torch.Generator, batch: int, context: int):
    starts = torch.randint(0, len(tokens) - context - 1, (batch,), generator=generator)
    windows = torch.stack([tokens[s:s + context + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


# --- model -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """The GPT's size (136,960 parameters): one training step takes about 15 ms on one CPU thread."""
    d: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 64
    batch: int = 16


class Block(nn.Module):
    """Pre-LN block: LayerNorm → causal self-attention → residual, LayerNorm → GELU MLP → residual.
    Records the largest attention logit q·k/sqrt(d_head) of its last forward (no gradient)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.heads = heads
        self.attn_logit_max = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        with torch.no_grad():
            logits = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            self.attn_logit_max = logits.masked_fill(~causal, -math.inf).amax()
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Token and position embeddings, pre-LN blocks, final LayerNorm, linear head (untied).
    GPT-2's initialisation: N(0, 0.02), zero biases, residual projections N(0, 0.02/sqrt(2 L))."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, shape.d)
        self.positions = nn.Embedding(shape.context, shape.d)
        self.blocks = nn.ModuleList(Block(shape.d, shape.heads) for _ in range(shape.layers))
        self.ln = nn.LayerNorm(shape.d)
        self.head = nn.Linear(shape.d, VOCAB, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * shape.layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


# --- the training recipe and the harness -----------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """AdamW, linear warmup from 0 to ``lr`` over ``warmup`` steps then constant, no gradient
    clipping (clipping would hide the spikes this benchmark is about)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    """Decoupled weight decay on the matrices and embeddings only (GPT-2/nanoGPT practice); biases
    and LayerNorm parameters are not decayed."""
    warmup: int = 100


def build_optimizer(model: nn.Module, lr: float, recipe: Recipe) -> tuple[torch.optim.Optimizer, object]:
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": recipe.weight_decay}, {"params": plain, "weight_decay": 0.0}],
        lr=lr, betas=recipe.betas, eps=recipe.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / recipe.warmup))
    return optimizer, schedule


@dataclass
class Run:
    """One training run's reference traces (index = step, 0-based; float64)."""
    lr: float
    seed: int
    names: list[str]
    loss: np.ndarray
    grad_norm: np.ndarray
    param_grad_norm: np.ndarray
    """(steps, parameters), in the order of ``names``."""
    attn_logit_max: np.ndarray
    """(steps, blocks): the largest causal attention logit of each block."""
    out_logit_max: np.ndarray
    """The largest absolute output logit."""
    val_steps: np.ndarray
    val_loss: np.ndarray
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"lr={self.lr:g} seed={self.seed}"


def train(lr: float, seed: int, steps: int, on_step: Callable[[int, torch.Tensor], None] | None = None,
          wrap: Callable[[nn.Module, torch.optim.Optimizer], contextlib.AbstractContextManager] | None = None,
          *, shape: Shape = Shape(), recipe: Recipe = Recipe(), after_lost: int | None = 200,
          data: tuple[torch.Tensor, torch.Tensor] | None = None, val_every: int = 250) -> Run:
    """Train the GPT for ``steps`` steps (fewer: stops at a non-finite loss, or ``after_lost``
    steps after the run is lost; None trains on) and return the reference traces.

    ``wrap(model, optimizer)`` returns a context manager the whole loop runs in (e.g.
    ``lambda m, o: gradscope.monitor(m, optimizer=o, every=100)``); ``on_step(step, loss)`` is
    called after each optimizer step with the detached loss tensor (no ``.item()`` is forced on
    it). Neither changes what the harness records. Seed ``seed`` fixes the initialisation and the
    batches.
    """
    torch.manual_seed(seed)
    train_tokens, val_tokens = data if data is not None else split(corpus())
    model = GPT(shape)
    optimizer, schedule = build_optimizer(model, lr, recipe)
    names = [name for name, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    batches = torch.Generator().manual_seed(seed)
    val_batches = [sample_batch(val_tokens, torch.Generator().manual_seed(10_000 + i), shape.batch, shape.context)
                   for i in range(8)]
    loss_trace, total_trace, param_trace, attn_trace, out_trace, val = [], [], [], [], [], []
    watch = LostWatch()
    started = time.perf_counter()
    with (wrap(model, optimizer) if wrap is not None else contextlib.nullcontext()):
        for step in range(steps):
            if val_every and step % val_every == 0:
                val.append((step, validation_loss(model, val_batches)))
            x, y = sample_batch(train_tokens, batches, shape.batch, shape.context)
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, VOCAB), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                # the reference: one float64 norm per parameter, read back once per step
                norms = torch.stack([torch.linalg.vector_norm(p.grad, dtype=torch.float64) for p in params])
                attn = torch.stack([block.attn_logit_max for block in model.blocks]).double()
                row = torch.cat([loss.detach().double().view(1), norms.square().sum().sqrt().view(1),
                                 logits.detach().abs().amax().double().view(1), attn, norms]).tolist()
            optimizer.step()
            schedule.step()
            if on_step is not None:
                on_step(step, loss.detach())
            loss_trace.append(row[0])
            total_trace.append(row[1])
            out_trace.append(row[2])
            attn_trace.append(row[3:3 + shape.layers])
            param_trace.append(row[3 + shape.layers:])
            lost = watch.update(row[0])
            if not math.isfinite(row[0]) or (after_lost is not None and lost is not None and step >= lost + after_lost):
                break
    seconds = time.perf_counter() - started
    return Run(lr, seed, names, np.array(loss_trace), np.array(total_trace), np.array(param_trace),
               np.array(attn_trace), np.array(out_trace), np.array([s for s, _ in val], dtype=np.int64),
               np.array([v for _, v in val]), seconds)


@torch.no_grad()
def validation_loss(model: nn.Module, batches) -> float:
    was_training = model.training
    model.eval()
    loss = sum(F.cross_entropy(model(x).view(-1, VOCAB), y.reshape(-1)).item() for x, y in batches) / len(batches)
    model.train(was_training)
    return loss


# --- ground truth ----------------------------------------------------------------------------

LOST_WINDOW = 20
LOST_BELOW = 1.0


class LostWatch:
    """When the run is lost: the first step whose loss is non-finite, or at which the mean of the
    last ``LOST_WINDOW`` losses is above the initial loss ln 256 after that mean had once been
    ``LOST_BELOW`` nat below it (the model had learnt something and has now forgotten it all)."""

    def __init__(self) -> None:
        self.recent: list[float] = []
        self.learnt = False
        self.lost_at: int | None = None
        self.step = -1

    def update(self, loss: float) -> int | None:
        self.step += 1
        if self.lost_at is not None:
            return self.lost_at
        if not math.isfinite(loss):
            self.lost_at = self.step
            return self.lost_at
        self.recent = (self.recent + [loss])[-LOST_WINDOW:]
        mean = sum(self.recent) / len(self.recent)
        if len(self.recent) == LOST_WINDOW:
            self.learnt = self.learnt or mean <= INITIAL_LOSS - LOST_BELOW
            if self.learnt and mean > INITIAL_LOSS:
                self.lost_at = self.step
        return self.lost_at


def lost_step(losses) -> int | None:
    """The step at which the run is lost (``LostWatch``), None if it never is."""
    watch = LostWatch()
    for loss in losses:
        if watch.update(float(loss)) is not None:
            break
    return watch.lost_at


JUMP = 10.0
JUMP_HISTORY = 100
JUMP_FROM = 20


def jumps(norms: np.ndarray, factor: float = JUMP, history: int = JUMP_HISTORY, start: int = JUMP_FROM) -> np.ndarray:
    """Per step and parameter, the gradient norm over its median across the preceding ``history``
    steps (fewer near the start); NaN before step ``start``. ``norms`` is (steps, parameters); a
    non-finite norm gives an infinite ratio."""
    ratio = np.full(norms.shape, np.nan)
    for t in range(start, len(norms)):
        median = np.median(norms[max(0, t - history):t], axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[t] = np.where(np.isfinite(norms[t]), norms[t] / median, np.inf)
    return ratio


def first_moving(run: Run, until: int | None = None) -> tuple[str | None, int | None]:
    """The ground truth for attribution: the parameter whose gradient norm first rose above ``JUMP``
    (10) times its own median over the preceding ``JUMP_HISTORY`` (100) steps, from step
    ``JUMP_FROM`` (20) to step ``until`` (the lost step by default; the whole run when it is never
    lost), and that step. Among parameters crossing at the same step, the largest ratio wins.
    Gradient norms are heavy-tailed from step to step (a rolling-std band fires on the stable run
    every few hundred steps); a tenfold rise over the median does not (docs/instability.md)."""
    until = lost_step(run.loss) if until is None else until
    until = len(run.loss) - 1 if until is None else until
    ratio = jumps(run.param_grad_norm[:until + 1])
    crossed = np.nan_to_num(ratio, nan=0.0) > JUMP
    steps = np.flatnonzero(crossed.any(axis=1))
    if len(steps) == 0:
        return None, None
    t = int(steps[0])
    return run.names[int(np.argmax(np.where(crossed[t], ratio[t], -np.inf)))], t


def score(run: Run, detections: list[int]) -> dict:
    """One detector on one run: its first detection step, the lead time (lost step − first
    detection; negative when it fires after the run is lost) and how many steps it fired on. On a
    run that is never lost every detection is a false alarm.

    >>> run = Run(1.0, 0, [], np.array([5.0] * 30 + [math.nan]), *(np.zeros(0),) * 6, 0.0)
    >>> score(run, [28, 29])
    {'lost': 30, 'first': 28, 'lead': 2, 'detections': 2, 'false_alarms': 0}
    """
    lost = lost_step(run.loss)
    detections = sorted(detections)
    first = detections[0] if detections else None
    return {"lost": lost, "first": first,
            "lead": lost - first if lost is not None and first is not None else None,
            "detections": len(detections), "false_alarms": len(detections) if lost is None else 0}


PEERS: dict[str, Callable[[Run], list[int]]] = {
    "Lightning SpikeDetection": lambda run: lightning_spike_steps(run.loss),
    "llm-foundry KillLossSpike": lambda run: foundry_spike_steps(run.loss, total_steps=run.extra["steps"]),
}
"""Each peer's detection steps on a run, from its loss trace alone."""


# --- the results file ------------------------------------------------------------------------

TRACE_FIELDS = ("loss", "grad_norm", "param_grad_norm", "attn_logit_max", "out_logit_max", "val_steps", "val_loss")


def save(runs: list[Run], path: Path, meta: dict) -> None:
    """All runs in one compressed npz; traces stored as float32 (the float64 reference rounded
    for storage), the run descriptions and the ground truth as JSON."""
    arrays, described = {}, []
    for i, run in enumerate(runs):
        for name in TRACE_FIELDS:
            value = getattr(run, name)
            arrays[f"run{i}.{name}"] = value.astype(np.float32) if value.dtype.kind == "f" else value
        parameter, moved_at = first_moving(run)
        described.append({"lr": run.lr, "seed": run.seed, "names": run.names, "seconds": run.seconds,
                          "extra": run.extra, "lost": lost_step(run.loss),
                          "first_moving": parameter, "first_moving_step": moved_at})
    arrays["meta"] = np.array(json.dumps({**meta, "runs": described}))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load(path: Path) -> tuple[list[Run], dict]:
    with np.load(path) as stored:
        meta = json.loads(str(stored["meta"]))
        runs = [Run(d["lr"], d["seed"], d["names"], *(stored[f"run{i}.{name}"].astype(np.float64)
                    if stored[f"run{i}.{name}"].dtype.kind == "f" else stored[f"run{i}.{name}"]
                    for name in TRACE_FIELDS), d["seconds"], d["extra"])
                for i, d in enumerate(meta["runs"])]
    return runs, meta


def train_all(lrs: list[float], seeds: list[int], steps: int, path: Path) -> None:
    torch.set_num_threads(1)
    data = corpus()
    tokens = split(data)
    runs = []
    started = time.perf_counter()
    for lr in lrs:
        for seed in seeds:
            run = train(lr, seed, steps, data=tokens)
            run.extra = {"steps": steps}
            runs.append(run)
            lost = lost_step(run.loss)
            print(f"{run.key:22s} {len(run.loss):5d} steps {run.seconds:6.1f} s "
                  f"({1000 * run.seconds / len(run.loss):.1f} ms/step) lost at {lost} "
                  f"final loss {np.nanmean(run.loss[-50:]):.3f}", flush=True)
    meta = {"shape": Shape().__dict__, "recipe": {**Recipe().__dict__, "betas": list(Recipe().betas)},
            "steps": steps, "corpus_bytes": len(data), "corpus_sha256": hashlib.sha256(data).hexdigest(),
            "python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "total_seconds": time.perf_counter() - started}
    save(runs, path, meta)
    print(f"saved {len(runs)} runs to {path} in {meta['total_seconds']:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 0.4, 0.5, 0.7, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=TRACES)
    parser.add_argument("--score-only", action="store_true", help="score the results file without training")
    args = parser.parse_args()
    if not args.score_only:
        train_all(args.lrs, args.seeds, args.steps, args.out)
    report(*load(args.out))


def report(runs: list[Run], meta: dict) -> None:
    print(f"{len(runs)} runs; torch {meta['torch']}, Python {meta['python']}, {meta['cpus']} CPUs "
          f"({meta['threads']} thread); training took {meta['total_seconds']:.0f} s\n")
    print("| lr | seed | steps run | lost at | " + " | ".join(f"{peer} first / lead" for peer in PEERS)
          + " | first-moving parameter (step) | largest attention logit per block / output logit, up to the lost step |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in PEERS) + " | --- | --- |")
    for run, described in zip(runs, meta["runs"]):
        cells = []
        for detect in PEERS.values():
            s = score(run, detect(run))
            if s["lost"] is None:
                cells.append(f"{s['detections']} false alarms")
            else:
                cells.append("none" if s["first"] is None else f"{s['first']} / {s['lead']:+d}")
        moved = described["first_moving"]
        until = len(run.loss) if s["lost"] is None else s["lost"] + 1
        logits = " / ".join(f"{v:.3g}" for v in (*np.nanmax(run.attn_logit_max[:until], axis=0),
                                                   np.nanmax(run.out_logit_max[:until])))
        print(f"| {run.lr:g} | {run.seed} | {len(run.loss)} | {s['lost'] if s['lost'] is not None else 'never'} | "
              + " | ".join(cells) + f" | {moved or '-'} ({described['first_moving_step']}) | {logits} |")


if __name__ == "__main__":
    main()
