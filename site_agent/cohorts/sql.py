"""ATLAS JSON -> OHDSI SQL (OHDSI's Circe port) -> rendered and translated statements.

Circe writes its attrition statistics (``cohort_inclusion_result``, ``cohort_summary_stats``)
only for definitions that have inclusion rules. For a definition without any, the same two
tables get the qualifying events here, counted in the database from Circe's own
``qualified_events`` temp table before it is dropped: one mask-0 row per mode (0: events,
1: persons, Circe's "best event" per person), so the attrition's first step is the real
qualifying count for every cohort.
"""

from __future__ import annotations

import re
from functools import lru_cache

from circe.api import build_cohort_query, cohort_expression_from_json
from circe.cohortdefinition import BuildExpressionQueryOptions
from circe.sqlrender import render, split_sql, translate
from circe.sqlrender import translator as _translator
from circe.sqlrender.tokenizer import HINT_KEY_WORD, Token
from circe.sqlrender.tokenizer import tokenize_sql as _circe_tokenize

from optima_common.errors import CohortDefinitionError
from site_agent.cohorts.definitions import CohortDefinition

DIALECTS = {"duckdb": "duckdb", "postgresql": "postgresql"}


_STEP = re.compile(r"([A-Za-z0-9_@]+)|[ \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f]+|(.)", re.DOTALL)


def tokenize_ascii(sql: str) -> list[Token]:
    """circepy's ``tokenize_sql`` (SqlRender's tokenizer), the same tokens, for ASCII text.

    Words ([A-Za-z0-9_@] runs) and single non-blank characters are tokens; ``--`` (but
    ``--hint``) to the end of the line and ``/* ... */`` are comments outside quotes; a token's
    ``in_quotes`` is the quote state before it. circepy's version looks at one character at a
    time in Python; this one lets a regular expression step over whole words and blanks."""
    tokens: list[Token] = []
    append, n, pos = tokens.append, len(sql), 0
    sq = dq = False
    while pos < n:
        for m in _STEP.finditer(sql, pos):
            kind = m.lastindex
            if kind == 1:
                append(Token(m.start(), m.end(), m.group(1), sq or dq))
            elif kind == 2:
                i, ch = m.start(), m.group(2)
                if ch == "-" and i + 1 < n and sql[i + 1] == "-" and not sq and not dq and (
                        n - i < 6 or sql[i + 2:i + 6].lower() != HINT_KEY_WORD):
                    k = sql.find("\n", i + 1)
                    pos = n if k < 0 else k + 1
                    break
                if ch == "/" and i + 1 < n and sql[i + 1] == "*" and not sq and not dq:
                    k = sql.find("*/", i + 1)
                    pos = n if k < 0 else k + 2
                    break
                append(Token(i, i + 1, ch, sq or dq))
                if ch == "'" and not dq:
                    sq = not sq
                elif ch == '"' and not sq:
                    dq = not dq
        else:
            return tokens
    return tokens


def _tokenize(sql: str) -> list[Token]:
    return tokenize_ascii(sql) if sql.isascii() else _circe_tokenize(sql)


def _speed_up_translator() -> None:
    """Tokenize each SQL text once, and fast, in circepy's translator.

    ``translate`` applies ~900 search-and-replace rules and each search re-tokenizes the whole
    SQL with a character-at-a-time Python loop, though most rules match nothing and leave the
    text unchanged: 95% of building the lung catalog's SQL (about 0.7 CPU s per cohort,
    whatever the CDM's size) was spent there. The translator only reads the token lists, so
    the same list serves the same text again (a small LRU), and :func:`tokenize_ascii` makes
    the others. The output is unchanged: ``tests/test_cohort_sql_tokens.py`` compares the
    tokens with circepy's on random text and the translated SQL of the catalog with circepy's own.
    """
    if getattr(_translator.tokenize_sql, "optima_fast", False):
        return
    tokenize = lru_cache(maxsize=16)(_tokenize)
    tokenize.optima_fast = True
    _translator.tokenize_sql = tokenize


_speed_up_translator()


