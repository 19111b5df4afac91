"""optima_common.fileio.read_document / validate_document: every way a config document can be
bad is one line naming the file and what to fix."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from optima_common.errors import ConfigError
from optima_common.fileio import read_document, validate_document


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: int


@pytest.mark.parametrize(("content", "fmt", "expect"), [
    (None, "json", "study spec not found"),
    (b"\xff\xfe\x00bad", "json", "not a UTF-8 text file"),
    (b'{"name": "a",', "json", "malformed JSON at line 1 column 14"),
    (b"name = ", "toml", "malformed TOML"),
    (b"[" * 100_000 + b"]" * 100_000, "json", "nested too deeply"),
])
def test_read_document_errors_are_one_line(tmp_path, content, fmt, expect):
    path = tmp_path / f"doc.{fmt}"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        read_document(path, fmt=fmt, what="study spec", error=ConfigError)
    line = str(err.value)
    assert expect in line and str(path) in line and "\n" not in line


def test_read_document_directory_is_a_read_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the site config"):
        read_document(tmp_path, fmt="toml", what="site config", error=ConfigError)


def test_documents_parse_and_validate(tmp_path):
    (tmp_path / "a.toml").write_text('name = "x"\nsize = 3\n', encoding="utf-8")
    (tmp_path / "a.json").write_text('{"name": "x", "size": 3}', encoding="utf-8")
    for f in ("a.toml", "a.json"):
        doc = read_document(tmp_path / f, fmt=f.split(".")[1], what="doc", error=ConfigError)
        assert validate_document(_Doc, doc, tmp_path / f, what="doc", error=ConfigError) == _Doc(name="x", size=3)
    with pytest.raises(ConfigError, match=r"invalid doc at size: .*\(\+1 more\)"):
        validate_document(_Doc, {"size": "many", "extra": 1, "name": "x"}, "p", what="doc", error=ConfigError)
