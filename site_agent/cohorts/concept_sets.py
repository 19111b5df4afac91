"""ATLAS concept-set expressions resolved to concept ids, in SQL, with Circe's semantics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class _HasVocab(Protocol):
    @property
    def vocab_schema(self) -> str: ...


def _ids(concepts: Iterable[int]) -> str:
    return ", ".join(str(c) for c in sorted(set(concepts)))


def _sub_query(v: str, concepts: list[int], descendants: list[int]) -> str:
    """Circe's ``buildConceptSetSubQuery``: the concepts, plus valid descendants of some."""
    parts = []
    if concepts:
        parts.append(f"SELECT concept_id FROM {v}.concept WHERE concept_id IN ({_ids(concepts)})")
    if descendants:
        parts.append(f"SELECT c.concept_id FROM {v}.concept c JOIN {v}.concept_ancestor ca "
                     f"ON c.concept_id = ca.descendant_concept_id WHERE c.invalid_reason IS NULL "
                     f"AND ca.ancestor_concept_id IN ({_ids(descendants)})")
    return " UNION ".join(parts)


def _set_query(v: str, concepts: list[int], desc: list[int], mapped: list[int], mapped_desc: list[int]) -> str:
    """Circe's ``buildConceptSetQuery``: sub-query plus source concepts that 'Maps to' it."""
    if not concepts:
        return f"SELECT concept_id FROM {v}.concept WHERE 1 = 0"
    q = _sub_query(v, concepts, desc)
    if mapped:
        q += (f" UNION SELECT DISTINCT cr.concept_id_1 AS concept_id FROM ({_sub_query(v, mapped, mapped_desc)}) m "
              f"JOIN {v}.concept_relationship cr ON m.concept_id = cr.concept_id_2 "
              "AND cr.relationship_id = 'Maps to' AND cr.invalid_reason IS NULL")
    return q


def resolve_concept_set_sql(ctx: _HasVocab, expression_items: Iterable[Mapping[str, Any]]) -> str:
    """SQL (a query with one column ``concept_id``) resolving an ATLAS concept-set expression.

    Same semantics as Circe's ``ConceptSetExpressionQueryBuilder`` (the ``#Codesets`` of a
    cohort): included concepts (existing in ``concept``), plus valid descendants
    (``concept_ancestor``) of those with ``includeDescendants``, plus source concepts that
    ``'Maps to'`` (valid relationship) the ``includeMapped`` ones (and their descendants);
    then the excluded items, resolved the same way, removed.
    ``ctx`` is anything with a ``vocab_schema`` (a DiagnosticContext or a CdmConnection).
    """
    v = ctx.vocab_schema
    inc: tuple[list[int], ...] = ([], [], [], [])
    exc: tuple[list[int], ...] = ([], [], [], [])
    for item in expression_items:
        cid = (item.get("concept") or {}).get("CONCEPT_ID")
        if cid is None:
            continue
        cid = int(cid)
        target = exc if item.get("isExcluded") else inc
        desc, mapped = bool(item.get("includeDescendants")), bool(item.get("includeMapped"))
        target[0].append(cid)
        if desc:
            target[1].append(cid)
        if mapped:
            target[2].append(cid)
            if desc:
                target[3].append(cid)
    sql = f"SELECT DISTINCT i.concept_id FROM ({_set_query(v, *inc)}) i"
    if exc[0]:
        sql += f" LEFT JOIN ({_set_query(v, *exc)}) e ON i.concept_id = e.concept_id WHERE e.concept_id IS NULL"
    return sql
