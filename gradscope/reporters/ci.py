"""CI output for ``gradscope check``, verdict first: GitHub Actions workflow commands and step
summary, and JUnit XML for other CI systems."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from gradscope.atomic import append_atomic, write_atomic
from gradscope.baseline import Comparison
from gradscope.report import Report
from gradscope.reporters.escape import markdown_text, show_controls
from gradscope.reporters.markdown import report_markdown
from gradscope.reporters.verdict import comparison_lines, verdict_text
from gradscope.rules import DIAGNOSE_RULES
from gradscope.verdict import TRAINS


def _escape_data(text: str) -> str:
    return show_controls(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _verdict_annotation(report: Report, comparison: Comparison, file: str) -> list[str]:
    """The verdict: an error when it fails the check, a warning when it is not ``trains``, else a notice."""
    text = verdict_text(report)
    if text is None:
        return []
    against = comparison_lines(comparison)
    level = "error" if any(fails for fails, _ in against) else "notice" if text.label == TRAINS else "warning"
    message = " ".join([text.headline + ".", *(line for _, line in against), *text.details])
    return [f"::{level} file={_escape_property(file)},title={_escape_property(f'gradscope verdict: {text.label}')}::"
            f"{_escape_data(message)}"]


def github_annotations(report: Report, comparison: Comparison, file: str) -> list[str]:
    """``::error``/``::warning`` lines, the verdict first: failures as errors, other findings as warnings."""
    lines = _verdict_annotation(report, comparison, file)
    failing = {id(f) for f in comparison.new_findings}
    for f in report.findings:
        level = "error" if id(f) in failing else "warning"
        if level == "warning" and f.severity == "info":
            continue
        title = _escape_property(f"{f.code} {f.rule}")
        lines.append(f"::{level} file={_escape_property(file)},title={title}::{_escape_data(f.message)}")
    if comparison.moved:
        text = "; ".join(f"{layer or '(model)'}: {old:.2e} -> {new:.2e}" for layer, (old, new) in list(comparison.moved.items())[:10])
        lines.append(f"::error file={_escape_property(file)},title=gradient-flow regression::"
                     f"{_escape_data(f'{len(comparison.moved)} layers moved against the baseline: {text}')}")
    return lines


def append_step_summary(report: Report, comparison: Comparison, title: str) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    outcome = "**failed**" if comparison.failed else "passed"
    against = "".join(f"- {'**FAIL** ' if fails else ''}{markdown_text(line)}\n" for fails, line in comparison_lines(comparison))
    text = f"{report_markdown(report, title)}\nGradient-flow check {outcome}.\n" + (f"\n{against}" if against else "")
    if comparison.moved:
        text += "\n| layer | baseline signal | now |\n| --- | --- | --- |\n" + "".join(
            f"| {markdown_text(layer or '(model)')} | {old:.2e} | {new:.2e} |\n" for layer, (old, new) in comparison.moved.items())
    append_atomic(path, text)


def write_junit(report: Report, comparison: Comparison, path: str | Path, name: str) -> None:
    """The verdict first, then one test case per rule, plus one for the signal against the baseline.
    Text from the model (layer names in messages) has its control characters escaped: XML 1.0
    cannot hold them."""
    failing = {id(f) for f in comparison.new_findings}
    name = show_controls(name)
    suite = ET.Element("testsuite", name=f"gradscope {name}")
    failures = 0
    case = ET.SubElement(suite, "testcase", classname=f"gradscope.{name}", name="verdict")
    text = verdict_text(report)
    said = "\n".join(show_controls(line) for line in ([text.headline, *text.details] if text else []))
    fails = [line for failed, line in comparison_lines(comparison) if failed]
    if fails:
        failures += 1
        ET.SubElement(case, "failure", message=show_controls(" ".join(fails)), type="verdict").text = said
    elif said:
        ET.SubElement(case, "system-out").text = said
    # the training-run rules judge a monitored run, not the check's diagnose: not listed there
    rules = [r for r in DIAGNOSE_RULES if not r.needs_training_run or report.pulse is not None]
    for rule in rules:
        case = ET.SubElement(suite, "testcase", classname=f"gradscope.{name}", name=f"{rule.code} {rule.slug}")
        for f in report.findings:
            if f.rule != rule.slug:
                continue
            if id(f) in failing:
                failures += 1
                ET.SubElement(case, "failure", message=show_controls(f.message), type=f.severity).text = \
                    "\n".join(show_controls(line) for line in f.fix.splitlines())
            else:
                ET.SubElement(case, "system-out").text = show_controls(f"{f.severity}: {f.message}")
    case = ET.SubElement(suite, "testcase", classname=f"gradscope.{name}", name="signal against baseline")
    if comparison.moved:
        failures += 1
        ET.SubElement(case, "failure", message=f"{len(comparison.moved)} layers moved").text = "\n".join(
            show_controls(f"{layer or '(model)'}: {old:.3e} -> {new:.3e}") for layer, (old, new) in comparison.moved.items())
    suite.set("tests", str(len(rules) + 2))
    suite.set("failures", str(failures))
    write_atomic(path, ET.tostring(suite, encoding="utf-8", xml_declaration=True))
