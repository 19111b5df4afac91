"""Vocabulary of the metastasis extractor: target words, sites, ConText modifiers, section headings.

Everything here is data for medspaCy's own engines (TargetMatcher, ConText, Sectionizer); the
only hand-written logic lives in ``pipeline.py`` (abbreviations/typos, sentence ends, linking a
site to a metastasis mention). Patterns match the token ``NORM``, which the normaliser sets to
the expanded abbreviation or the corrected spelling ("mets" -> "metastases", "LN" -> "lymph_node").

Hedge and history choices (docs/nlp.md):
* counted as present: likely, probable, in keeping with, consistent with, compatible with,
  suspicious for, suggestive of, worrisome/concerning for, represents; known / previous / stable /
  resolved metastases (a prevalent or treated metastasis still makes the patient metastatic);
* not counted: cannot exclude / not excluded, possible, may/might/could represent, equivocal,
  indeterminate, "?" and everything asked ("assess for", "rule out", "evaluate for");
* metastases attributed to another primary (melanoma, colorectal, renal ...) are not counted;
* a site next to a benign word (cyst, haemangioma, adenoma, bone island) is not linked.
"""

from __future__ import annotations

SITES = ("liver", "bone", "lung", "brain", "lymph_node", "pleura", "skin", "adrenal", "peritoneum", "other")

# abbreviations -> the NORM patterns match (lower-case keys)
ABBREVIATIONS = {
    "mets": "metastases", "met": "metastasis", "metz": "metastases", "mets.": "metastases",
    "ln": "lymph_node", "lns": "lymph_node", "lad": "lymphadenopathy", "lymphadenopathies": "lymphadenopathy",
    "hep": "hepatic", "pulm": "pulmonary", "mediast": "mediastinal", "perit": "peritoneal",
    "secs": "secondaries", "2ndaries": "secondaries", "w/": "with", "c/w": "consistent_with",
    "r/o": "rule_out", "ro": "rule_out", "?mets": "metastases",
}

# words typo-corrected (Damerau distance 1, words of 5+ letters) before matching
SPELLING = (
    "metastasis", "metastases", "metastatic", "liver", "hepatic", "osseous", "skeletal", "pulmonary",
    "adrenal", "peritoneal", "peritoneum", "pleural", "cerebral", "cutaneous", "lymph", "nodal",
    "vertebral", "secondaries", "deposits", "excluded", "consistent", "compatible", "suspicious",
    "evidence", "keeping", "likely", "probable", "possible", "equivocal", "indeterminate",
)

SITE_WORDS: dict[str, list[str]] = {
    "liver": ["liver", "hepatic", "hepatic_", "segment"],
    "bone": ["bone", "bones", "bony", "osseous", "skeletal", "skeleton", "spine", "spinal", "vertebra",
             "vertebrae", "vertebral", "sacrum", "sacral", "iliac", "ilium", "femur", "femoral", "humerus",
             "humeral", "rib", "ribs", "sternum", "sternal", "skull", "calvarium", "calvarial", "marrow",
             "acetabulum", "acetabular", "scapula", "pubic", "ischium", "sclerotic", "lytic", "blastic"],
    "lung": ["lung", "lungs", "pulmonary", "lingula", "perihilar", "lymphangitis", "intrapulmonary"],
    "brain": ["brain", "cerebral", "cerebellar", "cerebellum", "intracranial", "leptomeningeal", "dural",
              "frontal", "parietal", "temporal", "occipital", "intraparenchymal"],
    "lymph_node": ["lymph_node", "nodal", "node", "nodes", "lymphadenopathy", "axillary", "supraclavicular",
                   "mediastinal", "hilar", "paraaortic", "para-aortic", "retroperitoneal", "internal_mammary"],
    "pleura": ["pleura", "pleural"],
    "skin": ["skin", "cutaneous", "subcutaneous", "dermal", "intradermal"],
    "adrenal": ["adrenal", "adrenals", "suprarenal"],
    "peritoneum": ["peritoneum", "peritoneal", "omental", "omentum", "carcinomatosis", "mesenteric"],
    "other": ["spleen", "splenic", "ovary", "ovarian", "ovaries", "pancreas", "pancreatic", "kidney",
              "kidneys", "renal", "muscle", "muscular", "orbit", "orbital", "bowel", "thyroid", "soft_tissue"],
}
# two-token site phrases (NORM of each token)
SITE_PHRASES: dict[str, list[tuple[str, str]]] = {
    "lung": [("upper", "lobe"), ("lower", "lobe"), ("middle", "lobe")],
    "lymph_node": [("lymph", "node"), ("lymph", "nodes"), ("internal", "mammary")],
    "other": [("soft", "tissue"), ("soft", "tissues")],
}

