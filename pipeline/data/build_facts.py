"""Build the curated fact files in ``pipeline/data/files/`` (cloze fact recall, docs/methods.md §4).

Run ``python -m pipeline.data.build_facts`` (``--check`` only compares). It needs the two
pinned build-time tools, which are *not* runtime dependencies of the pipeline::

    pip install pycountry==26.2.16 countryinfo==1.0.1

Sources:
- ``countryinfo==1.0.1`` (MIT): each country's capital, currency codes, language codes,
  demonym and ISO 3166-1 alpha-2 code.
- ``pycountry==26.2.16`` (LGPL-2.1-only; the Debian ``iso-codes`` data): the ISO 3166-1
  country list (entries without an ISO code are skipped), ISO 4217 currency names and
  ISO 639 language names.

Relations (one file each; the sentence is ``prompt + " " + answer``):
- ``capital``  — "The capital of France is" → "Paris".
- ``currency`` — "The currency of Japan is the" → "Japanese yen" (ISO 4217 names turned
  into the usual English names: "<demonym> <unit>"; :data:`CURRENCY_NAMES` fixes the rest).
- ``language`` — "The official language of Brazil is" → "Portuguese"; only countries for
  which countryinfo lists exactly one language (Wikidata P37 style: de-facto official
  languages count), plus :data:`OVERRIDES`.

Stale, ambiguous or disputed entries are fixed by the curated :data:`OVERRIDES` table
(answer ``None`` drops the fact); every entry gives its reason. Facts whose answer equals
the subject (Singapore, Monaco, …) are dropped: they test copying, not recall.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FILES_DIR = Path(__file__).resolve().parent / "files"
TOOLS = {"pycountry": "26.2.16", "countryinfo": "1.0.1"}

# relation -> (file name, prompt template)
RELATIONS: dict[str, tuple[str, str]] = {
    "capital": ("capitals.jsonl", "The capital of {subject} is"),
    "currency": ("currencies.jsonl", "The currency of {subject} is the"),
    "language": ("languages.jsonl", "The official language of {subject} is"),
}

# (relation, ISO alpha-2) -> (answer or None to drop, reason). Checked on 2026-11-25.
OVERRIDES: dict[tuple[str, str], tuple[str | None, str]] = {
    ("capital", "KZ"): ("Astana", "renamed back from Nur-Sultan in September 2022"),
    ("capital", "LK"): ("Colombo", "official capital is Sri Jayawardenepura Kotte; Colombo "
                                   "is the commonly known (commercial, executive) capital"),
    ("capital", "SZ"): ("Mbabane", "countryinfo gives Lobamba (royal/legislative); Mbabane "
                                   "is the administrative and commonly listed capital"),
    ("capital", "BI"): ("Gitega", "political capital moved from Bujumbura in 2019"),
    ("capital", "BO"): ("Sucre", "constitutional capital; La Paz is the seat of government"),
    ("capital", "US"): ("Washington, D.C.", "countryinfo spells it 'Washington D.C.'"),
    ("capital", "LU"): ("Luxembourg City", "the city's usual English name"),
    ("capital", "PF"): ("Papeete", "countryinfo spells it with a macron (Papeetē)"),
    ("capital", "IL"): (None, "disputed (status of Jerusalem)"),
    ("capital", "PS"): (None, "disputed (Ramallah / East Jerusalem)"),
    ("capital", "EH"): (None, "disputed territory"),
    ("capital", "HK"): (None, "special administrative region; 'City of Victoria' is obsolete"),
    ("capital", "BQ"): (None, "three island capitals, no single answer"),
    ("capital", "TK"): (None, "no capital (each atoll has its own administration)"),
    ("capital", "VA"): (None, "city-state: the capital is the country itself"),
    ("currency", "BG"): (None, "changed from the lev to the euro on 2026-01-01; models "
                               "trained earlier say lev"),
    ("currency", "HR"): ("euro", "adopted the euro on 2023-01-01 (countryinfo: kuna, HRK)"),
    ("currency", "SV"): ("US dollar", "dollarised in 2001 (countryinfo lists the colón first)"),
    ("currency", "ZW"): (None, "changed repeatedly (US dollar, RTGS dollar, ZiG in 2024)"),
    ("currency", "EH"): (None, "disputed territory"),
    ("currency", "PS"): (None, "no own currency (Israeli shekel, Jordanian dinar in use)"),
    ("language", "MY"): ("Malay", "countryinfo lists no language"),
    ("language", "NO"): ("Norwegian", "countryinfo lists Norwegian, Bokmål and Nynorsk"),
    ("language", "RS"): ("Serbian", "countryinfo gives the invalid code 'rs'"),
    ("language", "PH"): ("Filipino", "countryinfo lists only English; Filipino is the "
                                     "national language (English is co-official)"),
    ("language", "EH"): (None, "disputed territory; countryinfo's Spanish is wrong"),
    ("language", "HM"): (None, "uninhabited"),
    ("language", "PS"): (None, "disputed"),
}

# Where countryinfo has several entries for one ISO code: the one to keep.
DUPLICATE_KEYS = {
    "MM": "myanmar",  # also "burma"
    "PS": "palestine",  # also "palestine, state of"
    "VA": "holy see (vatican city state)",  # also "vatican city state"
    "GB": "united kingdom",  # also "wales"
}

# Subject names that read better than countryinfo's (by ISO alpha-2).
SUBJECT_NAMES = {
    "MK": "North Macedonia", "SZ": "Eswatini", "CZ": "the Czech Republic",
    "CD": "the Democratic Republic of the Congo", "CG": "the Republic of the Congo",
    "BS": "the Bahamas", "GM": "the Gambia", "CC": "the Cocos Islands",
    "VG": "the British Virgin Islands", "VI": "the United States Virgin Islands",
    "FM": "the Federated States of Micronesia", "PN": "the Pitcairn Islands",
    "TF": "the French Southern and Antarctic Lands", "AX": "the Åland Islands",
    "VA": "Vatican City", "ST": "São Tomé and Príncipe",
    "HM": "Heard Island and McDonald Islands", "IO": "the British Indian Ocean Territory",
}
_THE_NAMES = {"Netherlands", "Philippines", "Maldives", "Central African Republic",
              "Dominican Republic", "United Arab Emirates", "Isle of Man"}

# ISO 4217 code -> usual English name, where the generic rule gets it wrong.
CURRENCY_NAMES = {
    "EUR": "euro", "USD": "US dollar", "GBP": "pound sterling", "CNY": "renminbi",
    "XAF": "Central African CFA franc", "XOF": "West African CFA franc", "XPF": "CFP franc",
    "ILS": "Israeli new shekel", "BAM": "Bosnia and Herzegovina convertible mark",
    "ISK": "Icelandic krona", "PKR": "Pakistani rupee", "LKR": "Sri Lankan rupee",
    "MUR": "Mauritian rupee", "SCR": "Seychellois rupee", "OMR": "Omani rial",
    "UYU": "Uruguayan peso", "NIO": "Nicaraguan cordoba", "AZN": "Azerbaijani manat",
    "TMT": "Turkmenistan manat", "UZS": "Uzbekistani sum", "MZN": "Mozambican metical",
    "NAD": "Namibian dollar", "RWF": "Rwandan franc", "BIF": "Burundian franc",
    "UGX": "Ugandan shilling", "MWK": "Malawian kwacha", "SRD": "Surinamese dollar",
    "FJD": "Fijian dollar", "GYD": "Guyanese dollar", "BBD": "Barbadian dollar",
    "DJF": "Djiboutian franc", "CVE": "Cape Verdean escudo", "GHS": "Ghanaian cedi",
    "AED": "UAE dirham", "BWP": "Botswana pula", "KGS": "Kyrgyzstani som",
    "LSL": "Lesotho loti", "MOP": "Macanese pataca", "MVR": "Maldivian rufiyaa",
    "TJS": "Tajikistani somoni", "VUV": "Vanuatu vatu", "TOP": "Tongan pa'anga",
    "CRC": "Costa Rican colon", "CZK": "Czech koruna", "HKD": "Hong Kong dollar",
    # codes withdrawn from ISO 4217 that countryinfo still uses (the name is unchanged)
    "BYR": "Belarusian ruble", "MRO": "Mauritanian ouguiya", "SLL": "Sierra Leonean leone",
    "STD": "São Tomé and Príncipe dobra", "VEF": "Venezuelan bolívar", "ZMK": "Zambian kwacha",
}
# Funds, accounting units and withdrawn parallel currencies: never a country's currency.
NOT_CURRENCIES = {"BOV", "CHE", "CHW", "CLF", "USN", "USS", "UYI", "CUC", "CSD", "SVC"}

LANGUAGE_NAMES = {"el": "Greek", "ms": "Malay", "ne": "Nepali", "kl": "Greenlandic",
                  "dv": "Dhivehi", "zh": "Mandarin Chinese", "bn": "Bengali"}


def _require_tools() -> tuple[Any, Any]:
    try:
        import countryinfo
        import pycountry
    except ImportError as exc:
        pins = " ".join(f"{k}=={v}" for k, v in TOOLS.items())
        raise SystemExit(f"build_facts needs the build tools: pip install {pins} ({exc})") \
            from exc
    from importlib.metadata import version

    for name, want in TOOLS.items():
        if version(name) != want:
            raise SystemExit(f"build_facts is pinned to {name}=={want}, found {version(name)}")
    return pycountry, countryinfo


def subject_name(alpha2: str, name: str) -> str:
    """The country's name as it reads inside "The capital of {subject} is"."""
    if alpha2 in SUBJECT_NAMES:
        return SUBJECT_NAMES[alpha2]
    if name.startswith("The "):
        return "the " + name[4:]
    if name in _THE_NAMES or name.startswith(("United ", "Republic of ")) \
            or name.endswith(" Islands"):
        return "the " + name
    return name


