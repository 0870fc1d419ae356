"""The guard under PyTorch Lightning, on real data: a digits MLP (scikit-learn's 8x8 digits)
trained by a Lightning Trainer with SGD and momentum, one batch of its run corrupted (inputs
times 1000, a broken shard), with and without ``GradscopeCallback(guard="skip")``, and the same
run in a plain loop under ``gradscope.monitor(..., guard="skip")``. Prints train accuracy at the
end, the skipped steps and the first event.

Run: python benchmarks/guard_lightning.py [--steps 400] [--corrupt 200] [--seeds 3]
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def batches(x, y, steps: int, corrupt: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(0, len(x), (32,), generator=g)
        yield (x[index] * (1000.0 if step == corrupt else 1.0), y[index])


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def plain(x, y, steps, corrupt, seed, guard):
    torch.manual_seed(seed)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with gradscope.monitor(model, every=100, optimizer=opt, guard=guard) as mon:
        for xb, yb in batches(x, y, steps, corrupt, seed):
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
    return accuracy(model, x, y), mon


def lightning(x, y, steps, corrupt, seed, guard):
    try:
        import pytorch_lightning as pl
    except ImportError:
        import lightning.pytorch as pl
    from gradscope.integrations.lightning import GradscopeCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    module = Module()
    callback = GradscopeCallback(every=100, guard=guard)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, torch.utils.data.DataLoader(list(batches(x, y, steps, corrupt, seed)), batch_size=None))
    return accuracy(module.net, x, y), callback.monitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--corrupt", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = digits()
    print("| loop | guard | seed | train accuracy | skipped steps | first event |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, run in (("Lightning", lightning), ("plain", plain)):
        for guard in (None, "skip"):
            for seed in range(args.seeds):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    acc, mon = run(x, y, args.steps, args.corrupt, seed, guard)
                first = mon.events[0] if mon.events else None
                event = f"step {first.step}: {', '.join(first.alarms)}" if first else "none"
                print(f"| {name} | {guard or 'none'} | {seed} | {acc:.3f} | {mon.skipped_steps} | {event} |")


if __name__ == "__main__":
    main()