def translate_statements(sql: str, dialect: str) -> list[str]:
    """The non-empty statements of SqlRender's ``translate(sql, dialect)``, translated one by one.

    SqlRender's search never lets a match run over a ``;`` outside brackets and quotes (the
    translator's "not allowed to span multiple SQL statements"), and ``split_sql`` splits there,
    so each statement becomes alone what it becomes in the whole script. Translating the whole
    script re-tokenizes all of it after every replacement; a statement at a time re-tokenizes
    one statement (the stage I-II SCLC cohort, 27 kB of SQL: 1.30 -> 0.35 s).
    ``tests/test_cohort_sql_tokens.py`` compares the result with circepy translating each
    catalog cohort's whole script, for both dialects."""
    out: list[str] = []
    for statement in split_sql(sql):
        if statement.strip():
            out += [s for s in split_sql(translate(statement + ";", dialect)) if s.strip()]
    return out


def cohort_sql(
    definition: CohortDefinition,
    *,
    dialect: str,
    cdm_schema: str,
    vocab_schema: str,
    write_schema: str,
    generate_stats: bool = True,
) -> list[str]:
    """The statements that (re)build one cohort and its inclusion statistics."""
    try:
        expression = cohort_expression_from_json(definition.json_text)
    except Exception as exc:  # circepy raises ValueError/pydantic errors for bad expressions
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CohortDefinitionError(f"{definition.path}: not a valid Circe cohort expression: {first}") from None
    opts = BuildExpressionQueryOptions()
    opts.cdm_schema = cdm_schema
    opts.vocabulary_schema = vocab_schema
    opts.result_schema = write_schema
    opts.target_table = f"{write_schema}.cohort"
    opts.cohort_id = definition.cohort_definition_id
    opts.generate_stats = generate_stats
    try:
        statements = translate_statements(render(build_cohort_query(expression, opts)), DIALECTS[dialect])
    except Exception as exc:
        raise CohortDefinitionError(f"{definition.path}: cannot translate to {dialect} SQL: {exc}") from None
    if generate_stats and not definition.inclusion_rule_names:
        statements = _with_qualifying_stats(statements, write_schema, definition.cohort_definition_id)
    return statements


_QUALIFIED_CLEANUP = re.compile(r"^\s*(DELETE\s+FROM|TRUNCATE\s+TABLE|DROP\s+TABLE)\s+qualified_events\b", re.IGNORECASE)


def _with_qualifying_stats(statements: list[str], ws: str, cid: int) -> list[str]:
    """Insert the qualifying-event statistics of a rule-less cohort before Circe drops its events."""
    at = next((i for i, s in enumerate(statements) if _QUALIFIED_CLEANUP.match(s)), None)
    if at is None:
        raise CohortDefinitionError(f"cohort {cid}: the generated SQL has no qualified_events step to count")
    stats = [
        f"DELETE FROM {ws}.cohort_inclusion_result WHERE cohort_definition_id = {cid}",
        f"DELETE FROM {ws}.cohort_summary_stats WHERE cohort_definition_id = {cid}",
        f"INSERT INTO {ws}.cohort_inclusion_result (cohort_definition_id, inclusion_rule_mask, person_count, mode_id) "
        f"SELECT {cid}, 0, count(*), 0 FROM qualified_events",
        f"INSERT INTO {ws}.cohort_inclusion_result (cohort_definition_id, inclusion_rule_mask, person_count, mode_id) "
        f"SELECT {cid}, 0, count(DISTINCT person_id), 1 FROM qualified_events",
        f"INSERT INTO {ws}.cohort_summary_stats (cohort_definition_id, base_count, final_count, mode_id) "
        f"SELECT {cid}, count(*), count(*), 0 FROM qualified_events",
        f"INSERT INTO {ws}.cohort_summary_stats (cohort_definition_id, base_count, final_count, mode_id) "
        f"SELECT {cid}, count(DISTINCT person_id), count(DISTINCT person_id), 1 FROM qualified_events",
    ]
    return statements[:at] + stats + statements[at:]
