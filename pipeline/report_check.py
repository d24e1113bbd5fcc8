"""Look at the HTML report and the MLflow UI in a real headless browser.

    python -m pipeline.report_check --report report.html --mlflow-db results/mlflow.db \\
        --out shots/

Screenshots (PNG, Debian ``chromium --headless --screenshot``):

- ``report_home.png``: the Snakemake report as it opens (workflow description, rule graph);
- ``report_<result>.png``: the report with one result opened in its category (the
  comparison figures and tables) — a copy of the report with a small script appended that
  does what a click in the menu does (the report keeps no view state in its URL);
- ``mlflow_experiment.png``, ``mlflow_run.png``, ``mlflow_metrics.png``,
  ``mlflow_artifact.png``: the MLflow UI (``mlflow ui`` on the SQLite store, started on a
  free port and stopped afterwards) driven over the DevTools protocol (:mod:`pipeline.cdp`).
  One child run is picked (:func:`mlflow_target`: finished, a metric logged over steps, a
  PNG under ``figures/``; ``--run-rule`` picks its rule) and each page must pass a check in
  the page before its screenshot (:func:`mlflow_checks`): the experiment's runs table, the
  parent's row expanded, lists the run; the run page its name and id; the *Model metrics*
  tab a chart of the metric with a line through at least two points, in view; the
  *Artifacts* tab the figure's path and a loaded image of it (at least 100 px), in view.

Each screenshot is checked not to be blank (a page that failed to render is one colour);
``index.json`` lists what was taken from which URL and what each MLflow check saw. Exit
status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# (category, result file name) opened in the report screenshots
REPORT_VIEWS = (
    ("Comparison", "accuracy.png"),
    ("Comparison", "tables.html"),
    ("Comparison", "pass_at_k.png"),
    ("Training", "training_curves.png"),
    ("Before/after RL", "entropy_per_layer.png"),
    ("Before/after RL", "attention_before_after.png"),
    ("Claims", "claims.html"),
    ("Claims", "claims.png"),
)


def find_chromium(explicit: str | None = None) -> str | None:
    """The chromium binary: ``explicit``, ``$CHROMIUM``, or the first on PATH."""
    for name in (explicit, os.environ.get("CHROMIUM"), *CHROMIUM_NAMES):
        if name and (path := shutil.which(name)):
            return path
    return None


def screenshot(chromium: str, url: str, out: str | Path, *, width: int = 1600,
               height: int = 1000, budget_ms: int = 15000, timeout: float = 300,
               attempts: int = 2) -> Path:
    """One headless screenshot of ``url`` (JS gets ``budget_ms`` of virtual time). On a
    busy machine chromium can stall: after ``timeout`` seconds its whole process group is
    killed and the shot retried (``attempts`` in all)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    err = ""
    for _ in range(attempts):
        out.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
                   "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
                   "--run-all-compositor-stages-before-draw", f"--screenshot={out}", url]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            try:
                _, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                err = f"timed out after {timeout:.0f} s"
                continue
            finally:
                _kill_group(proc)  # renderer / zygote children left behind
        if proc.returncode == 0 and out.exists():
            return out
    raise RuntimeError(f"chromium could not screenshot {url[:200]}: {err[-2000:]}")


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=10)


def blank(path: str | Path, min_colors: int = 8) -> bool:
    """True if the PNG is (almost) one colour: nothing rendered."""
    from PIL import Image

    with Image.open(path) as im:
        colors = im.convert("RGB").getcolors(maxcolors=min_colors)
    return colors is not None  # None: more than min_colors colours


# --------------------------------------------------------------------------- report
_VIEW_JS = """
<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var want = %s, category = %s;
    var path = Object.keys(results).find(function (p) { return results[p].name === want; });
    if (!path) { document.title = "MISSING " + want; return; }
    var subs = Object.keys(categories[category] || {});
    var sub = subs.find(function (s) { return categories[category][s].indexOf(path) >= 0; })
              || subs[0];
    var mime = results[path].mime_type;
    app.setView({
      navbarMode: "subcategory", category: category, subcategory: sub,
      content: (mime === "text/html" || mime === "application/pdf") ? "html" : "img",
      contentPath: results[path].data_uri
    });
  }, 300);
});
</script>
"""