# metastasis mentions (NORM); regex catches inflections and the corrected spellings
MET_REGEX = r"^(metasta|micrometasta)"
MET_WORDS = ["secondaries", "carcinomatosis", "carcinomatosa", "metastases", "metastasis"]
MET_DEPOSIT_PREFIX = ["secondary", "metastatic", "tumour", "tumor", "malignant", "peritoneal", "omental",
                      "pleural", "nodal", "hepatic", "osseous", "skeletal", "bony", "pulmonary", "cutaneous"]

OTHER_PRIMARIES = ["melanoma", "colorectal", "colon", "rectal", "renal cell", "rcc", "prostate", "prostatic",
                   "thyroid cancer", "lymphoma", "sarcoma", "ovarian cancer", "pancreatic cancer",
                   "gastric cancer", "bladder cancer", "neuroendocrine", "myeloma", "small cell lung"]

# (literal, category, direction, extra) ; categories map to span attributes in pipeline.SPAN_ATTRS
NEGATIONS_FORWARD = ["no", "not", "without", "negative for", "free of", "no evidence of", "no sign of",
                     "no signs of", "absence of", "no new", "no further", "no definite", "no convincing",
                     "no scintigraphic evidence of", "no radiological evidence of", "rather than", "nor",
                     "clear of", "neither"]
NEGATIONS_BACKWARD = ["not seen", "not identified", "not demonstrated", "is normal", "are normal", "normal",
                      "are clear", "is clear", "clear", "unremarkable", "absent", "ruled out", "excluded",
                      "within normal limits", "not present"]
# backward negations that speak of an organ, not of a lesion: they negate site mentions only
SITE_ONLY_BACKWARD = ["normal", "is normal", "are normal", "clear", "are clear", "is clear", "unremarkable"]
ASKED_FORWARD = ["assess for", "evaluate for", "evaluation for", "rule out", "rule_out", "to exclude",
                 "query", "screening for", "exclude", "look for", "restaging for"]
ASKED_BOTH = ["?"]  # "? liver mets", "metastases in the brain?"
WEAK_FORWARD = ["possible", "possibly", "may represent", "might represent", "could represent", "may be",
                "questionable", "equivocal for", "indeterminate for", "cannot exclude", "can not exclude",
                "can't exclude", "not excluding", "differential includes", "differential diagnosis includes",
                "uncertain"]
WEAK_BACKWARD = ["cannot be excluded", "can not be excluded", "not excluded", "not be excluded",
                 "cannot be ruled out", "not ruled out", "equivocal", "indeterminate", "is possible",
                 "are possible", "not excluded."]
STRONG_FORWARD = ["likely", "probable", "probably", "in keeping with", "consistent with", "consistent_with",
                  "compatible with", "suspicious for", "suspicious of", "highly suspicious for",
                  "suggestive of", "worrisome for", "concerning for", "represents", "most likely"]
HISTORY_FORWARD = ["known", "history of", "previous", "previously", "prior", "previously seen",
                   "previously treated", "treated", "again seen", "re-demonstrated", "redemonstrated",
                   "pre-existing", "established"]
HISTORY_BACKWARD = ["stable", "unchanged", "resolved", "have resolved", "has resolved", "again noted",
                    "no longer seen", "no longer visible", "slightly larger", "smaller", "regressed"]
BENIGN = ["cyst", "cysts", "haemangioma", "hemangioma", "haemangiomas", "hemangiomas", "adenoma",
          "bone island", "enostosis", "benign", "degenerative", "fracture", "traumatic", "granuloma",
          "fibroadenoma", "lipoma", "reactive"]
TERMINATIONS = ["but", "however", "although", "though", "except", "whereas", "while", "apart from",
                "otherwise", "which", "with new", "and new", "there are new", "there is new"]

# section headings (lower-case words); a heading ends with one of HEADING_END
SECTIONS = {
    "indication": ["indication", "indications", "history", "reason", "information", "details",
                   "clinical", "request", "referral"],
    "findings": ["findings", "finding", "report", "description", "results"],
    "impression": ["impression", "conclusion", "conclusions", "opinion", "summary", "comment", "comments",
                   "diagnosis"],
    "technique": ["technique", "comparison", "procedure", "protocol", "examination", "exam"],
}
HEADING_END = [":", "-", "–", "—", ";"]
