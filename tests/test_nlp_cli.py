"""`site-agent nlp extract`: output shape and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from site_agent.cli import main

pytest.importorskip("medspacy", reason="the nlp extra is not installed: pip install -e '.[nlp]'")


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_extract_json(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"id": "r1", "text": "Modality: CT\nFindings: Known hep mets, stable. No bone mets."}) + "\n\n"
                 + json.dumps({"id": 7, "text": "No evidence of metastatic disease.", "modality": "CT"}) + "\n")
    rc, out, err = _run(capsys, "nlp", "extract", str(f), "--json")
    assert rc == 0
    data = json.loads(out)
    assert [d["id"] for d in data] == ["r1", "7"]
    assert data[0]["metastatic"] is True and data[0]["sites"] == ["liver"]
    assert data[0]["evidence"][0]["text"] == "mets" and "historical" in data[0]["evidence"][0]["modifiers"]
    assert data[1] == {"id": "7", "metastatic": False, "sites": [], "evidence": []}


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "text": "x"}\n{"id": "b", \n', "line 2: not valid JSON"),
    ('{"text": "x"}\n', 'line 1: missing or empty "id"'),
    ('{"id": "a"}\n', 'line 1: missing "text"'),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "line 2: report id 'a' appears twice"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    ('\n\n', "holds no reports"),
])
def test_extract_bad_input_is_one_line(tmp_path, capsys, content, message):
    f = tmp_path / "r.jsonl"
    f.write_text(content)
    rc, out, err = _run(capsys, "nlp", "extract", str(f))
    assert rc == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_extract_unreadable_file(tmp_path, capsys):
    rc, _, err = _run(capsys, "nlp", "extract", str(tmp_path / "nope.jsonl"))
    assert rc == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, "nlp", "extract", str(tmp_path))
    assert rc == 2 and "is a folder" in err
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    rc, _, err = _run(capsys, "nlp", "extract", str(bad))
    assert rc == 2 and "not UTF-8" in err


def test_metastasis_command_on_a_cdm_without_reports(tmp_path, capsys):
    from optima_common.results import SummarisedResult
    from site_agent.cdm.synth import generate_site

    cdm = tmp_path / "plain.duckdb"
    generate_site(cdm, persons=1000, site="west", profile="oncology", seed=2)
    rc, out, err = _run(capsys, "nlp", "metastasis", "--cdm", str(cdm), "--out", str(tmp_path / "nlp"),
                        "--write-note-nlp")
    assert rc == 0, err
    assert "0 reports read" in out
    res = SummarisedResult.from_csv(tmp_path / "nlp" / "results.csv")
    d = res.data
    assert d.loc[(d["variable_name"] == "reports") & (d["variable_level"] == "read"), "estimate_value"].tolist() == ["0"]
    assert set(res.settings["result_type"]) == {"nlp_report_counts", "nlp_metastasis_agreement"}


def test_metastasis_command_bad_out_is_one_line(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    rc, out, err = _run(capsys, "nlp", "metastasis", "--cdm", str(tmp_path / "none.duckdb"), "--out", str(f))
    assert rc in (2, 3) and out == "" and len(err.strip().splitlines()) == 1
