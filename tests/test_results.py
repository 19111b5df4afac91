"""SummarisedResult: validation, bind, omopgenerics CSV layout and round trip."""

from __future__ import annotations

import pandas as pd
import pytest

from optima_common.results import (
    RESULT_COLUMNS,
    ResultFormatError,
    SummarisedResult,
    bind,
    validate_csv,
)

SET = {"result_id": 1, "result_type": "summarise_characteristics", "package_name": "optima",
       "package_version": "0.1.0", "study": "lung"}


def rec(**kw):
    base = {"cdm_name": "site_a", "group_name": "cohort_name", "group_level": "sclc",
            "variable_name": "number subjects", "estimate_name": "count",
            "estimate_type": "integer", "estimate_value": "10"}
    return base | kw


def sample() -> SummarisedResult:
    return SummarisedResult.from_records(
        [rec(), rec(variable_name="Sex", variable_level="Female", estimate_value="6"),
         rec(variable_name="Sex", variable_level='Ma"le', estimate_value=None),
         rec(variable_name="Age", estimate_name="mean", estimate_type="numeric", estimate_value="61.5",
             strata_name="sex &&& age_group", strata_level="Female &&& <50")],
        [SET])


def test_round_trip_exact(tmp_path):
    r = sample()
    path = r.to_csv(tmp_path / "out.csv")
    back = SummarisedResult.from_csv(path)
    assert back == r
    back.to_csv(tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == path.read_bytes()
    assert validate_csv(path) == r
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_layout(tmp_path):
    text = sample().to_csv(tmp_path / "o.csv").read_text(encoding="utf-8").splitlines()
    assert text[0] == ",".join(f'"{c}"' for c in RESULT_COLUMNS)
    rows = [line for line in text[1:] if '"settings"' in line]
    names = [line.split(",")[8].strip('"') for line in rows]
    assert names == ["result_type", "package_name", "package_version", "group", "strata",
                     "additional", "min_cell_count", "study"]
    assert rows[0].startswith('1,NA,"overall","overall","overall","overall","settings",NA,')
    assert all('"character"' in line for line in rows)
    assert '"strata","character","sex &&& age_group"' in "\n".join(rows)
    assert 'Ma""le' in "\n".join(text) and ',NA,"overall","overall"' in "\n".join(text)


def test_settings_defaults_and_types():
    s = sample().settings
    assert list(s.columns[:8]) == ["result_id", "result_type", "package_name", "package_version",
                                   "group", "strata", "additional", "min_cell_count"]
    assert s.loc[0, "group"] == "cohort_name" and s.loc[0, "additional"] == ""
    assert s.loc[0, "min_cell_count"] == "0"


@pytest.mark.parametrize("records, settings, msg", [
    ([rec()], [], "no settings"),
    ([rec(), rec(estimate_value="11")], [SET], "duplicate estimate"),
    ([rec(strata_name="sex &&& age", strata_level="Male")], [SET], "' &&& ' parts"),
])
def test_validation_errors(records, settings, msg):
    with pytest.raises(ResultFormatError, match=msg):
        SummarisedResult.from_records(records, settings)


def test_bad_estimate_type_and_columns():
    with pytest.raises(ValueError):
        SummarisedResult.from_records([rec(estimate_type="float")], [SET])
    with pytest.raises(ResultFormatError, match="13 columns"):
        SummarisedResult(pd.DataFrame({"result_id": [1]}), pd.DataFrame([SET]))


def test_bind_renumbers():
    a, b = sample(), sample()
    two = SummarisedResult.from_records([rec(), rec(result_id=5)], [SET, SET | {"result_id": 5}])
    out = bind(a, two, b)
    assert out.result_ids == [1, 2, 3, 4]
    assert sorted(set(out.data["result_id"])) == [1, 2, 3, 4]
    assert len(out) == len(a) + len(two) + len(b)
    assert out.settings.loc[out.settings.result_id == 4, "study"].item() == "lung"


def test_validate_csv_rejects_missing_settings(tmp_path):
    path = sample().to_csv(tmp_path / "o.csv")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in lines if '"settings"' not in line) + "\n")
    with pytest.raises(ResultFormatError, match="no settings"):
        validate_csv(path)
    path.write_text('"a","b"\n1,2\n')
    with pytest.raises(ResultFormatError, match="13"):
        validate_csv(path)