def report_view(report: str | Path, category: str, name: str, out: str | Path) -> Path:
    """A copy of the report that opens result ``name`` of ``category`` once loaded."""
    text = Path(report).read_text(encoding="utf-8")
    js = _VIEW_JS % (json.dumps(name), json.dumps(category))
    idx = text.rfind("</body>")
    text = text[:idx] + js + text[idx:] if idx >= 0 else text + js
    out = Path(out)
    out.write_text(text, encoding="utf-8")
    return out


def view_names(views: Sequence[tuple[str, str]]) -> list[str]:
    """Screenshot names of the report views: ``report_<stem>``, and ``report_<stem>_<ext>``
    for a result whose stem an earlier view already took (claims.html, claims.png)."""
    names: list[str] = []
    for _, name in views:
        shot = f"report_{Path(name).stem}"
        names.append(shot if shot not in names else f"{shot}_{Path(name).suffix.lstrip('.')}")
    return names


def report_results(report: str | Path) -> set[str]:
    """Names of the results embedded in a Snakemake HTML report."""
    text = Path(report).read_text(encoding="utf-8")
    marker, tag = "var results = ", '<script id="results">'
    if tag not in text:
        raise ValueError(f"{report} is not a Snakemake HTML report (no {tag})")
    start = text.index(marker, text.index(tag)) + len(marker)
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    return {v["name"] for v in obj.values()}


# --------------------------------------------------------------------------- mlflow
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, payload: dict | None = None, timeout: float = 30) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def mlflow_ui(db: str | Path, *, port: int | None = None, startup_timeout: float = 180,
              log: str | Path | None = None) -> Iterator[str]:
    """``mlflow ui`` on the SQLite store ``db`` in a subprocess; yields its base URL and
    stops it (the process group) on exit."""
    db = Path(db).resolve()
    if not db.exists():
        raise FileNotFoundError(db)
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    logf = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{db}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited with {proc.returncode} (log: {log})")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not answer within {startup_timeout} s")
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
        if logf is not subprocess.DEVNULL:
            logf.close()


def mlflow_target(url: str, experiment: str | None, rule: str | None = None) -> dict:
    """The experiment and one finished child run of it (newest first; of ``rule`` if
    given) that logged both a metric over several steps and a PNG under ``figures/``:
    ids, names, the metric (the one logged to the highest step) and the figure."""
    api = f"{url}/api/2.0/mlflow"
    if experiment:
        q = urllib.parse.urlencode({"experiment_name": experiment})
        exp = _get_json(f"{api}/experiments/get-by-name?{q}")["experiment"]
    else:  # the most recently created non-default experiment
        exps = _get_json(f"{api}/experiments/search", {"max_results": 100})["experiments"]
        exps = [e for e in exps if e["name"] != "Default"] or exps
        exp = max(exps, key=lambda e: int(e.get("creation_time", 0)))
    eid = exp["experiment_id"]
    runs = _get_json(f"{api}/runs/search", {
        "experiment_ids": [eid], "max_results": 1000,
        "order_by": ["attributes.start_time DESC"]}).get("runs", [])
    names = {r["info"]["run_id"]: r["info"].get("run_name", "") for r in runs}
    for r in runs:
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        steps = {m["key"]: int(m.get("step", 0)) for m in r["data"].get("metrics", [])}
        parent = tags.get("mlflow.parentRunId")
        if (parent is None or r["info"]["status"] != "FINISHED"
                or max(steps.values(), default=0) < 1
                or (rule is not None and tags.get("rule") != rule)):
            continue
        rid = r["info"]["run_id"]
        q = urllib.parse.urlencode({"run_id": rid, "path": "figures"})
        files = _get_json(f"{api}/artifacts/list?{q}").get("files", [])
        figures = sorted(f["path"] for f in files if f["path"].endswith(".png"))
        if figures:
            return {"experiment_id": eid, "experiment": exp["name"], "run_id": rid,
                    "run_name": names[rid], "parent_id": parent,
                    "metric": max(sorted(steps), key=lambda k: steps[k]),
                    "figure": figures[0]}
    raise RuntimeError(f"no finished child run{f' of rule {rule}' if rule else ''} in "
                       f"experiment {exp['name']!r} logged a metric over steps and a figure")


