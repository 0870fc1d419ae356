"""examples/gan.py trains a generator and a discriminator in turn, one monitor each, and both
come out healthy with complete run directories: at its 300 steps the discriminator's loss has
climbed back to its equilibrium, which the loss-rising alarm (off in the example) reads as a run
being lost."""

from __future__ import annotations

import pytest

from gradscope.rundir import read_history, read_meta
from tests.examples.scripts import example

pytest.importorskip("sklearn")


def test_gan_example(tmp_path, capsys):
    with example("gan") as module:
        monitors = module.main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    for name in ("discriminator", "generator"):
        assert f"{name}: 60 logged steps, 0 findings" in out, out
        assert read_meta(tmp_path / name)["status"] == "complete"
        assert sorted(read_history(tmp_path / name).step.unique().tolist()) == list(range(0, 300, 5))
    # each run holds its own model's layers only
    types = {name: set(mon.layers.type) for name, mon in monitors.items()}
    assert "Sigmoid" in types["discriminator"] and "BatchNorm2d" not in types["discriminator"]
    assert "BatchNorm2d" in types["generator"] and "Sigmoid" not in types["generator"]
