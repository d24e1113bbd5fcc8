"""Compare two claims tables (docs/methods.md §9): every verdict that changed between an
older ``claims.csv`` and a newer one, the ids that were renamed, dropped or added, and the
attention-rhythm paper's Table 2 statistics of the newer table under every peak rule next
to the paper's values.

``python -m pipeline.bench claims_diff --old OLD/claims.csv --new NEW/claims.csv``
"""

from __future__ import annotations

import argparse
import re

import pandas as pd

KEY = ["claim_id", "model", "run", "split"]
# ids the claims table renamed (issue 24): old prefix → new prefix
RENAMES = (
    ("rl.vs_grpo.bupo.", "rl.bupo_vs_grpo."),
    ("rl.vs_grpo.rhythm_local.", "rl.rhythm.vs_grpo.rhythm_local."),
    ("rl.vs_grpo.rhythm_global.", "rl.rhythm.vs_grpo.rhythm_global."),
    ("rl.vs_grpo.rhythm_coupled.", "rl.rhythm.vs_grpo.rhythm_coupled."),
    ("rl.vs_grpo.credit_random.", "rl.credit.random_vs_grpo."),
    ("rl.bupo.ipa_lowers_entropy_k.", "rl.bupo.ipa_entropy_k_rises."),
)
TABLE2 = ("rhythm.waad_peak_entropy", "rhythm.receiver_global_cooccur",
          "rhythm.fai_follows_waad")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--old", required=True, help="the older claims.csv")
    p.add_argument("--new", required=True, help="the newer claims.csv")


def renamed(claim_id: str) -> str:
    for old, new in RENAMES:
        if claim_id.startswith(old):
            return new + claim_id[len(old):]
    return claim_id


def _read(path: str) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _fmt(r: pd.Series, side: str) -> str:
    v = r[f"value_{side}"]
    lo, hi = r[f"ci_low_{side}"], r[f"ci_high_{side}"]
    return f"{r[f'verdict_{side}']} ({_num(v)} [{_num(lo)}, {_num(hi)}])"


def _num(x: str) -> str:
    try:
        return f"{float(x):.4g}"
    except ValueError:
        return "—"


def run(args: argparse.Namespace) -> int:
    old, new = _read(args.old), _read(args.new)
    old = old.assign(claim_id=old["claim_id"].map(renamed))
    old = old.rename(columns={c: f"{c}_old" for c in old.columns if c not in KEY})
    m = old.merge(new.rename(columns={c: f"{c}_new" for c in new.columns if c not in KEY}),
                  on=KEY, how="outer", indicator=True)
    both = m[m["_merge"] == "both"]
    changed = both[both["verdict_old"] != both["verdict_new"]]
    print(f"{len(old)} old records, {len(new)} new; {len(both)} matched "
          f"(renames applied: {', '.join(f'{a}* → {b}*' for a, b in RENAMES)})")
    print(f"\n## verdicts that changed ({len(changed)})")
    for _, r in changed.sort_values(KEY).iterrows():
        print(f"- {r['claim_id']} · {r['run']} · {r['split']}: {_fmt(r, 'old')} → "
              f"{_fmt(r, 'new')}; criterion {r['criterion_old']} → {r['criterion_new']}; "
              f"new note: {r['reason_new'] or '—'}")
    same = both[(both["verdict_old"] == both["verdict_new"])]
    print(f"\n## unchanged verdicts: {len(same)}")
    gone = m[m["_merge"] == "left_only"]
    print(f"\n## dropped ({len(gone)})")
    for _, r in gone.sort_values(KEY).iterrows():
        print(f"- {r['claim_id']} · {r['run']} · {r['split']}: was {r['verdict_old']}")
    added = m[m["_merge"] == "right_only"]
    print(f"\n## new ({len(added)})")
    for _, r in added.sort_values(KEY).iterrows():
        print(f"- {r['claim_id']} · {r['run']} · {r['split']} [{r['source_new']}]"
              f"{' family ' + r['family_new'] if r['family_new'] else ''}: "
              f"{_fmt(r, 'new')}")
    print("\n## Table 2 statistics (new table), every peak rule")
    t2 = new[new["claim_id"].isin(TABLE2)]
    for _, r in t2.sort_values(["claim_id", "run", "split"]).iterrows():
        rule = re.search(r"peaks: (\w+)\)", r["split"])
        print(f"- {r['claim_id']} · {r['run']} · {rule.group(1) if rule else 'mad'}: "
              f"{_num(r['value'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}] "
              f"{r['verdict']} — {r['reason'] or '—'} (paper: {r['paper_value']})")
    return 0
