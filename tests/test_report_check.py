"""The headless-browser check's pieces that need no browser: reading the results of a
Snakemake report, the view-opening copy, blank-screenshot detection, the choice of the
MLflow child run; and, with chromium (required under CI=true), one real screenshot and the
MLflow UI's page checks run on stand-in pages over the DevTools protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require
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
    require(browser, "no chromium (apt-get install chromium)")
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


def _run(rid, status="FINISHED", parent="p0", rule="train", step=0, start=0):
    tags = [{"key": "rule", "value": rule}]
    if parent:
        tags.append({"key": "mlflow.parentRunId", "value": parent})
    return {"info": {"run_id": rid, "run_name": f"{rule}[{rid}]", "status": status,
                     "start_time": start},
            "data": {"tags": tags, "metrics": [{"key": "x", "value": 1.0, "step": 0},
                                               {"key": "loss", "value": 0.5, "step": step}]}}


def test_mlflow_target_picks_a_child_with_a_curve_and_a_figure(monkeypatch):
    runs = [_run("p0", parent=None, rule="all", step=5),     # the parent: not a child
            _run("a", status="FAILED", step=5),             # not finished
            _run("b", step=0),                              # no metric over steps
            _run("c", step=7),                              # no figure
            _run("d", rule="provision", step=19)]           # this one
    figures = {"d": ["figures/sft_loss.png", "figures/notes.txt"]}

    def fake(url, payload=None, timeout=30):
        if "experiments/get-by-name" in url:
            return {"experiment": {"experiment_id": "7", "name": "smoke"}}
        if url.endswith("runs/search"):
            assert payload["experiment_ids"] == ["7"]
            return {"runs": runs}
        rid = url.split("run_id=")[1].split("&")[0]
        return {"files": [{"path": f} for f in figures.get(rid, [])]}

    monkeypatch.setattr(rc, "_get_json", fake)
    got = rc.mlflow_target("http://x", "smoke")
    assert got == {"experiment_id": "7", "experiment": "smoke", "run_id": "d",
                   "run_name": "provision[d]", "parent_id": "p0", "metric": "loss",
                   "figure": "figures/sft_loss.png"}
    with pytest.raises(RuntimeError, match="no finished child run of rule train"):
        rc.mlflow_target("http://x", "smoke", rule="train")
    pages = [name for name, _, _ in rc.mlflow_checks("http://x", got)]
    assert pages == ["mlflow_experiment", "mlflow_run", "mlflow_metrics", "mlflow_artifact"]


# Stand-ins for the MLflow UI's pages: what each check looks for, present or not.
_RUNS = """<html><body><p>smoke</p><div role="row"><a href="#/experiments/7/runs/p0">parent</a>
<button onclick="document.body.insertAdjacentHTML('beforeend',
 '<a href=&quot;#/experiments/7/runs/d&quot;>child</a>')">+</button></div></body></html>"""
_CHART = """<html><body><div style="margin-top:1500px"><div><div>loss</div>
<div class="js-plotly-plot" style="width:300px;height:200px"><svg width="300" height="200">
<path class="js-line" d="%s" stroke="blue" fill="none"/></svg></div></div></div></body></html>"""
_FIGURE = """<html><body><h3>figures/sft_loss.png</h3>
<img src="data:image/png;base64,%s" width="%d"></body></html>"""


@pytest.mark.browser
def test_mlflow_page_checks_in_chromium(tmp_path):
    """The JavaScript checks of the MLflow pages pass on pages that show what they look
    for and fail on pages that do not (one chromium, DevTools protocol)."""
    import base64
    import io

    from pipeline.cdp import Browser

    browser = rc.find_chromium()
    require(browser, "no chromium (apt-get install chromium)")
    target = {"experiment_id": "7", "experiment": "smoke", "run_id": "d", "run_name": "r",
              "parent_id": "p0", "metric": "loss", "figure": "figures/sft_loss.png"}
    js = {name: check for name, _, check in rc.mlflow_checks("http://x", target)}
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), np.uint8)).save(
        buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    pages = {"runs": _RUNS, "line": _CHART % "M0,100L50,20L100,60", "dot": _CHART % "M0,100",
             "figure": _FIGURE % (png, 200), "thumb": _FIGURE % (png, 20)}
    for name, html in pages.items():
        (tmp_path / f"{name}.html").write_text(html)
    with Browser(browser, width=800, height=600) as b:
        def run(page, check, timeout=10):
            b.goto((tmp_path / f"{page}.html").as_uri())
            return b.wait_for(js[check], timeout=timeout, interval=0.2)

        seen = run("runs", "mlflow_experiment")
        assert seen == {"ok": True, "parent_listed": True, "child_listed": True}
        seen = run("line", "mlflow_metrics")
        assert seen["ok"] and seen["points"] == 3 and seen["visible"]  # scrolled into view
        assert not run("dot", "mlflow_metrics", timeout=1)["ok"]  # one point: no line
        seen = run("figure", "mlflow_artifact")
        assert seen["ok"] and seen["size"] == [200, 150]
        assert not run("thumb", "mlflow_artifact", timeout=1)["ok"]  # 20 px: not "visible"
        assert not b.wait_for("nonexistent.x", timeout=0.5)["ok"]  # JS error: not ok
        assert not rc.blank(b.screenshot(tmp_path / "shot.png"))
