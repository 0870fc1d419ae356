"""Outputs that cannot be written (a file where a directory is needed, a directory where a file is
expected, a read-only or full filesystem): exit 2 naming the path and the reason, and whatever was
there before is left whole, with no temporary file behind."""

from __future__ import annotations

import pytest

from tests.faults.cli import SIGMOID, assert_exit, files, invoke, model_file


# (command and its options with OUT where the output goes, environment)
OUTPUTS = {
    "diagnose --json": (["diagnose", "MODEL", "--json", "OUT"], {}),
    "diagnose --html": (["diagnose", "MODEL", "--html", "OUT"], {}),
    "diagnose --markdown": (["diagnose", "MODEL", "--markdown", "OUT"], {}),
    "check --json": (["check", "MODEL", "--json", "OUT"], {}),
    "check --junit": (["check", "MODEL", "--junit", "OUT"], {}),
    "check --update-baseline": (["check", "MODEL", "--baseline", "OUT", "--update-baseline"], {}),
    "check GITHUB_STEP_SUMMARY": (["check", "MODEL"], {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": "OUT"}),
    "summary --json": (["summary", "RUN", "--json", "OUT"], {}),
    "summary --markdown": (["summary", "RUN", "--markdown", "OUT"], {}),
    "report -o": (["report", "RUN", "-o", "OUT"], {}),
}


def _invoke(output: str, model, run, out):
    args, env = OUTPUTS[output]
    fill = {"MODEL": model, "RUN": run, "OUT": out}
    return invoke(*(fill.get(a, a) for a in args), env={k: str(fill.get(v, v)) for k, v in env.items()})


def _said(result, *texts: str) -> None:
    message = " ".join(result.output.split())
    for text in texts:
        assert text in message, message


@pytest.mark.parametrize("output", list(OUTPUTS))
@pytest.mark.parametrize("where", ["under a file", "a directory"])
def test_an_output_path_that_cannot_be_a_file_is_exit_2(tmp_path, run_dir, output, where):
    model = model_file(tmp_path / "src", SIGMOID)
    (tmp_path / "notes.txt").write_text("keep me")
    out = tmp_path / "notes.txt" / "out.file" if where == "under a file" else tmp_path / "src"
    before = files(tmp_path)
    result = _invoke(output, model, run_dir, out)
    assert_exit(result, 2)
    _said(result, f"to {out}:", "Not a directory" if where == "under a file" else "Is a directory")
    assert files(tmp_path) == before


@pytest.mark.parametrize("output", list(OUTPUTS))
def test_an_output_on_a_read_only_filesystem_is_exit_2(tmp_path, run_dir, read_only_dir, output):
    if read_only_dir is None:
        pytest.skip("needs a read-only tmpfs (mount rights)")
    model = model_file(tmp_path / "src", SIGMOID)
    before = files(tmp_path)
    result = _invoke(output, model, run_dir, read_only_dir / "out.file")
    assert_exit(result, 2)
    _said(result, f"to {read_only_dir / 'out.file'}:", "Read-only file system")
    assert files(tmp_path) == before


@pytest.mark.parametrize("output", list(OUTPUTS))
def test_a_full_disk_keeps_the_previous_output_whole(tmp_path, run_dir, disk, output):
    if not disk.real:
        pytest.skip("needs a real tmpfs (mount rights)")
    model = model_file(tmp_path / "src", SIGMOID)
    out = disk.path / "out.file"
    out.write_text("the previous output\n")
    disk.fill()
    try:
        result = _invoke(output, model, run_dir, out)
        assert_exit(result, 2)
        _said(result, f"to {out}:", "No space left on device")
        assert out.read_text() == "the previous output\n"
        assert sorted(p.name for p in disk.path.iterdir() if not p.name.startswith("filler-")) == ["out.file"]
    finally:
        disk.free()


def test_a_baseline_that_is_a_directory_is_exit_2(tmp_path):
    model = model_file(tmp_path, SIGMOID)
    before = files(tmp_path)
    result = invoke("check", model, "--baseline", tmp_path)
    assert_exit(result, 2)
    _said(result, f"Cannot read the baseline {tmp_path}: Is a directory")
    assert files(tmp_path) == before


def test_a_step_summary_keeps_what_other_steps_wrote(tmp_path):
    model = model_file(tmp_path, SIGMOID)
    summary = tmp_path / "summary.md"
    summary.write_text("# an earlier step\n")
    result = invoke("check", model, env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert_exit(result, 1)
    text = summary.read_text()
    assert text.startswith("# an earlier step\n") and "Gradient-flow check **failed**" in text


@pytest.mark.parametrize("output", [o for o in OUTPUTS if "GITHUB" not in o])
def test_an_output_over_what_the_command_reads_is_exit_2_before_any_work(tmp_path, run_dir, output):
    model = model_file(tmp_path / "src", SIGMOID)
    reads = run_dir / "meta.json" if "RUN" in OUTPUTS[output][0] else model
    before = {p: p.read_bytes() for p in [model, *run_dir.rglob("*")] if p.is_file()}
    result = _invoke(output, model, run_dir, reads)
    assert_exit(result, 2)
    _said(result, "would overwrite it. Give another path.")
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("output", list(OUTPUTS))
def test_an_output_through_a_symlink_updates_its_target_and_keeps_the_link(tmp_path, run_dir, output):
    model = model_file(tmp_path / "src", SIGMOID)
    shared = tmp_path / "shared" / "out.file"
    shared.parent.mkdir()
    shared.write_text("the previous output\n")
    link = tmp_path / "link.file"
    link.symlink_to(shared)
    result = _invoke(output, model, run_dir, link)
    assert result.exit_code in (0, 1), result.output
    assert link.is_symlink() and link.resolve() == shared.resolve()
    assert shared.read_text() != "the previous output\n"
    assert [p.name for p in shared.parent.iterdir()] == ["out.file"]  # no temporary file left


def test_an_output_to_a_named_pipe_is_written_into_it_not_over_it(tmp_path, run_dir):
    import os
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    result = _invoke("summary --json", None, run_dir, fifo)
    reader.join(timeout=30)
    assert result.exit_code in (0, 1), result.output
    assert got and '"findings"' in got[0]
    assert fifo.is_fifo()
