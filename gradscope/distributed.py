"""Data-parallel runs (DDP, FSDP2): which rank this is, how parameters are told apart (replicated
or sharded), and the per-step agreement and all-reduce of the step buffer.

Every logged step, each rank gathers three numbers (buffer size, a process-independent hash of
the layout, ok) before the one all-reduce, so ranks whose buffers do not line up, or where one
failed to build its buffer, skip the step together instead of hanging in the collective.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn as nn

from gradscope.buffer import Layout


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose names the statistics use: DDP's wrapped module (no "module." prefix)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def is_dtensor(t: torch.Tensor) -> bool:
    """A sharded parameter (FSDP2's DTensor): its local shard is what this rank reduces."""
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: the local shard of a DTensor, else ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


class RankAgreement:
    """The ranks' check that their step buffers line up, and the all-reduce that sums them."""

    def __init__(self, layout: Layout, world_size: int) -> None:
        self.layout = layout
        self.world_size = world_size
        self.agreed_step: int | None = None
        """The last step this rank joined the check for (so a failure after it does not join twice)."""
        self._key: tuple[int, int] | None = None

    def layout_key(self) -> int:
        """A hash of the layout that is the same in every process (not Python's salted hash)."""
        if self._key is None or self._key[0] != self.layout.size:
            text = "|".join(f"{e.layer}/{e.metric}/{sorted(e.slots.items())}" for e in self.layout.entries)
            self._key = (self.layout.size, zlib.crc32(text.encode()))
        return self._key[1]

    def agree(self, step: int, ok: bool, device: torch.device) -> None:
        """Every rank, every logged step: gather (size, layout hash, ok) and refuse to sum
        buffers that do not line up slot by slot, or when a rank failed to build its buffer;
        all ranks see the same answer, so none is left waiting in the all-reduce."""
        import torch.distributed as dist

        mine = torch.tensor([self.layout.size if ok else -1, self.layout_key() if ok else -1, int(ok)],
                            dtype=torch.long, device=device)
        everyone = [torch.zeros_like(mine) for _ in range(self.world_size)]
        self.agreed_step = step
        dist.all_gather(everyone, mine)
        headers = [tuple(t.tolist()) for t in everyone]  # 3 numbers a rank: the one host read
        if len(set(headers)) != 1:
            raise RuntimeError(
                f"the ranks' statistics do not line up (size, layout hash, ok per rank: {headers}); "
                "the step is skipped on every rank. All ranks must run the same modules each step."
            )

    def gather_rows(self, rows: torch.Tensor) -> list:
        """Every rank's ``rows`` (same shape everywhere) on every rank, as numpy arrays: the new
        spike events each rank shares at a logged step (gradscope/events.py)."""
        import torch.distributed as dist

        everyone = [torch.zeros_like(rows) for _ in range(self.world_size)]
        dist.all_gather(everyone, rows)
        return [t.detach().to("cpu", torch.float64).numpy() for t in everyone]

    def any_rank(self, flag: torch.Tensor) -> torch.Tensor:
        """``flag`` (a 1-element float tensor, 0 or 1) set on every rank where it is set on any:
        the guard's skip, so that every replica skips the same steps (no host read on a GPU)."""
        import torch.distributed as dist

        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag

    def all_reduce(self, step: int, buffer: torch.Tensor) -> None:
        """Sum the step's buffer over the ranks: one all-reduce per logged step, after the check
        that the buffers line up."""
        import torch.distributed as dist

        self.agree(step, True, buffer.device)
        dist.all_reduce(buffer)
