"""The run reports in a real browser: headless Chromium loads report.html from disk.

Checks that every picture of the report loads (``complete`` and a natural
width above 0 once the page has loaded) and that the headline metrics the
browser shows equal ``metrics.json``. A screenshot of each report goes to
``test-artifacts/``. Chromium comes from the system's packages (``make test``
installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import PROJECT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = PROJECT / "test-artifacts"

#: Appended to a copy of the report: after the load event, one element lists the pictures.
CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); })
                     .map(function (img) { return img.getAttribute("src"); });
  var result = document.createElement("div");
  result.id = "browser-check";
  result.setAttribute("data-images", String(images.length));
  result.setAttribute("data-broken", JSON.stringify(broken));
  document.body.appendChild(result);
});
</script>
"""


class _ReportDom(HTMLParser):
    """The metric cells and the check element of a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.metrics, self.check, self._key, self._text = {}, None, None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "metric" in (attrs.get("class") or "").split():
            self._key, self._text = attrs.get("data-key"), []
        elif attrs.get("id") == "browser-check":
            self.check = attrs

    def handle_data(self, data):
        if self._key is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._key is not None:
            self.metrics[self._key] = "".join(self._text).strip()
            self._key = None


def _chromium(profile: Path, *args) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--allow-file-access-from-files",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *map(str, args),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def check_in_browser(run: Path, tmp_path: Path, name: str, keys) -> dict:
    """Load ``run/report.html`` in Chromium; check its pictures and headline; return the metrics shown."""
    html = (run / "report.html").read_text()
    checked = run / "browser-check.html"
    checked.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>") if "</body>" in html else html + CHECK_SCRIPT)
    result = _chromium(tmp_path / f"profile-{name}", "--dump-dom", checked.as_uri())
    checked.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    dom = _ReportDom()
    dom.feed(result.stdout)
    assert dom.check is not None, f"the page never finished loading: {result.stdout[:500]!r}"
    assert int(dom.check["data-images"]) >= 1
    assert json.loads(dom.check["data-broken"]) == [], "pictures that did not load"

    saved = json.loads((run / "metrics.json").read_text())
    for key in keys:
        assert dom.metrics[key] == str(saved[key]), (key, dom.metrics[key], saved[key])

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report-{name}.png"
    shot.unlink(missing_ok=True)
    result = _chromium(
        tmp_path / f"profile-{name}-shot",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        (run / "report.html").as_uri(),
    )
    assert result.returncode == 0 and shot.stat().st_size > 10_000, result.stderr[-2000:]
    return dom.metrics


@pytest.fixture(scope="module", autouse=True)
def _need_chromium():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed; `make browser` (part of `make test`) installs it")


def test_train_cnn_report_in_chromium(train_cnn_run, tmp_path):
    shown = check_in_browser(train_cnn_run, tmp_path, "train_cnn", ("test_accuracy", "test_loss"))
    assert 0 <= float(shown["test_accuracy"]) <= 1


def test_transfer_report_in_chromium(transfer_run, tmp_path):
    run, _ = transfer_run
    shown = check_in_browser(run, tmp_path, "transfer", ("accuracy", "f1", "model_name", "image_size"))
    assert shown["model_name"] == "InceptionV3"
