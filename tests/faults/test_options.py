"""Option values gradscope cannot use are exit 2 with a message naming the option, the value given
and what is expected, before the model runs."""

from __future__ import annotations

import pytest

from tests.faults.cli import SIGMOID, assert_exit, files, invoke, model_file

CASES = {
    "an input shape too large to hold": (["--input-shape", "99999999999,99999999999"],
                                         ["--input-shape", "'99999999999,99999999999'", "8,3,64,64"]),
    "a seed beyond 64 bits": (["--seed", str(2**70)], ["--seed", str(2**70), "0 to 2**63 - 1"]),
    "a negative seed": (["--seed", "-1"], ["--seed", "-1", "0 to 2**63 - 1"]),
    "a dtype without a shape": (["--input-dtype", "long"], ["--input-dtype long", "without --input-shape"]),
    "an unknown dtype": (["--input-shape", "4,32", "--input-dtype", "complex"], ["--input-dtype", "'complex'", "float32"]),
    "lr nan": (["--steps", "2", "--lr", "nan"], ["--lr", "nan", "positive finite number"]),
    "lr inf": (["--steps", "2", "--lr", "inf"], ["--lr", "inf", "positive finite number"]),
    "lr negative": (["--steps", "2", "--lr", "-0.1"], ["--lr", "-0.1", "positive finite number"]),
    "lr zero": (["--steps", "2", "--lr", "0"], ["--lr", "0.0", "positive finite number"]),
    "tolerance nan": (["--tolerance", "nan"], ["--tolerance", "nan", "finite number >= 0"]),
    "momentum one": (["--momentum", "1"], ["--momentum", "1.0", "from 0 up to (not including) 1", "such as 0.9"]),
    "momentum negative": (["--momentum", "-0.1"], ["--momentum", "-0.1", "from 0 up to (not including) 1"]),
    "momentum nan": (["--momentum", "nan"], ["--momentum", "nan", "from 0 up to (not including) 1"]),
    "weight decay negative": (["--weight-decay", "-1"], ["--weight-decay", "-1.0", "finite number >= 0", "such as 0.01"]),
    "weight decay inf": (["--weight-decay", "inf"], ["--weight-decay", "inf", "finite number >= 0"]),
    "clip zero": (["--clip", "0"], ["--clip", "0.0", "positive finite number", "gradient-norm limit such as 1.0"]),
    "clip inf": (["--clip", "inf"], ["--clip", "inf", "positive finite number"]),
    "negative probe steps": (["--probe-steps", "-1"], ["--probe-steps", "-1", "integer >= 0", "0: no probe"]),
    "an unknown optimizer": (["--optimizer", "lion"], ["--optimizer", "'lion'", "sgd", "adamw"]),
    "an unknown fail-on": (["--fail-on", "at_risk"], ["--fail-on", "'at_risk'", "at-risk", "fails"]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["diagnose", "check"])
def test_a_bad_option_value_is_exit_2_naming_it(tmp_path, case, command):
    args, expected = CASES[case]
    if command == "diagnose" and "--tolerance" in args:
        pytest.skip("--tolerance is an option of check only")
    path = model_file(tmp_path, SIGMOID)
    before = files(tmp_path)
    result = invoke(command, path, *args)
    assert_exit(result, 2)
    message = " ".join(result.output.replace("│", " ").split())
    for text in expected:
        assert text in message, message
    assert "frame #" not in message and "Exception raised from" not in message  # no C++ backtrace
    assert files(tmp_path) == before