# JavaScript checks run in the MLflow UI until they pass: each returns {ok, ...what it saw}.
_JS_VISIBLE = """function visible(el, min) { var r = el.getBoundingClientRect();
  return r.width >= min && r.height >= min && r.bottom > 0 && r.right > 0
      && r.top < innerHeight && r.left < innerWidth; }"""
_JS_TEXT = "(function (want) { var t = document.body.innerText; var miss = want.filter(" \
           "function (w) { return t.indexOf(w) < 0; }); return {ok: !miss.length, " \
           "missing: miss}; })(%s)"
# The runs table: the parent's row expanded (a click on its expander) lists the child run.
_JS_CHILD = """(function (exp, parent, child) { %s
  var link = function (id) { return [].slice.call(document.querySelectorAll("a[href]")).filter(
    function (a) { return a.getAttribute("href").endsWith("/runs/" + id); })[0]; };
  var p = link(parent), c = link(child);
  if (p && !c && !(Date.now() - (window.__expanded || 0) < 10000)) {  // again after 10 s
    var button = p.closest("[role=row]") && p.closest("[role=row]").querySelector("button");
    if (button) { button.click(); window.__expanded = Date.now(); } }
  if (c) c.scrollIntoView({block: "center"});
  return {ok: document.body.innerText.indexOf(exp) >= 0 && !!c && visible(c, 5),
          parent_listed: !!p, child_listed: !!c}; })(%s, %s, %s)"""
# The chart card whose title is the metric: a plotly chart with a line through >= 2 points,
# scrolled into view.
_JS_CHART = """(function (key) { %s
  var plots = [].slice.call(document.querySelectorAll(".js-plotly-plot"));
  var card = null, plot = null;
  plots.forEach(function (p) { var el = p;
    for (var i = 0; i < 8 && el && !card; i++, el = el.parentElement) {
      if (el.innerText && el.innerText.split("\\n")[0].trim() === key) { card = el; plot = p; } }
  });
  if (!plot) return {ok: false, charts: plots.length, found: false};
  plot.scrollIntoView({block: "center"});
  var points = Math.max.apply(null, [0].concat([].slice.call(
    plot.querySelectorAll("path.js-line")).map(function (l) {
      return ((l.getAttribute("d") || "").match(/[ML]/g) || []).length; })));
  return {ok: points >= 2 && visible(plot, 100), charts: plots.length, found: true,
          points: points, visible: visible(plot, 100)}; })(%s)"""
# The logged figure shown by the artifact viewer: a loaded image, large and in view.
_JS_FIGURE = """(function (path) { %s
  var shown = document.body.innerText.indexOf(path) >= 0;
  var imgs = [].slice.call(document.images).filter(function (i) {
    return i.complete && i.naturalWidth >= 100 && visible(i, 100); });
  var size = imgs.length ? [imgs[0].naturalWidth, imgs[0].naturalHeight] : null;
  return {ok: shown && imgs.length > 0, path_shown: shown, images: imgs.length, size: size};
  })(%s)"""


def mlflow_checks(url: str, target: dict) -> list[tuple[str, str, str]]:
    """(shot name, page URL, JavaScript check) for the experiment page (the runs table,
    the parent's row expanded, lists the child run), the child run's overview, its
    model-metrics tab (the metric's chart has a line) and its artifact viewer on the
    figure (the image loaded)."""
    exp = f"{url}/#/experiments/{target['experiment_id']}"
    run = f"{exp}/runs/{target['run_id']}"
    ids = (target["experiment"], target["parent_id"], target["run_id"])
    return [
        ("mlflow_experiment", f"{exp}/runs",
         _JS_CHILD % (_JS_VISIBLE, *map(json.dumps, ids))),
        ("mlflow_run", run, _JS_TEXT % json.dumps([target["run_name"], target["run_id"]])),
        ("mlflow_metrics", f"{run}/model-metrics",
         _JS_CHART % (_JS_VISIBLE, json.dumps(target["metric"]))),
        ("mlflow_artifact", f"{run}/artifacts/{target['figure']}",
         _JS_FIGURE % (_JS_VISIBLE, json.dumps(target["figure"]))),
    ]


