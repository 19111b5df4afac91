"""The one check that the [nlp] extra (spaCy, medspaCy) is installed, with a one-line fix."""

from __future__ import annotations

from optima_common.errors import ConfigError

MISSING_NLP = "install the nlp extra: pip install -e '.[nlp]' (on Python 3.11 also: pip install --no-deps medspacy==1.3.1)"


def require_nlp() -> None:
    try:
        import medspacy  # noqa: F401
        import spacy  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"'nlp' needs spaCy and medspaCy ({e.name} is missing)", hint=MISSING_NLP) from e
