"""DDP and FSDP2 on the CPU with torchrun and gloo: on every rank, the statistics equal a
single-process float64 reference on the concatenated batch; only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.test_monitor import assert_close

WORKER = Path(__file__).with_name("run_worker.py")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def torchrun(mode: str, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(WORKER), mode, str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if mode == "mismatch" or mode.startswith("spike"):
        return {}
    return json.loads((out / f"result-{mode}.json").read_text())


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_statistics_equal_the_single_process_reference(tmp_path, mode):
    result = torchrun(mode, tmp_path)
    assert result["world"] == 2 and result["steps"] == [0, 1]
    expected = {tuple(k.split("|")): v for k, v in result["expected"].items()}
    got = {tuple(k.split("|")): v for k, v in result["got"].items()}
    assert set(got) == set(expected)
    assert_close(got, expected)
    # every rank holds the same (combined) statistics
    other = json.loads((tmp_path / f"rank1-{mode}.json").read_text())
    assert other["got"] == pytest.approx(result["got"], rel=1e-12)
    assert other["run_dir"] is None  # rank 1 writes nothing
    # rank 0 wrote the run directory; names are those of the unwrapped model
    run = tmp_path / f"run-{mode}"
    assert (run / "meta.json").exists() and (run / "findings.json").exists()
    assert ("0.weight", "grad_norm") in got


def test_ranks_that_record_different_statistics_skip_steps_without_hanging(tmp_path):
    torchrun("mismatch", tmp_path)  # would time out if a rank were left in a collective
    for rank in (0, 1):
        result = json.loads((tmp_path / f"mismatch-rank{rank}.json").read_text())
        # the layouts diverged at step 1 and stay apart: later steps are skipped too, on both ranks
        assert result["steps"] == [0], rank
        assert any("do not line up" in w for w in result["warnings"]), result["warnings"]


@pytest.mark.parametrize("guard", [False, True], ids=["detect", "guard"])
def test_a_spike_on_one_rank_is_named_on_rank_0_and_the_guard_skips_it_everywhere(tmp_path, guard):
    """Rank 1's batch at step 120 is 30x too large: its own loss spikes, and the averaged gradient
    on both ranks. Rank 0 gathers rank 1's detection at the next logged step (150) and names rank
    1 as the one whose loss spiked. Under guard="skip" both ranks skip that update (rank 0 because
    rank 1 asked), so the replicas stay identical."""
    torchrun("spike-guard" if guard else "spike", tmp_path)
    name = "guard" if guard else "plain"
    ranks = [json.loads((tmp_path / f"spike-{name}-rank{r}.json").read_text()) for r in (0, 1)]
    [event] = [e for e in ranks[0]["events"] if e["step"] == 120]
    assert event["rank"] == 1 and 1 in event["ranks"] and "loss spike" in event["alarms"]
    assert "rank 1" in event["text"]
    # rank 1 detected its own spike; its events are not merged with anybody's
    assert any(e["step"] == 120 and "loss spike" in e["alarms"] for e in ranks[1]["events"])
    if guard:
        assert ranks[0]["skipped"] == [120] and ranks[1]["skipped"] == [120]
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP replicas agree, skip or not


def test_a_spike_only_one_rank_saw_is_skipped_on_every_rank(tmp_path):
    """Rank 1 alone reports a loss 1000x too large at step 120; the gradients stay sane, so rank
    0's own detector sees nothing. The guard's skip is agreed by all ranks, so rank 0 skips that
    update too and the DDP replicas stay identical (deciding alone, rank 1 would fall one update
    behind)."""
    torchrun("spike-local", tmp_path)
    ranks = [json.loads((tmp_path / f"spike-local-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[1]["skipped"] == [120] and ranks[0]["skipped"] == [120]
    assert not any(e["step"] == 120 and "loss spike" in e["alarms"] and e["rank"] == 0 for e in ranks[0]["events"])
    assert ranks[0]["params"] == ranks[1]["params"]
