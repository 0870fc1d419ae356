"""Per-step overhead of gradscope.monitor against a plain training loop and against the tools
users have: a naive per-parameter hook, wandb.watch (offline) and Cockpit's economy
configuration (where it installs).

One process, interleaved blocks (every configuration once per round, rounds repeated), median
block time per step, reported as a ratio to the median plain step and as added milliseconds.
Each configuration trains its own copy of the model from the same initial weights, attached once
(a monitor, a watch) for the whole run as in training; the first round warms up and is not
counted. Prints
markdown tables with the machine, torch version and command.

Run: python benchmarks/overhead.py [--models mlp,cnn,gpt] [--rounds 7] [--steps 20] [--no-peers]
     [--threads 1] [--autocast bf16] [--matrix]
On a GPU: python benchmarks/overhead.py --device cuda --models gpt2-small --autocast bf16
--matrix prints Cockpit's published format instead: each configuration (gradscope, gradscope
without the pulse, Cockpit economy/business/full) at logging intervals 1, 4, 16 and 64.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gradscope  # noqa: E402
from models import setup  # noqa: E402

Step = Callable[[], None]
AUTOCAST: list[torch.dtype | None] = [None]  # the forward's autocast dtype (--autocast)


def forward(model, x):
    """The model's forward, under autocast when --autocast asks for it."""
    dtype = AUTOCAST[0]
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(x)


class Config:
    """A way of training: ``start(model, opt, x, y, loss)`` returns a step function; ``stop()``
    detaches whatever it attached."""

    def __init__(self, name: str, start, stop=lambda: None) -> None:
        self.name, self._start, self.stop = name, start, stop

    def start(self, *args) -> Step:
        return self._start(*args)


def plain_step(model, opt, x, y, loss) -> Step:
    def step():
        loss(forward(model, x), y).backward()
        opt.step()
        opt.zero_grad()
    return step


def gradscope_config(every: int, **options) -> Config:
    holder = {}

    def start(model, opt, x, y, loss):
        holder["mon"] = gradscope.monitor(model, every=every, optimizer=opt, **options).start()
        return plain_step(model, opt, x, y, loss)

    name = " ".join([f"gradscope every={every}", *(f"{k}={v}" for k, v in options.items())])
    return Config(name, start, lambda: holder.pop("mon").stop())


def naive_config() -> Config:
    """What many training loops do: read each parameter's gradient norm after backward."""
    def start(model, opt, x, y, loss):
        params = [p for p in model.parameters() if p.requires_grad]

        def step():
            loss(forward(model, x), y).backward()
            norms = [p.grad.norm().item() for p in params if p.grad is not None]  # noqa: F841
            opt.step()
            opt.zero_grad()
        return step
    return Config("naive p.grad.norm().item()", start)


def wandb_configs() -> list[Config]:
    try:
        import wandb
    except ImportError:
        return [Config("wandb.watch (not installed: pip install wandb)", None)]
    state = {}

    def make(log: str, freq: int) -> Config:
        def start(model, opt, x, y, loss):
            if "run" not in state:
                os.environ.setdefault("WANDB_SILENT", "true")
                state["run"] = wandb.init(mode="offline", dir=tempfile.mkdtemp(), project="gradscope-bench")
            wandb.watch(model, log=log, log_freq=freq)
            state["model"] = model

            def step():
                value = loss(forward(model, x), y)
                value.backward()
                opt.step()
                opt.zero_grad()
                wandb.log({"loss": value.item()})  # watch logs with the run's log calls
            return step

        return Config(f"wandb.watch log={log!r} log_freq={freq}", start, lambda: wandb.unwatch(state["model"]))

    return [make("gradients", 1), make("all", 1), make("gradients", 100), make("all", 100)]