def currency_name(code: str, iso_name: str | None, issuer_demonym: str | None) -> str | None:
    """Usual English name of an ISO 4217 currency ("Yen" + "Japanese" → "Japanese yen")."""
    if code in CURRENCY_NAMES:
        return CURRENCY_NAMES[code]
    if not iso_name:
        return None
    words = iso_name.split()
    if len(words) == 1:  # a bare unit: prefix the issuing country's demonym
        if not issuer_demonym or "," in issuer_demonym:
            return None
        return f"{issuer_demonym} {iso_name.lower()}"
    return " ".join(words[:-1] + [words[-1].lower()])


def _countries(pycountry: Any, countryinfo: Any) -> dict[str, dict[str, Any]]:
    """ISO alpha-2 -> countryinfo record (one per ISO code; non-ISO entries skipped)."""
    by_code: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, rec in countryinfo.CountryInfo.all().items():
        alpha2 = ((rec.get("ISO") or {}).get("alpha2") or "").upper()
        if alpha2 and pycountry.countries.get(alpha_2=alpha2) is not None:
            by_code.setdefault(alpha2, []).append((key, rec))
    out = {}
    for alpha2, entries in sorted(by_code.items()):
        if len(entries) > 1:
            keep = DUPLICATE_KEYS.get(alpha2)
            chosen = [rec for key, rec in entries if key == keep]
            if len(chosen) != 1:
                keys = [key for key, _ in entries]
                raise SystemExit(f"{alpha2}: several countryinfo entries {keys}; add one "
                                 "to DUPLICATE_KEYS")
            out[alpha2] = chosen[0]
        else:
            out[alpha2] = entries[0][1]
    return out


