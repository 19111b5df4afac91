"""Radiology-report NLP at the site: metastasis and its sites (medspaCy on a blank spaCy pipeline)."""

from site_agent.nlp.lexicon import SITES
from site_agent.nlp.pipeline import (
    Mention,
    ReportResult,
    extract,
    extract_many,
    strip_system_lines,
)

__all__ = ["SITES", "Mention", "ReportResult", "extract", "extract_many", "strip_system_lines"]
