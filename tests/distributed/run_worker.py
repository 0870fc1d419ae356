"""One rank of the distributed tests, started by torchrun (tests/distributed/test_distributed.py).

Trains the test MLP for two steps on this rank's half of a batch, DDP or FSDP2 over gloo, under
gradscope.monitor; rank 0 also computes the single-process float64 reference of step 0 on the
whole batch and writes both to OUT/result.json.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(mode: str, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import gradscope
    from tests import models
    from tests.reference import reference

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode == "mismatch":
        return mismatch(rank, out)
    if mode.startswith("spike"):
        return spike(rank, out, guard=mode != "spike", local=mode == "spike-local")
    torch.manual_seed(0)
    model = models.mlp()
    original = copy.deepcopy(model)
    batches = [(torch.randn(8 * world, 6, generator=torch.Generator().manual_seed(s)),
                torch.randn(8 * world, 3, generator=torch.Generator().manual_seed(100 + s))) for s in range(2)]
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        wrapped = fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    lr = 0.05
    opt = torch.optim.SGD(wrapped.parameters(), lr=lr)
    mine = slice(8 * rank, 8 * (rank + 1))
    with gradscope.monitor(wrapped, optimizer=opt, weights_every=1, log_dir=out / f"run-{mode}") as mon:
        for x, y in batches:
            F.mse_loss(wrapped(x[mine]), y[mine]).backward()
            opt.step()
            opt.zero_grad()
    df = mon.to_dataframe()
    got = {f"{r.layer}|{r.metric}": r.value for r in df[df.step == 0].itertuples()}
    if rank == 0:
        expected = reference(original, [batches[0]], F.mse_loss, lr=lr)
        (out / f"result-{mode}.json").write_text(json.dumps({
            "got": got, "expected": {f"{k[0]}|{k[1]}": v for k, v in expected.items()},
            "steps": sorted(int(s) for s in df.step.unique()), "world": world,
        }))
    else:
        (out / f"rank{rank}-{mode}.json").write_text(json.dumps({
            "got": got, "run_dir": None if mon.history.run_dir is None else str(mon.history.run_dir)}))
    _finish()


def spike(rank: int, out: Path, guard: bool, local: bool = False) -> None:
    """DDP, 160 steps of a small regression; at step 120 rank 1's batch is 30x too large (its
    loss spikes; the averaged gradient on both ranks). Rank 0 must name rank 1; with the guard,
    both ranks skip step 120 and end with the same parameters. With ``local``, the batches stay
    sane and rank 1 alone reports a loss 1000x too large at step 120 (``mon.observe_loss``): only
    its detector fires, and the guard must still skip the step on both ranks."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    import gradscope

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))
    wrapped = DistributedDataParallel(model)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(10 + rank)
    with gradscope.monitor(wrapped, optimizer=opt, every=50, guard="skip" if guard else None) as mon:
        for step in range(160):
            corrupt = step == 120 and rank == 1
            x = torch.randn(32, 20, generator=g) * (30.0 if corrupt and not local else 1.0)
            loss = F.mse_loss(wrapped(x), x[:, :1] * 2)
            loss.backward()
            if corrupt and local:
                mon.observe_loss(loss.detach() * 1000)
            opt.step()
            opt.zero_grad()
    name = "local" if local else "guard" if guard else "plain"
    (out / f"spike-{name}-rank{rank}.json").write_text(json.dumps({
        "events": mon.event_dicts(), "skipped": mon.skipped_steps,
        "params": [p.detach().reshape(-1).tolist() for p in model.parameters()],
    }))
    _finish()


def mismatch(rank: int, out: Path) -> None:
    """Rank 1 runs an extra module at step 1: from then on the ranks' statistics differ, and the
    steps must be skipped on both ranks with a warning, without hanging."""
    import warnings

    import torch
    import torch.nn as nn

    import gradscope

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.extra = nn.Linear(4, 4)
            self.use_extra = False

        def forward(self, x):
            h = self.a(x)
            return self.extra(h) if self.use_extra else h

    torch.manual_seed(0)
    model = Branchy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.monitor(model, optimizer=opt) as mon:
            for step in range(3):
                model.use_extra = rank == 1 and step == 1
                model(torch.randn(8, 4)).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
    (out / f"mismatch-rank{rank}.json").write_text(json.dumps({
        "steps": sorted(int(s) for s in mon.to_dataframe().step.unique()),
        "warnings": [str(w.message) for w in caught],
    }))
    _finish()


def _finish() -> None:
    """Both ranks done with every collective before either tears its group down (gloo aborts a
    process whose peer left while its threads still ran); then the process leaves without running
    C++ destructors, where a thread still joinable at exit now and then ended a run under load with
    "terminate called without an active exception". The results are written by then."""
    import os

    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
