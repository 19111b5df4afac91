"""The metastasis extractor: a blank English spaCy pipeline with medspaCy's engines.

``spacy.blank("en")`` tokenizer (no model download) -> normaliser (abbreviations, typos; sets
``Token.norm_`` so offsets stay those of the original text) -> sentence ends (punctuation and
line breaks) -> medspaCy Sectionizer (headings in any case, merged "Findings/Impression") ->
medspaCy TargetMatcher (metastasis words and site words, as overlapping spans in a span group)
-> medspaCy ConText (negation, asked, weak and strong hedges, history, other primaries, benign
words). ``extract`` then links each metastasis mention to the sites it names in its sentence
(:mod:`site_agent.nlp.linking`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from site_agent.nlp import lexicon as L
from site_agent.nlp.linking import linked_sites

GROUP = "medspacy_spans"
LINK_WINDOW = 12  # tokens between a metastasis word and the nearest site list it may name (linking.py)
SPAN_ATTRS = {
    "NEGATED_EXISTENCE": {"is_negated": True},
    "POSSIBLE_EXISTENCE": {"is_uncertain": True},     # strong hedge: still counted
    "WEAK_HEDGE": {"nlp_weak": True},                 # not counted
    "HYPOTHETICAL": {"is_hypothetical": True},        # asked: not counted
    "HISTORICAL": {"is_historical": True},            # counted (prevalent metastasis)
    "OTHER_PRIMARY": {"nlp_other_primary": True},     # another cancer's metastasis: not counted
    "BENIGN": {"nlp_benign": True},                   # site described as benign: not linked
}


@dataclass
class Mention:
    """One metastasis or site mention with its context (a row of note_nlp)."""

    kind: str                 # "metastasis" or a site name
    text: str
    start_char: int
    end_char: int
    sentence: str
    section: str
    negated: bool = False
    asked: bool = False
    weak: bool = False
    hedged: bool = False
    historical: bool = False
    other_primary: bool = False
    benign: bool = False
    linked_sites: list[str] = field(default_factory=list)

    @property
    def counted(self) -> bool:
        if self.negated or self.asked or self.weak or self.other_primary or self.benign:
            return False
        return self.section != "indication" or self.historical  # a question in the indication is not a finding

    @property
    def modifiers(self) -> str:
        flags = [n for n in ("negated", "asked", "weak", "hedged", "historical", "other_primary", "benign")
                 if getattr(self, n)]
        return ";".join([f"section={self.section}", *flags])


@dataclass
class ReportResult:
    id: str
    metastatic: bool
    sites: list[str]
    evidence: list[dict]
    mentions: list[Mention] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {"id": self.id, "metastatic": self.metastatic, "sites": self.sites, "evidence": self.evidence}


def _spelling_index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for w in L.SPELLING:
        for i in range(len(w)):
            idx.setdefault(w[:i] + w[i + 1:], w)
    return idx


_KNOWN = frozenset(L.SPELLING) | {"lover", "river", "diver", "liven", "lives", "lived", "deposit", "possibly"}  # real words, not typos
_DELETES = _spelling_index()


def correct(word: str) -> str | None:
    """The lexicon word at Damerau distance 1 of ``word`` (5+ letters), or None."""
    if len(word) < 5 or word in _KNOWN or not word.isalpha():
        return None
    if word in _DELETES:                      # a letter missing
        return _DELETES[word]
    for i in range(len(word)):
        d = word[:i] + word[i + 1:]
        if d in _KNOWN:                       # a letter too many
            return d
        if d in _DELETES and len(_DELETES[d]) == len(word):  # a letter replaced or two swapped
            cand = _DELETES[d]
            if sum(a != b for a, b in zip(cand, word)) <= 2 and sorted(cand) == sorted(word) or \
                    sum(a != b for a, b in zip(cand, word)) == 1:
                return cand
    return None


def _normalise(doc):
    for tok in doc:
        low = tok.lower_
        if low in L.ABBREVIATIONS:
            tok.norm_ = L.ABBREVIATIONS[low]
        else:
            fixed = correct(low)
            if fixed:
                tok.norm_ = fixed
    return doc


_ENDS = frozenset(".;?!")


def _sentences(doc):
    """Sentence ends at . ; ? ! and at line breaks that end a line or precede a new item."""
    n = len(doc)
    for i, tok in enumerate(doc):
        if i == 0:
            tok.is_sent_start = True
            continue
        prev = doc[i - 1]
        start = prev.text in _ENDS and (prev.text != "?" or not tok.is_lower)  # "? liver mets" asks on
        if not start and prev.is_space and "\n" in prev.text:
            before = doc[i - 2] if i >= 2 else None
            start = (prev.text.count("\n") > 1 or before is None or before.text in _ENDS or before.text == ":"
                     or tok.is_upper or tok.is_title or tok.like_num or tok.text in ("-", "*", "•"))
        tok.is_sent_start = bool(start) and i < n
    return doc


def _target_rules():
    from medspacy.target_matcher import TargetRule

    rules = [TargetRule("metastasis", "MET", pattern=[{"NORM": {"REGEX": L.MET_REGEX}}]),
             TargetRule("metastasis", "MET", pattern=[{"NORM": {"IN": L.MET_WORDS}}]),
             TargetRule("deposits", "MET", pattern=[{"NORM": {"IN": L.MET_DEPOSIT_PREFIX}},
                                                    {"LOWER": {"IN": ["deposit", "deposits"]}}])]
    for site, words in L.SITE_WORDS.items():
        rules.append(TargetRule(site, f"SITE_{site}", pattern=[{"NORM": {"IN": words}}]))
    for site, pairs in L.SITE_PHRASES.items():
        for a, b in pairs:
            rules.append(TargetRule(site, f"SITE_{site}", pattern=[{"NORM": a}, {"NORM": b}]))
    rules.append(TargetRule("spinal level", "SITE_bone", pattern=[{"TEXT": {"REGEX": r"^[CTLS]\d{1,2}$"}}]))
    return rules


def _phrase(literal: str) -> list[dict]:
    return [{"LOWER": w} for w in literal.split()]


def _context_rules():
    from medspacy.context import ConTextRule

    rules = []

    def add(words, category, direction, **kw):
        for w in words:
            pattern = [{"NORM": w}] if "_" in w else _phrase(w) if w != "?" else [{"TEXT": "?"}]
            rules.append(ConTextRule(w, category, direction=direction, pattern=pattern, **kw))

    mets = {"MET"}
    sites = {f"SITE_{s}" for s in L.SITES}
    add(L.NEGATIONS_FORWARD, "NEGATED_EXISTENCE", "FORWARD")
    add([w for w in L.NEGATIONS_BACKWARD if w not in L.SITE_ONLY_BACKWARD], "NEGATED_EXISTENCE", "BACKWARD",
        max_scope=6)
    # "Hepatic metastases with a normal skeleton": "normal" says the skeleton is normal, not the metastases
    add(L.SITE_ONLY_BACKWARD, "NEGATED_EXISTENCE", "BACKWARD", max_scope=6, allowed_types=sites)
    add(["normal"], "NEGATED_EXISTENCE", "FORWARD", max_scope=1, allowed_types=sites)  # "a normal skeleton"
    add(L.ASKED_FORWARD, "HYPOTHETICAL", "FORWARD")
    add(L.ASKED_BOTH, "HYPOTHETICAL", "BIDIRECTIONAL", max_scope=6)
    add(L.WEAK_FORWARD, "WEAK_HEDGE", "FORWARD")
    add(L.WEAK_BACKWARD, "WEAK_HEDGE", "BACKWARD")
    add(L.STRONG_FORWARD, "POSSIBLE_EXISTENCE", "FORWARD")
    add(L.HISTORY_FORWARD, "HISTORICAL", "FORWARD")
    add(L.HISTORY_BACKWARD, "HISTORICAL", "BACKWARD")
    add(L.OTHER_PRIMARIES, "OTHER_PRIMARY", "BIDIRECTIONAL", allowed_types=mets)
    add(L.BENIGN, "BENIGN", "BIDIRECTIONAL", allowed_types=sites, max_scope=4)
    add(L.TERMINATIONS, "TERMINATE", "TERMINATE")
    return rules


def _section_rules():
    from medspacy.section_detection import SectionRule

    every = sorted({w for ws in L.SECTIONS.values() for w in ws} | {"and", "/", "&", "for", "of", "exam"})
    rules = []
    for cat, words in L.SECTIONS.items():
        pattern = [{"LOWER": {"IN": words}}, {"LOWER": {"IN": every}, "OP": "*"}, {"TEXT": {"IN": L.HEADING_END}}]
        rules.append(SectionRule(cat, cat, pattern=pattern))
        # a heading alone on its line, without a delimiter ("FINDINGS\n")
        bare = [{"IS_SPACE": True, "TEXT": {"REGEX": "\n"}}, {"LOWER": {"IN": words}}, {"LOWER": {"IN": every}, "OP": "*"},
                {"IS_SPACE": True, "TEXT": {"REGEX": "\n"}}]
        rules.append(SectionRule(cat, cat, pattern=bare))
    return rules


@functools.lru_cache(maxsize=1)
def build_pipeline():
    """The spaCy Language object (built once per process; needs no download)."""
    import medspacy  # noqa: F401  (registers the medspaCy factories and extensions)
    import spacy
    from spacy.language import Language
    from spacy.tokens import Span

    for attr in ("nlp_weak", "nlp_other_primary", "nlp_benign"):
        if not Span.has_extension(attr):
            Span.set_extension(attr, default=False)
    if "optima_normalise" not in Language.factories:
        Language.component("optima_normalise")(_normalise)
        Language.component("optima_sentences")(_sentences)
    nlp = spacy.blank("en")
    nlp.add_pipe("optima_normalise")
    nlp.add_pipe("optima_sentences")
    nlp.add_pipe("medspacy_sectionizer", config={"rules": None, "input_span_type": None, "span_attrs": None})
    nlp.get_pipe("medspacy_sectionizer").add(_section_rules())
    nlp.add_pipe("medspacy_target_matcher", config={"result_type": "group", "span_group_name": GROUP})
    nlp.get_pipe("medspacy_target_matcher").add(_target_rules())
    nlp.add_pipe("medspacy_context", config={"rules": None, "input_span_type": "group", "span_group_name": GROUP,
                                             "span_attrs": SPAN_ATTRS, "prune_on_modifier_overlap": True})
    nlp.get_pipe("medspacy_context").add(_context_rules())
    return nlp


def _section(span) -> str:
    sec = span[0]._.section
    return (sec.category if sec is not None and sec.category else "body")


# words a modifier of a site does not reach across: "adrenal adenoma and multiple liver metastases",
# "hepatic metastases with a normal skeleton"
_SITE_BARRIERS = {"BENIGN": frozenset({"and"}), "NEGATED_EXISTENCE": frozenset({"with"})}


def _site_flag(sp, category: str, flag: bool) -> bool:
    """``flag`` unless every ``category`` modifier of the site span ``sp`` lies beyond a barrier word."""
    if not flag or sp.label_ == "MET" or category not in _SITE_BARRIERS:
        return flag
    barrier, doc = _SITE_BARRIERS[category], sp.doc
    mods = [m for m in sp._.modifiers if m.category == category]
    if category == "NEGATED_EXISTENCE":
        mods = [m for m in mods if m.rule.literal in L.SITE_ONLY_BACKWARD]
        if len(mods) < len([m for m in sp._.modifiers if m.category == category]):
            return flag  # another negation applies as well
    if not mods:
        return flag
    for m in mods:
        a, b = m.modifier_span
        lo, hi = (b, sp.start) if b <= sp.start else (sp.end, a)
        if not any(doc[i].lower_ in barrier for i in range(lo, hi)):
            return flag
    return False


def _mentions(doc) -> list[Mention]:
    out = []
    for sp in doc.spans[GROUP]:
        kind = "metastasis" if sp.label_ == "MET" else sp.label_[5:]
        out.append(Mention(
            kind=kind, text=sp.text, start_char=sp.start_char, end_char=sp.end_char, sentence=sp.sent.text.strip(),
            section=_section(sp), negated=_site_flag(sp, "NEGATED_EXISTENCE", sp._.is_negated),
            asked=sp._.is_hypothetical, weak=sp._.nlp_weak, hedged=sp._.is_uncertain, historical=sp._.is_historical,
            other_primary=sp._.nlp_other_primary, benign=_site_flag(sp, "BENIGN", sp._.nlp_benign)))
        out[-1]._span = sp  # type: ignore[attr-defined]
    return out


def _result(rid: str, doc) -> ReportResult:
    mentions = _mentions(doc)
    mets = [m for m in mentions if m.kind == "metastasis" and m.counted]
    sites_found: set[str] = set()
    counted_sites = [s for s in mentions if s.kind != "metastasis" and s.counted]
    for m in mets:
        for s in linked_sites(m, counted_sites, LINK_WINDOW):
            m.linked_sites.append(s.kind)
            sites_found.add(s.kind)
    for m in mentions:
        m.__dict__.pop("_span", None)
    evidence = [{"snippet": m.sentence[:250], "text": m.text, "offset": m.start_char,
                 "sites": sorted(set(m.linked_sites), key=L.SITES.index), "modifiers": m.modifiers}
                for m in mets]
    return ReportResult(id=rid, metastatic=bool(mets), sites=sorted(sites_found, key=L.SITES.index),
                        evidence=evidence, mentions=mentions)


def extract(text: str, rid: str = "") -> ReportResult:
    return _result(rid, build_pipeline()(text))


def extract_many(items: Iterable[tuple[str, str]], batch_size: int = 64) -> Iterator[ReportResult]:
    """(id, text) pairs -> results, in order (spaCy's nlp.pipe)."""
    nlp = build_pipeline()
    items = iter(items)

    def texts():
        for rid, text in items:
            ids.append(rid)
            yield text

    ids: list[str] = []
    for i, doc in enumerate(nlp.pipe(texts(), batch_size=batch_size)):
        yield _result(ids[i], doc)


_HEADER = re.compile(r"^\s*(exam(ination)? date|procedure date|date of (exam|procedure)|time|modality|accession"
                     r"|reported by|reporter|signed by|dictated by|electronically signed|verified by|radiologist)"
                     r"\s*[:#]", re.IGNORECASE)


def strip_system_lines(text: str) -> str:
    """Blank the lines the RIS adds (procedure date/time, modality, reporter) with spaces of the same
    length, so every offset the extractor reports is an offset into the original note text."""
    return "".join(" " * len(line.rstrip("\r\n")) + line[len(line.rstrip("\r\n")):] if _HEADER.match(line) else line
                   for line in text.splitlines(keepends=True))
