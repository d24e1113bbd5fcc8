"""The headless-browser check's pieces that need no browser: reading the results of a
Snakemake report, the view-opening copy, blank-screenshot detection; and one real
screenshot when chromium is installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import report_check as rc

FAKE = """<html><body><script>var results = new Array(3);</script>
<script id="results">
var results = {"r/compare/figures/accuracy.png": {"name": "accuracy.png", "mime_type":
"image/png", "data_uri": "data:image/png;base64,AAAA"}};
</script></body></html>"""


def test_report_results_and_view(tmp_path):
    report = tmp_path / "report.html"
    report.write_text(FAKE)
    assert rc.report_results(report) == {"accuracy.png"}
    view = rc.report_view(report, "Comparison", "accuracy.png", tmp_path / "view.html")
    text = view.read_text()
    assert text.index(json.dumps("accuracy.png")) < text.index("</body>")
    assert "app.setView" in text and json.dumps("Comparison") in text
    (tmp_path / "other.html").write_text("<html></html>")
    with pytest.raises(ValueError, match="not a Snakemake HTML report"):
        rc.report_results(tmp_path / "other.html")


def test_blank(tmp_path):
    Image.new("RGB", (50, 40), "white").save(tmp_path / "white.png")
    noise = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    assert rc.blank(tmp_path / "white.png") and not rc.blank(tmp_path / "noise.png")


@pytest.mark.browser
def test_chromium_screenshot(tmp_path):
    browser = rc.find_chromium()
    if browser is None:
        pytest.skip("no chromium (apt-get install chromium)")
    page = tmp_path / "page.html"
    page.write_text("<html><body><h1>report check</h1><p style='color:red'>text</p>"
                    "<script>document.body.append('rendered by JS')</script></body></html>")
    png = rc.screenshot(browser, page.as_uri(), tmp_path / "shot.png", width=400, height=300)
    assert not rc.blank(png)
    with Image.open(png) as im:
        assert im.size == (400, 300)


def test_view_names_unique():
    names = rc.view_names(rc.REPORT_VIEWS)
    assert len(set(names)) == len(names) == len(rc.REPORT_VIEWS)
    assert {"report_tables", "report_claims", "report_claims_png"} <= set(names)
