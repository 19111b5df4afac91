"""Which anatomical sites a metastasis mention names, within its sentence.

spaCy's blank English pipeline has no parser, so attachment is read off the token sequence, in
this order (the first rule that finds a site wins):

1. **Attached**: counted site mentions overlapping the metastasis words ("peritoneal deposits"), the
   list of sites right before them ("hepatic and adrenal metastases", "left axillary and internal
   mammary lymph node metastases") and the list after a preposition ("metastatic disease to the
   liver, lungs and bones", "metastases in the thoracic spine").
2. **The latter / the former** before the mention: the last or first site of the list before it
   ("lesions in the liver and lung, the latter consistent with metastasis" -> lung).
3. **Nearest list**: the closest list of sites before the mention within ``window`` tokens
   ("lytic lesion in the right femur suspicious for metastasis"), else the closest after it.

A list is site mentions joined by "and", "or", commas, "&" or "/" (with "the" or "both" between);
anything else ends it, so in "pleural effusion and liver metastases" the list before the mention is
"liver" alone, and in "osseous metastases in the spine and a pleural effusion" the list after it is
"spine" alone. Only counted site mentions (not negated, not benign, ...) take part.
"""

from __future__ import annotations

JOIN = frozenset({"and", "or", ",", "&", "/"})
FILL = frozenset({"the", "both"})
PREPOSITIONS = frozenset({"to", "in", "of", "within", "involving", "throughout", "at", "into"})
HEADS = frozenset({"disease", "deposit", "deposits", "lesion", "lesions", "spread", "infiltration", "involvement",
                   "foci", "focus", "nodule", "nodules", "tumour", "tumor", "seeding"})
AFTER_PREPOSITION = 3  # tokens allowed between a preposition and the first site ("in the left cerebellum")


class SiteIndex:
    """Counted site mentions of one sentence by token index."""

    def __init__(self, sites: list, sent) -> None:
        self.sent = sent
        self.at: dict[int, object] = {}
        for s in sites:
            sp = s._span  # type: ignore[attr-defined]
            if sp.sent.start != sent.start:
                continue
            for i in range(sp.start, sp.end):
                self.at.setdefault(i, s)

    def _walk(self, i: int, step: int) -> list:
        """The list of sites containing the site token ``i``, walking backward (-1) or forward (+1)."""
        doc = self.sent.doc
        lo, hi = self.sent.start, self.sent.end
        found = []
        pending = False  # a joining word was passed and no site followed yet
        while lo <= i < hi:
            m = self.at.get(i)
            if m is not None:
                if m not in found:
                    found.append(m)
                sp = m._span  # type: ignore[attr-defined]
                i = sp.start - 1 if step < 0 else sp.end
                pending = False
                continue
            word = doc[i].lower_
            if word in JOIN or (pending and word in FILL):
                pending = True
                i += step
                continue
            break
        return found if step > 0 else found[::-1]

    def before(self, i: int) -> list:
        return self._walk(i, -1) if i in self.at else []

    def after(self, i: int) -> list:
        return self._walk(i, 1) if i in self.at else []


def _after_preposition(idx: SiteIndex, end: int) -> list:
    doc, hi = idx.sent.doc, idx.sent.end
    i = end
    heads = 0
    while i < hi and doc[i].lower_ in HEADS and heads < 2:
        i, heads = i + 1, heads + 1
    if i >= hi or doc[i].lower_ not in PREPOSITIONS:
        return []
    for j in range(i + 1, min(i + 1 + AFTER_PREPOSITION, hi)):
        if j in idx.at:
            return idx.after(j)
        if doc[j].is_punct:
            break
    return []


def linked_sites(met, sites: list, window: int) -> list:
    """Site mentions ``met`` (a metastasis mention with ``_span``) names; ``sites``: counted site mentions."""
    ms = met._span  # type: ignore[attr-defined]
    idx = SiteIndex(sites, ms.sent)
    doc = ms.doc
    overlap = [s for s in sites if s._span.sent.start == ms.sent.start  # type: ignore[attr-defined]
               and s._span.start < ms.end and ms.start < s._span.end]  # type: ignore[attr-defined]
    attached = overlap + idx.before(ms.start - 1) + _after_preposition(idx, ms.end)
    if attached:
        return list({id(s): s for s in attached}.values())
    lo = max(ms.sent.start, ms.start - window)
    for j in range(ms.start - 1, lo - 1, -1):
        word = doc[j].lower_
        if word in ("latter", "former") and j > ms.sent.start and doc[j - 1].lower_ == "the":
            for k in range(j - 2, lo - 1, -1):
                if k in idx.at:
                    group = idx.before(k)
                    return [group[-1] if word == "latter" else group[0]]
            break
    for j in range(ms.start - 1, lo - 1, -1):
        if j in idx.at:
            return idx.before(j)
    for j in range(ms.end, min(ms.end + window, ms.sent.end)):
        if j in idx.at:
            return idx.after(j)
    return []
