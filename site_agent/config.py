"""A site's own settings: who it is, which coordinator keys it pins, what it approves.

Read from a TOML file (``tomllib``); every problem is one :class:`ConfigError` line naming
the file and the field. Relative paths are relative to the TOML file's folder. Example::

    site = "site_a"
    state_dir = "state"                      # audit log + seen-manifest store live here
    site_key = "keys/site_a.key"             # Ed25519 private key (PEM, PKCS8, unencrypted)
    coordinator_keys = ["keys/coord.pub"]    # pinned coordinator public keys (PEM)
    allowed_analyses = ["cohort_counts", "diagnostics"]
    min_cell_count = 5                       # site floor; >= 2 unless testing_allow_low_min_cell_count
    review_mode = false                      # hold released bundles in the outbox until a person approves
    max_manifest_age = 604800                # seconds, or an ISO 8601 duration such as "P7D"
    clock_skew_seconds = 300                 # tolerated for issued_at in the future
    statement_timeout_seconds = 3600         # longest a single SQL statement may run on the CDM (0: no limit)
    release_extremes = true                  # false: no min/max, no quantiles of groups < exact_quantiles_min_group
    round_counts_to = 0                      # e.g. 5: released counts rounded to the nearest 5 (OpenSAFELY)

    [cdm]
    url = "duckdb:///site_a.duckdb"
    cdm_schema = "main"
    write_schema = "results"

    [approved_cohorts]
    sha256 = ["012c4227…"]                   # individually approved definitions (file sha256)
    catalogs = ["../cohort_definitions/catalog.json"]   # approve every definition listed there
    files = ["defs/my_cohort.json"]          # approve single files (their sha256 is computed)

Approving through ``catalogs`` or ``files`` also gives the policy the approved text itself,
which it needs when a manifest's expression lost its key order in transit (manifest files
are written with sorted keys); see :mod:`site_agent.policy`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from optima_common.errors import ConfigError, OptimaError
from optima_common.fileio import read_document, validate_document
from optima_common.keys import key_id, load_private_key, load_public_key
from optima_common.protocol import ANALYSES
from site_agent.governance.keyring import Keyring


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CdmSettings(_Strict):
    """Where the site's OMOP CDM lives (same meaning as the CLI's ``--cdm*`` options)."""

    url: str
    cdm_schema: str | None = None
    vocab_schema: str | None = None
    write_schema: str | None = None


class ApprovedCohorts(_Strict):
    """Cohort definitions the site has approved, by the sha256 of the definition file bytes."""

    sha256: list[str] = Field(default_factory=list)
    catalogs: list[Path] = Field(default_factory=list)  # approve every definition a catalog lists
    files: list[Path] = Field(default_factory=list)  # approve these definition files (sha256 of bytes)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        bad = [h for h in v if not (len(h) == 64 and all(c in "0123456789abcdef" for c in h))]
        if bad:
            raise ValueError(f"not a lower-case hex sha256: {bad[0]!r}")
        return v


class GenomicsInputs(_Strict):
    """The site's genomics files for the ``genomics_profile`` analysis (see docs/genomics.md)."""

    maf: list[Path] = Field(min_length=1)
    linkage: Path
    expression: Path | None = None
    clinical: Path | None = None  # without it, age/race/ER/PR/HER2 come from the CDM
    actionability: Path | None = None
    top_genes: int = Field(30, ge=1)
    pair_genes: int = Field(10, ge=2)