def test_settings_without_rows_round_trip(tmp_path):
    """A result type that ran and found nothing keeps its settings row through the CSV."""
    from optima_common.results import SummarisedResult

    res = SummarisedResult.from_records([], [{"result_id": 1, "result_type": "orphan_code_use",
                                              "package_name": "optima-federated", "package_version": "0.1.0"}])
    back = SummarisedResult.from_csv(res.to_csv(tmp_path / "empty.csv"))
    assert list(back.settings["result_type"]) == ["orphan_code_use"] and len(back.data) == 0


def _csv_by_hand(r: SummarisedResult) -> bytes:
    """An independent write.csv: every string quoted with ``"`` doubled, NA bare, result_id bare."""
    def cell(col, v):
        if col == "result_id":
            return str(int(v))
        return "NA" if v is None or (isinstance(v, float) and v != v) else '"' + str(v).replace('"', '""') + '"'
    long = r.to_long()
    lines = [",".join(f'"{c}"' for c in RESULT_COLUMNS)]
    lines += [",".join(cell(c, v) for c, v in zip(RESULT_COLUMNS, row, strict=True))
              for row in long[list(RESULT_COLUMNS)].itertuples(index=False)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def test_csv_bytes_arrow_writer_equals_the_text_writer_and_a_hand_written_csv():
    r = SummarisedResult.from_records(
        [rec(), rec(variable_name="Sex", variable_level='Ma"le', estimate_value=None),
         rec(variable_name="a,b", variable_level="line\nbreak", estimate_value=""),
         rec(variable_name="ünïcode — ≥", variable_level="NA", estimate_value='"'),
         rec(cdm_name="site_b", variable_name="x", variable_level=None, estimate_value="3")],
        [SET | {"blank": "", "note": 'say "hi"'}])
    text = r.to_csv_text().encode("utf-8")
    assert r.to_csv_bytes() == text == _csv_by_hand(r)
    assert b'"Ma""le","count","integer",NA' in text and b'"NA"' in text and b',"",' in text  # NA bare, "NA" quoted
    empty = SummarisedResult.empty()
    assert empty.to_csv_bytes() == empty.to_csv_text().encode("utf-8")


def test_csv_bytes_falls_back_for_text_arrow_cannot_take():
    r = SummarisedResult.from_records([rec(variable_level="bad \ud800 surrogate")], [SET])
    with pytest.raises(UnicodeEncodeError):  # as the text writer's encoding always did
        r.to_csv_bytes()


def test_with_suppressed_equals_the_validated_path_and_still_checks_settings():
    """``with_suppressed`` skips re-normalising the rows; it must give what ``with_data`` gives for
    the same frame (values, order, settings), leave its input alone, and still refuse bad settings."""
    r = sample()
    before = r.data.copy()
    for mask in ([True, False, False, True], [False] * 4, [True] * 4, [False, True, True, False]):
        d = r.data.copy()
        d.loc[mask, "estimate_value"] = "-"
        assert r.with_suppressed(mask) == r.with_data(d)
        new_set = r.settings.assign(min_cell_count="5")
        assert r.with_suppressed(mask, new_set) == r.with_data(d, new_set)
    assert r.data.equals(before)
    with pytest.raises(ValueError, match="shape"):
        r.with_suppressed([True, False])
    with pytest.raises(ResultFormatError, match="no settings row"):
        r.with_suppressed([False] * 4, r.settings.assign(result_id=2))
