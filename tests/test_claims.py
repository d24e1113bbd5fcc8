"""Claims library (docs/methods.md §9): criteria, intervals, n_needed and the table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from pipeline.claims import (
    COLUMNS,
    Between,
    ClaimRecord,
    Greater,
    Interval,
    Less,
    bootstrap_ci,
    bootstrap_mean_ci,
    half_width,
    make_record,
    n_needed,
    paired_bootstrap_diff_ci,
    read_claims,
    records_frame,
    resample_indices,
    run_id,
    t_interval,
    write_claims,
)

META = dict(claim_id="c1", paper="2510.18871", claim="a claim", model="m", run="m",
            split="test", metric="frac")


# ------------------------------------------------------------------ criteria on known tables
@pytest.mark.parametrize("crit, lo, hi, want", [
    (Greater(0.7), 0.72, 0.90, "holds"),
    (Greater(0.7), 0.50, 0.70, "fails"),      # the boundary itself violates x > 0.7
    (Greater(0.7), 0.40, 0.60, "fails"),
    (Greater(0.7), 0.65, 0.80, "inconclusive"),
    (Less(0.0), -0.3, -0.1, "holds"),
    (Less(0.0), 0.0, 0.2, "fails"),
    (Less(0.0), -0.1, 0.1, "inconclusive"),
    (Between(-0.05, 0.05), -0.02, 0.03, "holds"),
    (Between(-0.05, 0.05), -0.05, 0.05, "holds"),  # closed band
    (Between(-0.05, 0.05), 0.06, 0.20, "fails"),
    (Between(-0.05, 0.05), -0.30, -0.06, "fails"),
    (Between(-0.05, 0.05), 0.00, 0.10, "inconclusive"),
    (Between(-0.05, 0.05), -0.10, 0.00, "inconclusive"),
    (Between(-0.05, 0.05), -0.10, 0.10, "inconclusive"),  # wider than the band
])
def test_criteria_decide(crit, lo, hi, want):
    assert crit.decide((lo + hi) / 2, lo, hi) == want


def test_criteria_nan_and_text():
    assert Greater(0.7).decide(math.nan, math.nan, math.nan) == "not measurable"
    assert Greater(0.7).decide(0.9, math.nan, math.nan) == "inconclusive"
    assert Greater(0.7).text == "> 0.7"
    assert Less(0).text == "< 0"
    assert Between(1, 2).text == "in [1, 2]"
    near = Between.near(0.0, 0.05)
    assert near.text == "≈ 0 (±0.05)" and near.boundaries == (-0.05, 0.05)
    assert Greater(3, label="mean layer > 3").text == "mean layer > 3"
    assert near.boundary(0.04) == 0.05 and near.boundary(-0.2) == -0.05
    with pytest.raises(ValueError):
        Between(1, 0)
    with pytest.raises(ValueError):
        Greater(0).decide(0.5, 0.6, 0.4)


# ---------------------------------------------------------------- make_record on known data
def test_make_record_verdicts_bootstrap():
    rng = np.random.default_rng(1)
    high = rng.normal(1.0, 0.1, 200)     # mean ≈ 1, CI ≈ ±0.014
    low = rng.normal(-1.0, 0.1, 200)
    mixed = rng.normal(0.02, 1.0, 50)   # CI ≈ ±0.28, straddles 0
    assert make_record(**META, criterion=Greater(0), values=high).verdict == "holds"
    assert make_record(**META, criterion=Greater(0), values=low).verdict == "fails"
    rec = make_record(**META, criterion=Greater(0), values=mixed)
    assert rec.verdict == "inconclusive"
    assert rec.ci_low < 0 < rec.ci_high and rec.ci_kind == "bootstrap" and rec.n == 50
    sd = float(np.std(mixed, ddof=1))
    assert rec.n_needed == max(n_needed(rec.value, sd, 0.0), 51)
    assert rec.n_needed > 50
    assert make_record(**META, criterion=Between.near(0, 0.5), values=mixed).verdict == "holds"
    for r in (make_record(**META, criterion=Greater(0), values=v) for v in (high, low)):
        assert r.n_needed is None and r.reason == ""


def test_make_record_t_over_seeds_and_paired():
    seeds = [0.51, 0.55, 0.53]
    base = [0.40, 0.41, 0.44]
    rec = make_record(**META, criterion=Greater(0), values=seeds, paired=base, kind="t")
    diff = np.subtract(seeds, base)
    m, s = diff.mean(), diff.std(ddof=1)
    half = student_t.ppf(0.975, 2) * s / math.sqrt(3)
    assert rec.ci_kind == "t" and rec.n == 3 and rec.verdict == "holds"
    assert rec.value == pytest.approx(m) and rec.ci_low == pytest.approx(m - half)
    rec = make_record(**META, criterion=Greater(0.12), values=diff, kind="t")
    assert rec.verdict == "inconclusive"
    assert rec.n_needed == max(n_needed(m, s, 0.12, approx="t"), 4)
    assert half_width(s, rec.n_needed, approx="t") < abs(m - 0.12)


def test_make_record_generic_statistic_and_precomputed_interval():
    units = np.arange(20.0)
    rec = make_record(**META, criterion=Greater(5), values=units, statistic=np.median)
    assert rec.value == 9.5 and rec.verdict == "holds" and rec.ci_kind == "bootstrap"
    iv = Interval(0.3, 0.1, 0.5, 12, "t", se=0.09)
    rec = make_record(**META, criterion=Greater(0.2), interval=iv, figure="figs/a.png")
    assert (rec.value, rec.ci_low, rec.ci_high, rec.n) == (0.3, 0.1, 0.5, 12)
    assert rec.verdict == "inconclusive" and rec.figure == "figs/a.png"
    assert rec.n_needed == n_needed(0.3, 0.09 * math.sqrt(12), 0.2, approx="t")


@pytest.mark.parametrize("values", [None, [], [math.nan, math.nan], np.array([])])
def test_not_measurable(values):
    rec = make_record(**META, criterion=Greater(0), values=values)
    assert rec.verdict == "not measurable" and rec.n == 0 and rec.reason
    assert math.isnan(rec.value) and rec.n_needed is None
    rec = make_record(**META, criterion=Greater(0), values=values, kind="t",
                      reason="stage skipped on this model")
    assert rec.verdict == "not measurable" and rec.reason == "stage skipped on this model"


def test_nan_statistic_is_not_measurable_and_one_unit_inconclusive():
    rec = make_record(**META, criterion=Greater(0), values=[1.0, 2.0],
                      statistic=lambda u: math.nan)
    assert rec.verdict == "not measurable" and rec.reason == "value is NaN"
    rec = make_record(**META, criterion=Greater(0), values=[0.7], kind="t")
    assert rec.verdict == "inconclusive" and rec.n == 1 and rec.n_needed is None
    assert "n = 1" in rec.reason


# ------------------------------------------------------------------------ interval checks
def _naive_quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    i = int(math.floor(pos))
    j = min(i + 1, len(xs) - 1)
    return xs[i] + (pos - i) * (xs[j] - xs[i])


def _naive_bootstrap(values, stat, seed, n_boot, conf=0.95):
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(values), size=len(values))  # one row at a time
        reps.append(stat([values[int(i)] for i in idx]))
    return _naive_quantile(reps, (1 - conf) / 2), _naive_quantile(reps, (1 + conf) / 2)


@pytest.mark.parametrize("seed, n", [(0, 7), (3, 31), (11, 120)])
def test_bootstrap_mean_matches_naive_loop(seed, n):
    values = list(np.random.default_rng(100 + seed).exponential(2.0, n))
    iv = bootstrap_mean_ci(values, seed=seed, n_boot=2000)
    lo, hi = _naive_bootstrap(values, lambda xs: sum(xs) / len(xs), seed, 2000)
    assert iv.low == pytest.approx(lo, rel=1e-12) and iv.high == pytest.approx(hi, rel=1e-12)
    assert iv.value == pytest.approx(sum(values) / n) and iv.n == n
    assert iv.se == pytest.approx(np.std(values, ddof=1) / math.sqrt(n))


def test_bootstrap_blocks_equal_one_matrix(monkeypatch):
    import pipeline.claims.stats as st

    values = np.random.default_rng(5).normal(size=40)
    full = bootstrap_mean_ci(values, seed=9, n_boot=500)
    monkeypatch.setattr(st, "_CHUNK", 40 * 7)  # blocks of 7 resamples
    assert bootstrap_mean_ci(values, seed=9, n_boot=500) == full
    idx = resample_indices(40, 500, seed=9)
    reps = values[idx].mean(axis=1)
    assert (full.low, full.high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])),
                                                  rel=1e-14)


def test_generic_and_paired_bootstrap_match_naive():
    rng = np.random.default_rng(2)
    units = list(rng.normal(size=25))
    iv = bootstrap_ci(units, lambda xs: float(np.max(xs) - np.min(xs)), seed=4, n_boot=800)
    lo, hi = _naive_bootstrap(units, lambda xs: max(xs) - min(xs), 4, 800)
    assert (iv.low, iv.high) == pytest.approx((lo, hi), rel=1e-12)
    a, b = rng.normal(1, 1, 30), rng.normal(0.5, 1, 30)
    a[3] = math.nan  # the pair is dropped
    iv = paired_bootstrap_diff_ci(a, b, seed=6, n_boot=1000)
    keep = [i for i in range(30) if i != 3]
    diffs = [float(a[i] - b[i]) for i in keep]
    lo, hi = _naive_bootstrap(diffs, lambda xs: sum(xs) / len(xs), 6, 1000)
    assert iv.n == 29 and (iv.low, iv.high) == pytest.approx((lo, hi), rel=1e-12)
    with pytest.raises(ValueError):
        paired_bootstrap_diff_ci([1, 2], [1, 2, 3])


def test_bootstrap_edge_cases():
    assert math.isnan(bootstrap_mean_ci([]).value)
    one = bootstrap_mean_ci([2.5])
    assert one.value == 2.5 and one.n == 1 and math.isnan(one.low)
    same = bootstrap_mean_ci([3.0] * 5)
    assert (same.low, same.high) == (3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([1, 2], conf=1.0)


def test_t_interval_by_hand():
    values = [0.61, 0.58, 0.66, 0.60]
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    # t_{0.975, 3} = 3.182446 (table value), scipy gives the same
    assert student_t.ppf(0.975, 3) == pytest.approx(3.182446, abs=1e-6)
    half = 3.182446305 * s / math.sqrt(n)
    iv = t_interval(values)
    assert iv.kind == "t" and iv.n == n and iv.value == pytest.approx(mean)
    assert iv.low == pytest.approx(mean - half, rel=1e-9)
    assert iv.high == pytest.approx(mean + half, rel=1e-9)
    assert t_interval([1.0, math.nan, 3.0]).n == 2
    assert math.isnan(t_interval([0.5]).low) and t_interval([]).n == 0


# ------------------------------------------------------------------------------ n_needed
@pytest.mark.parametrize("approx", ["z", "t"])
@pytest.mark.parametrize("effect, sd, boundary", [
    (0.75, 0.43, 0.7), (0.02, 1.0, 0.0), (-0.3, 0.2, 0.0), (5.1, 3.0, 4.0), (0.5, 2.0, 0.1),
    (0.7001, 0.5, 0.7),
])
def test_n_needed_is_the_first_n_that_clears(approx, effect, sd, boundary):
    n = n_needed(effect, sd, boundary, approx=approx)
    d = abs(effect - boundary)
    assert n is not None and half_width(sd, n, approx=approx) < d
    n_min = 2 if approx == "t" else 1
    assert n == n_min or half_width(sd, n - 1, approx=approx) >= d


def test_n_needed_formula_and_edges():
    z = 1.959963984540054
    effect, sd, boundary = 0.75, 0.43, 0.7
    assert n_needed(effect, sd, boundary) == math.floor((z * sd / 0.05) ** 2) + 1
    assert n_needed(effect, sd, boundary, approx="t") >= n_needed(effect, sd, boundary)
    assert n_needed(0.7, 0.4, 0.7) is None
    assert n_needed(math.nan, 0.4, 0.7) is None and n_needed(0.8, math.nan, 0.7) is None
    assert n_needed(0.8, 0.0, 0.7) == 1 and n_needed(0.8, 0.0, 0.7, approx="t") == 2
    assert n_needed(1e-9, 1.0, 0.0) is None  # beyond max_n
    assert half_width(1.0, 1, approx="t") == math.inf


# ------------------------------------------------------------------------ record and table
def _records() -> list[ClaimRecord]:
    rng = np.random.default_rng(0)
    return [
        make_record(**META, criterion=Greater(0.7), values=rng.binomial(1, 0.75, 40)),
        make_record(**{**META, "run": run_id("m", "grpo", 1)}, criterion=Less(0),
                    values=[-0.2, -0.3, -0.25], kind="t", figure="figures/x.png"),
        make_record(**{**META, "claim_id": "c2", "claim": 'says "NA", uses, commas'},
                    criterion=Between.near(0, 0.1), values=None, reason="not run"),
    ]


def test_record_fields_and_frame():
    recs = _records()
    assert list(recs[0].to_dict()) == list(COLUMNS)
    assert COLUMNS[:3] == ("claim_id", "paper", "claim") and COLUMNS[-6:] == (
        "figure", "boundary", "paper_ref", "paper_value", "source", "family")
    df = records_frame(recs)
    assert list(df.columns) == list(COLUMNS) and len(df) == 3
    assert df["n_needed"].dtype == "Int64" and df["n"].dtype == "int64"
    assert list(records_frame([]).columns) == list(COLUMNS)
    assert run_id("m") == "m" and run_id("m", "bupo", 2) == "m/bupo/seed2"
    with pytest.raises(ValueError):
        run_id("m", "bupo")
    with pytest.raises(ValueError):
        ClaimRecord(**{**recs[0].to_dict(), "verdict": "maybe"})
    with pytest.raises(ValueError):
        ClaimRecord(**{**recs[0].to_dict(), "ci_kind": "wald"})
    with pytest.raises(ValueError):
        ClaimRecord(**{**recs[0].to_dict(), "source": "folklore"})
    with pytest.raises(ValueError):
        ClaimRecord(**{**recs[0].to_dict(), "family": "gpt"})
    with pytest.raises(ValueError):
        ClaimRecord(**{**recs[1].to_dict(), "n_needed": 5})
    with pytest.raises(AttributeError):
        recs[0].value = 1.0  # frozen


def _same(got, want) -> bool:
    if isinstance(want, float):
        return math.isnan(got) if math.isnan(want) else got == pytest.approx(want, rel=1e-15)
    return got == want and type(got) is type(want)


def test_write_claims_round_trip(tmp_path: Path):
    recs = _records()
    csv, pq = tmp_path / "claims" / "claims.csv", tmp_path / "claims" / "claims.parquet"
    assert write_claims(recs, csv, pq) == [csv, pq]
    for path in (csv, pq):
        back = read_claims(path)
        assert [r.to_dict().keys() for r in back] == [r.to_dict().keys() for r in recs]
        for got, want in zip(back, recs, strict=True):
            for k, v in want.to_dict().items():
                assert _same(got.to_dict()[k], v), (path.suffix, k)
    assert sorted(p.name for p in csv.parent.iterdir()) == ["claims.csv", "claims.parquet"]
    with pytest.raises(ValueError, match="duplicate"):
        write_claims(recs + recs[:1], csv, pq)


def test_write_claims_is_atomic(tmp_path: Path, monkeypatch):
    csv, pq = tmp_path / "claims.csv", tmp_path / "claims.parquet"

    def broken_parquet(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken_parquet)
    with pytest.raises(OSError, match="disk full"):
        write_claims(_records(), csv, pq)
    assert list(tmp_path.iterdir()) == []  # neither file, no temporary left

    monkeypatch.undo()
    write_claims(_records()[:1], csv, pq)
    before = {p: p.read_bytes() for p in (csv, pq)}

    def broken_csv(self, path, *args, **kwargs):
        Path(path).write_text("claim_id,pa")
        raise RuntimeError("killed")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_csv)
    with pytest.raises(RuntimeError):
        write_claims(_records(), csv, pq)
    assert {p: p.read_bytes() for p in (csv, pq)} == before  # old table intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claims.csv", "claims.parquet"]