def _fact(relation: str, alpha2: str, subject: str, answer: str, source: str) -> dict[str, str]:
    return {"id": f"{relation}/{alpha2}", "subject": subject, "relation": relation,
            "prompt": RELATIONS[relation][1].format(subject=subject), "answer": answer,
            "source": source}


def build() -> dict[str, list[dict[str, str]]]:
    """All facts by relation, sorted by id."""
    pycountry, countryinfo = _require_tools()
    ci = f"countryinfo=={TOOLS['countryinfo']}"
    both = f"{ci}+pycountry=={TOOLS['pycountry']}"
    countries = _countries(pycountry, countryinfo)
    facts: dict[str, list[dict[str, str]]] = {rel: [] for rel in RELATIONS}

    def add(relation: str, alpha2: str, subject: str, answer: str | None, source: str) -> None:
        if (relation, alpha2) in OVERRIDES:
            answer, source = OVERRIDES[relation, alpha2][0], "curated override"
        if not answer or answer.strip().lower() == subject.removeprefix("the ").lower():
            return
        facts[relation].append(_fact(relation, alpha2, subject, answer.strip(), source))

    for alpha2, rec in countries.items():
        subject = subject_name(alpha2, str(rec.get("name") or "").strip())
        capital = rec.get("capital")
        if isinstance(capital, list):
            capital = capital[0] if len(capital) == 1 else None
        add("capital", alpha2, subject, capital or None, ci)

        codes = [c for c in rec.get("currencies") or [] if c not in NOT_CURRENCIES]
        cname = None
        if codes:
            code = codes[0]
            iso = pycountry.currencies.get(alpha_3=code)
            issuer = countries.get(code[:2])
            cname = currency_name(code, iso.name if iso else None,
                                  (issuer or {}).get("demonym"))
        add("currency", alpha2, subject, cname, both)

        langs = rec.get("languages") or []
        lname = None
        if len(langs) == 1:
            code = langs[0]
            lang = (pycountry.languages.get(alpha_2=code) if len(code) == 2
                    else pycountry.languages.get(alpha_3=code))
            lname = LANGUAGE_NAMES.get(code) or (lang.name if lang else None)
        add("language", alpha2, subject, lname, both)

    for relation, alpha2 in OVERRIDES:  # overrides for countries the data lacks a value for
        answer = OVERRIDES[relation, alpha2][0]
        have = {f["id"] for f in facts[relation]}
        if answer and f"{relation}/{alpha2}" not in have and alpha2 in countries:
            name = str(countries[alpha2].get("name") or "")
            add(relation, alpha2, subject_name(alpha2, name), answer, "curated override")
    return {rel: sorted(rows, key=lambda r: r["id"]) for rel, rows in facts.items()}


def _dump(rows: Iterable[dict[str, str]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the fact files; prints counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--out", type=Path, default=FILES_DIR)
    args = parser.parse_args(argv)
    stale = []
    for relation, rows in build().items():
        path = args.out / RELATIONS[relation][0]
        text = _dump(rows)
        multi = sum(len(r["answer"].split()) >= 2 for r in rows)
        print(f"{path.name}: {len(rows)} facts, {multi} with multi-word answers")
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