def cockpit_config(label: str = "economy", interval: int = 1) -> Config:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from backpack import extend
            from cockpit import Cockpit
            from cockpit.utils import schedules
            from cockpit.utils.configuration import configuration
    except Exception as e:  # noqa: BLE001 - reported in the table
        return Config(f"Cockpit {label} (does not import: {type(e).__name__}: {e})", None)
    holder = {}

    def start(model, opt, x, y, loss):
        extend(model)
        mean_loss = extend(torch.nn.CrossEntropyLoss())
        individual = torch.nn.CrossEntropyLoss(reduction="none")
        cockpit = Cockpit(model.parameters(),
                          quantities=configuration(label, track_schedule=schedules.linear(interval)))
        holder["step"] = 0

        def step():
            opt.zero_grad()
            out = forward(model, x)
            value = mean_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            losses = individual(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            with cockpit(holder["step"], info={"batch_size": x.shape[0], "individual_losses": losses,
                                               "loss": value, "optimizer": opt}):
                value.backward(create_graph=cockpit.create_graph(holder["step"]))
            opt.step()
            holder["step"] += 1
        return step

    return Config(f"Cockpit {label}" + (f" every={interval}" if interval != 1 else ""), start)


INTERVALS = (1, 4, 16, 64)
MATRIX_ROWS = ("gradscope", "gradscope detect=None", "Cockpit economy", "Cockpit business", "Cockpit full")


def matrix_configs(peers: bool) -> list[Config]:
    """Cockpit's published format: each configuration at each logging interval."""
    configs = [Config("plain", plain_step)]
    configs += [gradscope_config(k) for k in INTERVALS]
    configs += [gradscope_config(k, detect=None) for k in INTERVALS]
    if peers:
        configs += [cockpit_config(label, k) for label in ("economy", "business", "full") for k in INTERVALS]
    return configs


def matrix_cell(rows, row: str, interval: int) -> str:
    """The table cell of one configuration at one interval."""
    if row.startswith("gradscope"):
        name = f"gradscope every={interval}" + row[len("gradscope"):]
    else:
        name = row + (f" every={interval}" if interval != 1 else "")
    for config, value, ratio in rows:
        if config == name or (config.startswith(row) and "does not import" in config):
            return f"{ratio:.3f}x" if ratio is not None else "did not run"
    return "not run"


def measure(model_name: str, device: str, rounds: int, steps: int, peers: bool,
            matrix: bool = False) -> list[tuple[str, str, float | None]]:
    torch.manual_seed(0)
    base, x, y, loss = setup(model_name, device)
    configs = [Config("plain", plain_step), gradscope_config(1), gradscope_config(10), gradscope_config(100),
               gradscope_config(10, detect=None), gradscope_config(100, detect=None)]
    if matrix:
        configs = matrix_configs(peers)
    elif peers:
        configs.append(naive_config())
        configs += wandb_configs()
        cockpit = cockpit_config()
        if cockpit is not None:
            configs.append(cockpit)
    models = {c.name: copy.deepcopy(base) for c in configs}
    optimizers = {c.name: torch.optim.SGD(models[c.name].parameters(), lr=0.01) for c in configs}
    times: dict[str, list[float]] = {c.name: [] for c in configs}
    failed: dict[str, str] = {}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    steps_of: dict[str, Step] = {}
    for config in configs:  # attached once for the whole run, as in training
        if config._start is None:
            failed[config.name] = "not available"
            continue
        try:
            steps_of[config.name] = config.start(models[config.name], optimizers[config.name], x, y, loss)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run this model is reported
            failed[config.name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    try:
        for r in range(rounds + 1):  # round 0 warms up (layouts, caches) and is not counted
            for config in configs:
                if config.name in failed:
                    continue
                step = steps_of[config.name]
                try:
                    start = time.perf_counter()
                    step()
                    sync()
                    first = time.perf_counter() - start
                    count = steps if first < 0.2 else max(2, steps // 10)  # keep very slow peers bounded
                    start = time.perf_counter()
                    for _ in range(count):
                        step()
                    sync()
                    elapsed = (time.perf_counter() - start) / count
                except Exception as e:  # noqa: BLE001 - a peer that cannot run this model is reported
                    failed[config.name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    continue
                if r > 0:
                    times[config.name].append(elapsed)
    finally:
        for config in configs:
            if config.name in steps_of:
                config.stop()
    plain = statistics.median(times["plain"])
    rows = []
    for config in configs:
        if config.name in failed:
            rows.append((config.name, failed[config.name], None))
        else:
            median = statistics.median(times[config.name])
            rows.append((config.name, f"{median * 1e3:.2f} ms", median / plain))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="gradscope per-step overhead")
    parser.add_argument("--models", default="mlp,cnn,gpt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--no-peers", action="store_true", help="gradscope and plain only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None,
                        help="run the forward under torch.autocast in this dtype")
    parser.add_argument("--matrix", action="store_true",
                        help="Cockpit's format: configurations x logging intervals 1/4/16/64")
    args = parser.parse_args()
    AUTOCAST[0] = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.autocast]
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, gradscope {gradscope.__version__}, {args.device}: {where}"
          + (f", autocast {args.autocast}" if args.autocast else ""))
    print(f"command: python {' '.join(sys.argv)}")
    for name in args.models.split(","):
        rows = measure(name, args.device, args.rounds, args.steps, not args.no_peers, args.matrix)
        if args.matrix:
            print(f"\n### {name}: ratio to a plain step by logging interval\n")
            print("| configuration | " + " | ".join(f"every {k}" for k in INTERVALS) + " |")
            print("| --- |" + " --- |" * len(INTERVALS))
            for row in MATRIX_ROWS:
                print(f"| {row} | " + " | ".join(matrix_cell(rows, row, k) for k in INTERVALS) + " |")
            continue
        plain = next(r for r in rows if r[0] == "plain")
        plain_ms = float(plain[1].split()[0])
        print(f"\n### {name}\n")
        print("| configuration | median step | ratio to plain | added per step |")
        print("| --- | --- | --- | --- |")
        for config, value, ratio in rows:
            if ratio is None:
                print(f"| {config} | did not run: {value} | | |")
            else:
                added = float(value.split()[0]) - plain_ms
                print(f"| {config} | {value} | {ratio:.3f}x | {added:+.2f} ms |")


if __name__ == "__main__":
    main()