class SiteConfig(_Strict):
    """Validated site settings; paths are absolute after :func:`load_config`."""

    site: str = Field(min_length=1)
    cdm: CdmSettings
    state_dir: Path
    site_key: Path
    coordinator_keys: list[Path] = Field(min_length=1)
    approved_cohorts: ApprovedCohorts = Field(default_factory=ApprovedCohorts)
    min_cell_count: int = 5
    testing_allow_low_min_cell_count: bool = False
    allowed_analyses: list[str] = Field(default_factory=lambda: ["cohort_counts"])
    review_mode: bool = False
    # local image archives the training tasks read, by task name ("pathology", "mammography")
    image_roots: dict[str, Path] = Field(default_factory=dict)
    genomics: GenomicsInputs | None = None  # [genomics] inputs of the genomics_profile analysis
    max_manifest_age: dt.timedelta = dt.timedelta(days=7)
    clock_skew_seconds: float = Field(300.0, ge=0)
    statement_timeout_seconds: float = Field(3600.0, ge=0)  # per SQL statement on the CDM; 0: no limit
    # disclosure options: false drops minimum/maximum, and quantiles of groups smaller than
    # exact_quantiles_min_group, from every released table (they are single persons' values)
    release_extremes: bool = True
    exact_quantiles_min_group: int = Field(20, ge=0)
    # round every released count to the nearest multiple of this (0 = exact counts), as OpenSAFELY
    # does with 5; applied before the audit, derived estimates recomputed (docs/disclosure.md)
    round_counts_to: int = Field(0, ge=0)

    @field_validator("allowed_analyses")
    @classmethod
    def _known_analyses(cls, v: list[str]) -> list[str]:
        unknown = [a for a in v if a not in ANALYSES]
        if unknown:
            raise ValueError(f"unknown analysis {', '.join(map(repr, unknown))}; known: {', '.join(ANALYSES)}")
        return v

    @model_validator(mode="after")
    def _floor(self) -> SiteConfig:
        if self.min_cell_count < 0:
            raise ValueError("min_cell_count: must be >= 0")
        if self.min_cell_count < 2 and not self.testing_allow_low_min_cell_count:
            raise ValueError(f"min_cell_count: {self.min_cell_count} is below 2 "
                             "(set testing_allow_low_min_cell_count = true only for tests)")
        if self.max_manifest_age <= dt.timedelta(0):
            raise ValueError("max_manifest_age: must be positive")
        return self

    # --- keys and approvals (read from the files the settings name) ----------------------

    def site_private_key(self) -> Ed25519PrivateKey:
        """The site's Ed25519 signing key."""
        try:
            return load_private_key(self.site_key)
        except ConfigError as exc:
            raise ConfigError(f"site_key: {exc}") from None

    def trusted_keys(self) -> dict[str, tuple[str, Ed25519PublicKey]]:
        """Pinned coordinator keys as ``{key_id: (file stem, key)}`` (what ``bundle.verify`` takes).

        The TOML's ``coordinator_keys`` plus keys pinned in ``state_dir/keyring``, minus revoked ids.
        """
        keys: dict[str, tuple[str, Ed25519PublicKey]] = {}
        for i, path in enumerate(self.coordinator_keys):
            try:
                pub = load_public_key(path)
            except ConfigError as exc:
                raise ConfigError(f"coordinator_keys[{i}]: {exc}") from None
            keys[key_id(pub)] = (path.stem, pub)
        ring = Keyring(self.state_dir)  # pinned and revoked with `site-agent keys …`
        keys.update(ring.pinned_coordinator_keys())
        for kid in ring.revoked_ids():
            keys.pop(kid, None)
        return keys

    def revoked_key_ids(self) -> set[str]:
        """Key ids revoked with ``site-agent keys revoke`` (never trusted, whatever the TOML pins)."""
        from site_agent.governance.keyring import Keyring

        return Keyring(self.state_dir).revoked_ids()

    def approved_cohort_files(self) -> dict[str, Path | None]:
        """Approved sha256 -> the local definition file when known (catalog), else None."""
        from site_agent.cohorts.definitions import load_catalog

        approved: dict[str, Path | None] = {h: None for h in self.approved_cohorts.sha256}
        for i, cat in enumerate(self.approved_cohorts.catalogs):
            if not cat.is_file():
                raise ConfigError(f"approved_cohorts.catalogs[{i}]: catalog file {cat} not found")
            try:
                entries = load_catalog(cat)
            except OptimaError as exc:
                raise ConfigError(f"approved_cohorts.catalogs[{i}]: {exc}") from None
            for e in entries:
                approved[e.sha256] = e.path
        for i, path in enumerate(self.approved_cohorts.files):
            try:
                approved[hashlib.sha256(path.read_bytes()).hexdigest()] = path
            except OSError as exc:
                raise ConfigError(f"approved_cohorts.files[{i}]: cannot read {path} ({exc.strerror})") from None
        return approved

    def open_cdm(self):
        """Connect to the site's CDM with its schemas and ``statement_timeout_seconds``."""
        from site_agent.cdm import connect_cdm

        return connect_cdm(self.cdm.url, cdm_schema=self.cdm.cdm_schema, vocab_schema=self.cdm.vocab_schema,
                           write_schema=self.cdm.write_schema,
                           statement_timeout_seconds=self.statement_timeout_seconds)

    def effective_min_cell_count(self, requested: int) -> int:
        """The stricter of what the manifest asks and the site's floor."""
        return max(int(requested), self.min_cell_count)


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()


def load_config(path: str | Path) -> SiteConfig:
    """Read, validate and check a site TOML file (keys and catalogs are read once here)."""
    path = Path(path)
    raw = read_document(path, fmt="toml", what="site config", error=ConfigError)
    cfg = validate_document(SiteConfig, raw, path, what="site config", error=ConfigError)
    base = path.resolve().parent
    cfg = cfg.model_copy(update={
        "state_dir": _resolve(base, cfg.state_dir),
        "site_key": _resolve(base, cfg.site_key),
        "coordinator_keys": [_resolve(base, p) for p in cfg.coordinator_keys],
        "image_roots": {task: _resolve(base, p) for task, p in cfg.image_roots.items()},
        "genomics": None if cfg.genomics is None else cfg.genomics.model_copy(update={
            k: (None if v is None else [_resolve(base, x) for x in v] if isinstance(v, list) else _resolve(base, v))
            for k, v in cfg.genomics.model_dump(include={"maf", "linkage", "expression", "clinical",
                                                         "actionability"}).items()}),
        "approved_cohorts": cfg.approved_cohorts.model_copy(
            update={"catalogs": [_resolve(base, p) for p in cfg.approved_cohorts.catalogs],
                    "files": [_resolve(base, p) for p in cfg.approved_cohorts.files]}),
    })
    try:  # fail now, not when the first manifest arrives
        cfg.site_private_key()
        cfg.trusted_keys()
        cfg.approved_cohort_files()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg
