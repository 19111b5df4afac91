"""Typed job documents the coordinator's commands hand to the ServerApp (``flwr run``).

A command writes one :class:`StudyJob` as JSON; the ServerApp reads it back with the same
model, so every place that starts a study builds the same document.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class StudyJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: Path  # the signed manifest file
    store: str  # results store path or SQLAlchemy URL
    trust: Path  # pinned site public keys, <site>.pub
    out: Path  # report.html, results.csv, bundles/, outcome.json
    reply_timeout: float = Field(600.0, gt=0)
    node_wait: float = Field(60.0, ge=0)
    report: bool = True
    cox: bool = True  # fit the study's Cox model over the network when it ran sclc_study
    cox_timeout: float = Field(300.0, gt=0)

    def document(self) -> dict:
        """The JSON-ready job file content (absolute paths, so the ServerApp's folder does not matter)."""
        return self.model_copy(update={"manifest": self.manifest.resolve(), "trust": self.trust.resolve(),
                                       "out": self.out.resolve()}).model_dump(mode="json")
