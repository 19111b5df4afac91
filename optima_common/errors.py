"""Every error that reaches a user: one line, a hint, and an exit code of its own.

The table below is the single source of exit codes for both console scripts
(``site-agent`` and ``coordinator``); ``docs/exit-codes.md`` is checked against it by a
test. Each error also subclasses the closest built-in (ibis style), so library callers can
catch ``ValueError``/``ConnectionError``/``PermissionError`` without knowing ours.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of both command-line tools (0 is success)."""

    UNEXPECTED = 1         # a bug or an error we did not foresee (see the log)
    CONFIG = 2             # bad option, setting, file name or input file
    CDM_CONNECTION = 3     # the CDM database cannot be reached or opened
    CDM_VALIDATION = 4     # the CDM lacks a required table or column
    COHORT_DEFINITION = 5  # a cohort definition cannot be read, parsed or translated
    COHORT_BUILD = 6       # running a cohort's SQL failed; nothing was written
    STATEMENT_TIMEOUT = 7  # a statement ran past the site's statement timeout
    POLICY_REFUSAL = 8     # the site refuses a manifest (signature, approval, replay, expiry, ...)
    BUNDLE = 9             # a manifest or bundle is malformed, tampered or unverifiable
    AUDIT_LOG = 10         # the site's audit log cannot be written or read
    AUDIT_GUARD = 11       # an audit entry looked like person-level data; nothing written
    OUTBOX = 12            # a review item is missing, decided, or changed
    MAMMOGRAPHY_DATA = 13  # a mammography archive or clinical table is unreadable
    PATHOLOGY_DATA = 14    # a slide, annotation or slide table is unreadable
    COX_REFUSAL = 15       # a site refuses a Cox request
    RESULT_FORMAT = 16     # a summarised_result table is malformed
    DISCLOSURE = 17        # a table cannot be released without disclosing a small cell
    VOCABULARY_LOAD = 18   # an Athena vocabulary download cannot be loaded; nothing was changed
    COORDINATOR = 20       # a coordinator input problem (file, study id, option)
    STUDY_INCOMPLETE = 21  # fewer sites answered than the study's minimum
    NETWORK = 22           # the Flower network could not be started, reached or stopped
    STORE = 23             # the results store cannot be opened or would break its rules
    PKI = 24               # certificates or keys cannot be written
    TRAINING = 25          # a federated training run cannot go on
    PRIVACY_BUDGET = 26    # a site's differential-privacy budget is spent (or DP is missing)
    TEST_SPLIT = 27        # a test split too small or lacking a class to report metrics on
    GENOMICS_DATA = 28     # a MAF, expression matrix, linkage or clinical table is unreadable


class OptimaError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code: int = ExitCode.UNEXPECTED

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


# -- site agent ------------------------------------------------------------------------

class ConfigError(OptimaError, ValueError):
    """Bad option or setting given by the user."""

    exit_code = ExitCode.CONFIG


class CdmConnectionError(OptimaError, ConnectionError):
    """The CDM database cannot be reached or opened."""

    exit_code = ExitCode.CDM_CONNECTION


class CdmValidationError(OptimaError, LookupError):
    """The CDM lacks a required table or column."""

    exit_code = ExitCode.CDM_VALIDATION


class CohortDefinitionError(OptimaError, ValueError):
    """A cohort definition file cannot be read, parsed or translated."""

    exit_code = ExitCode.COHORT_DEFINITION


class CohortBuildError(OptimaError, RuntimeError):
    """Running a cohort's SQL on the CDM failed; nothing was written."""

    exit_code = ExitCode.COHORT_BUILD


class StatementTimeoutError(OptimaError, TimeoutError):
    """A statement ran longer than the site's ``statement_timeout_seconds``; it was cancelled."""

    exit_code = ExitCode.STATEMENT_TIMEOUT


