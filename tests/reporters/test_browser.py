"""The HTML report in a real browser (headless Chromium, Debian's package): the plots render, the
page loads nothing from the network, and a screenshot shows more than a blank page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

import gradscope
from gradscope.reporters.html import write_html
from gradscope.rules import find_rule

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=10000"]

# requests Chromium makes for itself at start-up, whatever the page (updates, clock, accounts)
BROWSER_OWN = re.compile(r"^https?://([a-z0-9-]+\.)*(google\.com|googleapis\.com|gvt1\.com)(/|$)")

PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const names = performance.getEntriesByType("resource").map(e => e.name);
  const out = document.createElement("pre"); out.id = "gs-probe";
  const figures = [...document.querySelectorAll(".js-plotly-plot")];
  out.textContent = JSON.stringify({resources: names, figures: figures.length,
    drawn: figures.filter(gd => gd._fullLayout && gd.querySelector(".main-svg")).length,
    points: figures.map(gd => gd.querySelectorAll(".point, .hm, path.js-line").length)});
  document.body.appendChild(out);
}, 500));</script>"""


def chromium(tmp_path, *args: str) -> str:
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                            capture_output=True, text=True, timeout=120)
    return result.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("html")
    torch.manual_seed(0)
    report = gradscope.diagnose(**find_rule("vanishing-gradient").pair(True), steps=5)
    path = write_html(report, tmp_path / "report.html", "deep sigmoid, 5 steps")
    return tmp_path, path


def test_plots_render_and_nothing_is_fetched(page):
    tmp_path, path = page
    probed = tmp_path / "probed.html"
    probed.write_text(path.read_text().replace("</body>", PROBE + "</body>"))
    netlog = tmp_path / "net.json"
    dom = chromium(tmp_path, f"--log-net-log={netlog}", "--dump-dom", probed.as_uri())
    probe = json.loads(re.search(r'<pre id="gs-probe">(.*?)</pre>', dom).group(1).replace("&quot;", '"'))
    assert probe["figures"] == probe["drawn"] >= 4, probe  # plotly drew every figure
    assert all(n > 0 for n in probe["points"]), probe  # with marks in each
    assert probe["resources"] == []  # the page fetched nothing: no script, style, font or image
    urls = set(re.findall(r'"url":"([^"]+)"', netlog.read_text()))
    from_page = {u for u in urls if not u.startswith(("file:", "data:", "chrome")) and not BROWSER_OWN.match(u)}
    assert from_page == set()


def test_screenshot_is_not_blank(page):
    from PIL import Image

    tmp_path, path = page
    shot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1400,2400", f"--screenshot={shot}", path.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2400)
    colours = image.resize((140, 240)).getcolors(maxcolors=100000)
    assert len(colours) > 200  # text, plot lines, heatmaps: far from a blank page
    non_background = sum(n for n, rgb in colours if rgb not in ((255, 255, 255), (246, 248, 250)))
    assert non_background / (140 * 240) > 0.2
