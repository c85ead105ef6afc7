"""The report as a browser shows it (issue 21): headless Chromium (the Debian package ``chromium``) loads it with
no console message or failed resource, every image decodes and is shown at its natural size or larger, and a
screenshot of it renders (docs/report.png in the README is one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

# Put first in <head> of a copy of the report (the report itself has no script): it records every error event
# (a script error, an image or other resource that failed) and console.error/warn call, and once the page has
# loaded, each image's natural and shown size, into <body data-probe="...">, which --dump-dom prints.
PROBE = """<script>
window.__problems = [];
window.addEventListener("error", e => window.__problems.push("error: " + (e.message || (e.target && e.target.tagName) || "?")), true);
for (const level of ["error", "warn"]) {
  const original = console[level];
  console[level] = (...args) => { window.__problems.push(level + ": " + args.join(" ")); original.apply(console, args); };
}
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({alt: i.alt, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
                                               shown: [i.getBoundingClientRect().width, i.getBoundingClientRect().height]}));
  document.body.setAttribute("data-probe", JSON.stringify({problems: window.__problems, images}));
});
</script>"""

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    r = run_cli(
        "train",
        f"track.root={root / 'runs'}",
        "name=shown",
        "trainer.epochs=2",
        "model.width=8",
        "trainer.progress=false",
        "track.backends=[]",
        cwd=root,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = root / "report.html"
    r = run_cli("report", str(root / "runs" / "shown"), "--out", str(out), cwd=root)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.timeout(240)
def test_the_report_loads_without_errors_and_shows_images_at_natural_size_or_larger(report, tmp_path):
    probed = tmp_path / "probed.html"
    text = report.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    done = chromium("--window-size=1280,2000", "--dump-dom", probed.as_uri())
    assert "data-probe=" in done.stdout, done.stderr[-3000:]
    import html

    attr = done.stdout.split('data-probe="', 1)[1].split('"', 1)[0]
    probe = json.loads(html.unescape(attr))
    assert probe["problems"] == []
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    images = probe["images"]
    assert {"Confusion matrix", "Sample predictions", "A training batch"} <= {i["alt"] for i in images}
    for image in images:
        assert image["complete"] and image["natural"][0] > 0, image  # decoded
        assert image["shown"][0] >= image["natural"][0] - 0.5 and image["shown"][1] >= image["natural"][1] - 0.5, image
        assert image["natural"][0] >= 480, image  # small pictures were scaled up (nearest neighbour) before embedding


@pytest.mark.timeout(240)
def test_a_screenshot_of_the_report_renders(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,1800", report.as_uri())
    colour = Image.open(shot).convert("RGB")
    image = colour.convert("L")
    assert image.size == (1280, 1800)
    histogram = image.histogram()
    assert max(histogram) < 0.98 * sum(histogram), "the rendered report is blank"
    assert sum(histogram[:128]) > 0.002 * sum(histogram)  # dark pixels: text, axes, curves, digits
    if os.environ.get("TRAINYARD_WRITE_SCREENSHOT"):  # refresh the README's picture: TRAINYARD_WRITE_SCREENSHOT=1 pytest this file
        target = Path(__file__).resolve().parents[2] / "docs" / "report.png"
        colour.save(target, optimize=True)