class PolicyRefusal(OptimaError, PermissionError):
    """The site will not run this manifest; ``check`` names the rule, ``reason`` says why."""

    exit_code = ExitCode.POLICY_REFUSAL

    def __init__(self, check: str, reason: str):
        self.check = check
        self.reason = reason
        super().__init__(f"manifest refused ({check}): {reason}")


class BundleError(OptimaError, ValueError):
    """A manifest or result bundle is malformed, tampered with, or fails verification."""

    exit_code = ExitCode.BUNDLE


class AuditError(OptimaError, RuntimeError):
    """The audit log cannot be written or read."""

    exit_code = ExitCode.AUDIT_LOG


class AuditGuardError(OptimaError, ValueError):
    """An entry looked like it carried person-level data; nothing was written."""

    exit_code = ExitCode.AUDIT_GUARD


class OutboxError(OptimaError, RuntimeError):
    """A review item is missing, already decided, or its bundle changed; nothing was changed."""

    exit_code = ExitCode.OUTBOX


class MammographyDataError(OptimaError, ValueError):
    """A mammography archive, clinical table or DICOM file is unreadable or inconsistent."""

    exit_code = ExitCode.MAMMOGRAPHY_DATA


class PathologyDataError(OptimaError, ValueError):
    """A slide, annotation file or slide table cannot be read or makes no sense."""

    exit_code = ExitCode.PATHOLOGY_DATA


class GenomicsDataError(OptimaError, ValueError):
    """A MAF, expression matrix, sample linkage or clinical table cannot be read or makes no sense."""

    exit_code = ExitCode.GENOMICS_DATA


class CoxRefusal(OptimaError, ValueError):
    """A site refuses to answer a Cox score/information request."""

    exit_code = ExitCode.COX_REFUSAL


class ResultFormatError(OptimaError, ValueError):
    """A table does not follow the summarised_result format."""

    exit_code = ExitCode.RESULT_FORMAT


class DisclosureError(OptimaError, ValueError):
    """A table cannot be released (or accepted) without disclosing a small cell."""

    exit_code = ExitCode.DISCLOSURE


class VocabularyLoadError(OptimaError, ValueError):
    """An Athena vocabulary download is incomplete, truncated or unreadable; nothing was changed."""

    exit_code = ExitCode.VOCABULARY_LOAD


# -- coordinator -----------------------------------------------------------------------

class CoordinatorError(OptimaError, ValueError):
    """A user-fixable problem at the coordinator: bad input, missing file, unknown study."""

    exit_code = ExitCode.COORDINATOR


class StudyIncomplete(CoordinatorError, RuntimeError):
    """Fewer sites answered than the study's minimum."""

    exit_code = ExitCode.STUDY_INCOMPLETE


class NetworkError(CoordinatorError, ConnectionError):
    """The Flower network could not be started, reached or stopped cleanly."""

    exit_code = ExitCode.NETWORK


class StoreError(OptimaError, RuntimeError):
    """The results store cannot be opened, or a write would break its rules."""

    exit_code = ExitCode.STORE


class PkiError(CoordinatorError, OSError):
    """Certificate or key material cannot be written (exists, bad name, unwritable)."""

    exit_code = ExitCode.PKI


class TrainingError(OptimaError, RuntimeError):
    """A federated run cannot go on (no quorum, no starting model)."""

    exit_code = ExitCode.TRAINING


class PrivacyBudgetError(OptimaError, PermissionError):
    """A site refuses a training round: its privacy budget would be exceeded, or DP is missing."""

    exit_code = ExitCode.PRIVACY_BUDGET


class TestSplitError(OptimaError, ValueError):
    """A test split cannot support the metrics asked of it (a class missing, too few patients)."""

    __test__ = False  # not a pytest class
    exit_code = ExitCode.TEST_SPLIT


def validation_summary(exc) -> str:
    """One line from a pydantic ValidationError: ``field.path: message (+N more)``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {msg}{more}".replace("\n", " ")
