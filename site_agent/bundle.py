"""The contract between coordinator and sites: signed study manifests and signed result bundles.

Shared by both sides (the coordinator imports only this module and ``results``). Both
documents are JSON with a ``signature`` block over their *canonical* bytes (sorted keys,
no whitespace, UTF-8): Ed25519 from ``cryptography``, no home-made primitives. A key is
identified by the sha256 fingerprint of its raw public bytes.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Signature(_Doc):
    algorithm: str = "ed25519"
    key_id: str = Field(pattern=r"^[0-9a-f]{64}$")  # sha256 of the raw public key
    value: str  # base64 of the 64-byte signature


class ManifestCohort(_Doc):
    cohort_definition_id: int
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    expression: dict  # the ATLAS JSON itself, so a site runs exactly what it approved by hash


class StudyManifest(_Doc):
    """What the coordinator asks a site to run (signed by the coordinator)."""

    schema_version: int = SCHEMA_VERSION
    kind: str = "study_manifest"
    study_id: str
    study_version: str
    manifest_id: str  # unique per send: sites refuse a manifest id they have seen (replay)
    nonce: str = Field(min_length=16)
    issued_at: dt.datetime
    expires_at: dt.datetime
    analyses: tuple[str, ...]  # e.g. ("cohort_counts", "diagnostics", "sclc_study")
    parameters: dict = Field(default_factory=dict)
    cohorts: tuple[ManifestCohort, ...]
    min_cell_count: int = Field(5, ge=0)
    target_sites: tuple[str, ...]
    min_sites: int = Field(1, ge=1)
    signature: Signature | None = None


class SuppressionRecord(_Doc):
    """How the released tables were protected (a bundle without it is refused)."""

    min_cell_count: int = Field(ge=0)
    site_floor: int = Field(ge=0)
    method: str  # e.g. "optima-federated suppress + disclosure v1"


class Provenance(_Doc):
    cdm_name: str
    cdm_release_date: str | None = None
    vocabulary_version: str | None = None
    package_version: str


class ResultBundle(_Doc):
    """What a site releases for one manifest (signed by the site)."""

    schema_version: int = SCHEMA_VERSION
    kind: str = "result_bundle"
    site: str
    manifest_id: str
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # canonical bytes of the signed manifest
    created_at: dt.datetime
    provenance: Provenance
    suppression: SuppressionRecord
    results_csv: str  # the summarised_result CSV text, already suppressed
    signature: Signature | None = None