def check_mlflow(browser: str, db: str | Path, out: Path, *, experiment: str | None = None,
                 rule: str | None = None, timeout: float = 120) -> tuple[dict, list[dict]]:
    """Open each MLflow page in one headless chromium (DevTools protocol), wait until its
    check passes (``timeout`` seconds at most), then take its screenshot. Returns the
    child run checked (:func:`mlflow_target`) and the shots."""
    from pipeline.cdp import Browser

    shots = []
    with mlflow_ui(db, log=out / "mlflow_ui.log") as url, Browser(browser) as b:
        target = mlflow_target(url, experiment, rule)
        for name, page, js in mlflow_checks(url, target):
            b.goto(page)
            seen = b.wait_for(js, timeout=timeout)
            time.sleep(1)  # let the last frame (chart animation, image decode) settle
            path = b.screenshot(out / f"{name}.png")
            shots.append({"name": name, "url": page, "png": str(path), "blank": blank(path),
                          "check": seen,
                          "failed": not (isinstance(seen, dict) and seen.get("ok"))})
    return target, shots


# --------------------------------------------------------------------------- main
def check(report: str | Path | None, mlflow_db: str | Path | None, out: str | Path, *,
          experiment: str | None = None, rule: str | None = None,
          chromium: str | None = None, views: Sequence[tuple[str, str]] = REPORT_VIEWS) -> dict:
    """Take every screenshot; return the index (also written as ``out/index.json``)."""
    browser = find_chromium(chromium)
    if browser is None:
        raise RuntimeError("no chromium found (apt-get install chromium, or --chromium PATH)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shots: list[dict] = []
    index: dict = {}

    def take(name: str, url: str, **kw) -> None:
        path = screenshot(browser, url, out / f"{name}.png", **kw)
        shots.append({"name": name, "url": url if not url.startswith("file:") else url[:200],
                      "png": str(path), "blank": blank(path)})

    if report is not None:
        report = Path(report).resolve()
        take("report_home", report.as_uri(), budget_ms=5000)
        present = report_results(report)
        with tempfile.TemporaryDirectory(prefix="report-views-") as tmp:
            for shot, (category, name) in zip(view_names(views), views, strict=True):
                if name not in present:
                    shots.append({"name": shot, "missing": name, "blank": True})
                    continue
                copy = report_view(report, category, name, Path(tmp) / f"{shot}.html")
                take(shot, copy.as_uri(), budget_ms=5000)
    if mlflow_db is not None:
        index["mlflow"], mlflow_shots = check_mlflow(browser, mlflow_db, out,
                                                     experiment=experiment, rule=rule)
        shots += mlflow_shots
    index |= {"chromium": browser, "shots": shots,
             "ok": bool(shots) and not any(s["blank"] or s.get("failed") for s in shots)}
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.report_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", help="HTML report of `snakemake --report report.html`")
    p.add_argument("--mlflow-db", help="SQLite store of the run (results/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: the newest)")
    p.add_argument("--out", required=True, help="directory for the screenshots")
    p.add_argument("--run-rule", help="check a child run of this rule (default: the newest "
                   "with a metric over steps and a figure)")
    p.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    ns = p.parse_args(argv)
    if not ns.report and not ns.mlflow_db:
        p.error("nothing to check: give --report and/or --mlflow-db")
    try:
        index = check(ns.report, ns.mlflow_db, ns.out, experiment=ns.experiment,
                      rule=ns.run_rule, chromium=ns.chromium)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"error: report_check: {exc}", file=sys.stderr)
        return 1
    for s in index["shots"]:
        state = ("MISSING" if "missing" in s else "BLANK" if s["blank"]
                 else "FAILED" if s.get("failed") else "ok")
        seen = f"  {json.dumps(s['check'])}" if "check" in s else ""
        print(f"{state:8s} {s['name']}: {s.get('png', s.get('missing'))}{seen}")
    return 0 if index["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
