"""The fast tokenizer behind cohort SQL translation gives circepy's own tokens and SQL."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from circe.sqlrender import split_sql, translate, translator
from circe.sqlrender.tokenizer import tokenize_sql as circe_tokenize

from site_agent.cohorts import collect_definitions
from site_agent.cohorts import sql as sql_module
from site_agent.cohorts.sql import cohort_sql, tokenize_ascii

REPO = Path(__file__).resolve().parents[1]
TRICKY = ["", "a", "--", "-- x\nb", "--hint x", "a--hint", "/*/ b", "/* a */b", "'--x' y", '"/*" z */ w',
          "x'y\"z'w\"", "@a_1.b2 -- c", "a /* b", "a -- b", "\x1c a\x1fb", "sel--HINT x\n1", "''''", "a-b/c*d"]


def test_tokens_equal_circepy_on_tricky_and_random_text():
    rng = random.Random(7)
    alphabet = list("ab_@1 \t\n-/*'\"hintHINT();,.#\x1c") + ["--", "/*", "*/", "--hint", "\r\n"]
    texts = TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(20000)]
    for text in texts:
        assert tokenize_ascii(text) == circe_tokenize(text), repr(text)


@pytest.mark.parametrize("dialect", ["duckdb", "postgresql"])
def test_cohort_sql_equals_circepy_translation(dialect, monkeypatch):
    """Our statements (fast tokenizer, one statement at a time) equal circepy as shipped
    translating each cohort's whole script, for every cohort of the catalogs."""
    defs = collect_definitions([REPO / "cohort_definitions" / "lung"]) + \
        collect_definitions([REPO / "cohort_definitions" / "breast"])
    kw = dict(dialect=dialect, cdm_schema="cdm", vocab_schema="vocab", write_schema="results")
    fast = [cohort_sql(d, **kw) for d in defs]
    assert getattr(translator.tokenize_sql, "optima_fast", False)
    monkeypatch.setattr(translator, "tokenize_sql", circe_tokenize)  # circepy as shipped
    monkeypatch.setattr(sql_module, "translate_statements", lambda text, target: [  # the whole script at once
        s for s in split_sql(translate(text, target)) if s.strip()])
    slow = [cohort_sql(d, **kw) for d in defs]
    assert fast == slow and sum(len(s) for s in fast) > 10 * len(defs)
    assert len(defs) >= 12 and max(sum(map(len, s)) for s in fast) > 20_000  # the big stage I-II script is in
