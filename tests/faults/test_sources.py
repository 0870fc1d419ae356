"""Model files are read the way Python reads them: a UTF-8 BOM and a coding line work; a file that
cannot be decoded is exit 2 naming the file."""

from __future__ import annotations

import pytest

from tests.faults.cli import assert_exit, invoke

MODEL = b"import torch.nn as nn\n\ndef build_model():\n    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))\n"

VALID = {
    "a UTF-8 BOM": b"\xef\xbb\xbf" + MODEL,
    "a latin-1 coding line": b"# -*- coding: latin-1 -*-\nNAME = '\xe9t\xe9'\n" + MODEL,
    "a utf-8 coding line": "# coding: utf-8\nNAME = 'été'\n".encode() + MODEL,
}

INVALID = {
    "bytes that are not UTF-8": (b"NAME = '\xff\xfe'\n" + MODEL, "cannot be decoded"),
    "an unknown coding": (b"# coding: no-such-codec\n" + MODEL, "unknown encoding: no-such-codec"),
    "a BOM with a latin-1 coding line": (b"\xef\xbb\xbf# coding: latin-1\n" + MODEL, "cannot be decoded"),
}


@pytest.mark.parametrize("case", list(VALID))
def test_a_valid_python_file_loads(tmp_path, case):
    path = tmp_path / "model.py"
    path.write_bytes(VALID[case])
    result = invoke("diagnose", path)
    assert_exit(result, 0)
    assert path.read_bytes() == VALID[case]


@pytest.mark.parametrize("case", list(INVALID))
def test_an_undecodable_file_is_exit_2_naming_it(tmp_path, case):
    source, reason = INVALID[case]
    path = tmp_path / "model.py"
    path.write_bytes(source)
    result = invoke("diagnose", path)
    assert_exit(result, 2)
    message = " ".join(result.output.split())
    assert str(path) in message and reason in message
    assert path.read_bytes() == source
