"""OMOP CDM access: connections, validation, DDL, Eunomia and the synthetic generator."""

from site_agent.cdm.connection import CdmConnection, connect_cdm, resolve_cdm_url

__all__ = ["CdmConnection", "connect_cdm", "resolve_cdm_url"]
