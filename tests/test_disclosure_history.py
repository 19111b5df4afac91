"""Two releases after a refresh, from the attacker's side: exact and rounded (``round_counts_to = 5``).

The attacker (benchmarks/attacker.py, SciPy linprog, nothing of the production audit) reads only the
two released tables: for every cell in both it bounds the change (second - first) by what each
release says of the cell (exact value, rounding preimage, or LP interval of a withheld count) and
reports a true change of 1..min-1 persons that it pins tighter than every value 1..min-1. The site's
pipeline is the one ``study_exec`` runs (:func:`site_agent.disclosure.release_with_history`).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from benchmarks.attacker import differenced, narrowed, reader_intervals
from optima_common.disclosure import check_release
from site_agent.disclosure import release_with_history
from site_agent.governance.release_history import ReleaseHistory
from tests.factories import clone_persons, cohort_subjects, run_site

MIN = 5
SCLC = 4


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from site_agent.cdm.synth import generate_site

    root = tmp_path_factory.mktemp("history")
    res = generate_site(out=root / "base.duckdb", persons=1500, site="site_a", profile="oncology", seed=11)
    return res.out


def _release(cdm, history, policy, manifest):
    result = run_site(cdm, min_cell_count=MIN)
    truth = run_site(cdm, min_cell_count=1)
    prot, exact, report = release_with_history(result, MIN, history, round_to=policy)
    history.record(prot.result, manifest, minimum=MIN, exact=exact)
    return prot.result, truth, report


@pytest.mark.parametrize("policy", [0, 5])
@pytest.mark.parametrize("added", [1, 2])
def test_refresh_adding_few_patients_cannot_be_differenced(site, tmp_path, policy, added):
    cdm = tmp_path / "site.duckdb"
    shutil.copy(site, cdm)
    history = ReleaseHistory(tmp_path / "state")
    first, truth1, report1 = _release(cdm, history, policy, "m1")
    assert not report1.changed
    clone_persons(cdm, cohort_subjects(cdm, SCLC)[:added], 10_000_000)
    second, truth2, report2 = _release(cdm, history, policy, "m2")
    for rel, truth in ((first, truth1), (second, truth2)):
        assert len(rel.data) == len(truth.data)
        assert check_release(rel, MIN) == []
        assert narrowed(rel, truth, MIN) == []
    assert differenced(first, second, truth1, truth2, MIN) == []
    if policy == 0:
        assert report2.changed  # exact counts moved by `added`: the history had to act
    # the attacker is not toothless: the second table released without the history gives the
    # new persons away by subtraction
    plain, _, _ = release_with_history(run_site(cdm, min_cell_count=MIN), MIN, ReleaseHistory(tmp_path / "none"),
                                       round_to=policy)
    leaks = differenced(first, plain.result, truth1, truth2, MIN)
    if policy == 0:
        assert leaks
    else:  # rounding to 5 alone hides a change of 1-2 in most cells; what it does not hide is guarded
        assert len(leaks) >= len(differenced(first, second, truth1, truth2, MIN))


def test_rounded_release_is_compared_as_its_interval_not_its_value(tmp_path):
    """Released 100 for 98..102 (nearest 5); the true count moves 101 -> 102: the old comparison of
    exact 102 with 100 withheld it (a change of 2 'seen'), though a reader of two rounded releases
    (100, 100) learns nothing; an exact release of 103 after 100 (98..102) says 1..5 came: open."""
    from optima_common.disclosure.rounding import round_counts
    from tests.test_governance_release_history import _sex_table

    history = ReleaseHistory(tmp_path)
    exact1 = _sex_table(51, 50)
    rounded1 = round_counts(exact1, 5, MIN)
    assert set(pd.to_numeric(rounded1.data["estimate_value"][rounded1.data["estimate_name"] == "count"])) == {100, 50}
    history.record(rounded1, "m1", minimum=MIN, exact=exact1)
    exact2 = _sex_table(52, 50)  # 101 -> 102, Female 51 -> 52
    _, report = history.guard(round_counts(exact2, 5, MIN), MIN, exact=exact2)
    assert not report.changed
    # exact after rounded: 100 stood for 98..102, 104 now: the change lies in 2..6, and is truly 3
    # (101 -> 104): 1 is excluded, so the reader learns "2..4 or more": withheld
    exact3 = _sex_table(54, 50)
    _, report = history.guard(exact3, MIN, exact=exact3)
    assert ("Number subjects", 104.0) in {(b.variable_name, b.value) for b in report.blocked}
    # exact 107 after 100 (98..102): change in 5..9, truly 6: not small, released
    exact4 = _sex_table(57, 50)
    _, report = history.guard(exact4, MIN, exact=exact4)
    assert "Number subjects" not in {b.variable_name for b in report.blocked}


def test_history_written_before_intervals_is_read(tmp_path):
    import sqlite3

    from tests.test_governance_release_history import _sex_table

    history = ReleaseHistory(tmp_path)
    history.record(_sex_table(50, 53), "m1")
    con = sqlite3.connect(history.path)
    con.execute("UPDATE released SET lo = NULL, hi = NULL, exact = NULL")
    con.commit()
    con.close()
    _, report = ReleaseHistory(tmp_path).guard(_sex_table(52, 53), MIN)
    assert {b.variable_name for b in report.blocked} == {"Number subjects", "Sex"}


def test_reader_intervals_of_a_rounded_table():
    from optima_common.disclosure.rounding import round_counts
    from tests.test_governance_release_history import _sex_table

    r = round_counts(_sex_table(51, 50), 5, MIN)
    iv = reader_intervals(r, MIN)
    assert iv[["lo", "hi"]].to_numpy().tolist() == [[98, 102], [48, 52], [48, 52]]
    assert np.isfinite(iv["hi"]).all()


def test_vectorised_change_rule_matches_the_scalar_rule():
    """The guard applies the change rule to every cell at once; on random intervals, true changes
    (unknown ones included) and minimums it answers exactly as the scalar rule does."""
    from optima_common.disclosure.audit import change_passes, change_passes_many

    rng = np.random.default_rng(3)
    n = 20_000
    a, b = rng.integers(-15, 16, n).astype(float), rng.integers(-15, 16, n).astype(float)
    dlo, dhi = np.minimum(a, b), np.maximum(a, b)
    change = rng.integers(-12, 13, n).astype(float)
    change[rng.random(n) < 0.25] = np.nan
    for minimum in (2, 5, 11):
        want = np.array([change_passes(x, y, c, minimum) for x, y, c in zip(dlo, dhi, change)])
        got = change_passes_many(dlo, dhi, change, minimum)
        assert want.any() and not want.all()
        assert np.array_equal(got, want), minimum


def test_history_record_round_trips_missing_levels_and_exact_values(tmp_path):
    """What ``record`` writes reads back cell for cell: a missing variable level stays missing, an
    exact value stays, an unknown exact value is NULL."""
    from optima_common.disclosure.rounding import round_counts
    from tests.test_governance_release_history import _sex_table

    history = ReleaseHistory(tmp_path)
    exact = _sex_table(51, 50)
    rounded = round_counts(exact, 5, MIN)
    assert history.record(rounded, "m1", minimum=MIN, exact=exact) == 3
    back = history.earlier().sort_values("value").reset_index(drop=True)
    assert back["value"].tolist() == [50.0, 50.0, 100.0]
    assert back["lo"].tolist() == [48.0, 48.0, 98.0] and back["hi"].tolist() == [52.0, 52.0, 102.0]
    assert sorted(back["exact"].tolist()) == [50.0, 51.0, 101.0]
    assert back["variable_level"].isna().sum() == (exact.data["variable_level"].isna()
                                                   & exact.data["estimate_name"].str.contains("count")).sum()
    assert history.record(rounded, "m1", minimum=MIN, exact=exact) == 0
