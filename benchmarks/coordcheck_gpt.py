"""The coordinate check on the small GPT of tests/test_coordcheck.py, in SP and in µP under Adam:
times each check (4 widths x 3 seeds x 5 steps) and writes their HTML reports, from which
docs/img/coordcheck-gpt-*.png are rendered (docs/coordcheck.md).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/coordcheck_gpt.py OUT_DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from gradscope.reporters.html import write_coordcheck_html
from tests.test_coordcheck import gpt_check

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    for mup, name in ((False, "sp"), (True, "mup")):
        start = time.perf_counter()
        report = gpt_check(mup)
        elapsed = time.perf_counter() - start
        write_coordcheck_html(report, out / f"coordcheck-gpt-{name}.html", f"GPT in {'µP' if mup else 'SP'} under Adam")
        print(f"{name}: {elapsed:.1f} s, findings: {[f.rule for f in report.findings]}")
