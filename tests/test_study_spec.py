"""The SCLC study spec: validated against the catalog before anything runs."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from optima_common.errors import ConfigError
from site_agent.study_spec import load_study
from tests.conftest import DEFINITIONS

SPEC = DEFINITIONS / "studies" / "sclc_stage_i_ii.json"


def test_spec_loads_and_resolves_catalog():
    study = load_study(SPEC)
    assert study.target.cohort_name == "sclc_stage_i_ii" and study.target.cohort_definition_id == 5
    assert study.death.cohort_name == "death" and study.progression.cohort_name == "disease_progression"
    assert set(study.event_concept_sets) >= {"carboplatin", "etoposide", "lobectomy", "imrt"}
    assert all(items for items in study.event_concept_sets.values())
    grid = study.spec.survival.grid
    assert grid[0] == 0 and all(b > a for a, b in zip(grid, grid[1:])) and grid[-1] >= 3652
    assert {365, 730, 1826} <= set(grid)  # the 1/2/5-year summaries fall on grid points


@pytest.fixture
def copy_tree(tmp_path):
    root = tmp_path / "defs"
    shutil.copytree(DEFINITIONS, root)
    return root


def _edit(root, **changes):
    spec = root / "studies" / "sclc_stage_i_ii.json"
    doc = json.loads(spec.read_text())
    for key, value in changes.items():
        doc[key] = value
    spec.write_text(json.dumps(doc))
    return spec


@pytest.mark.parametrize("changes, message", [
    ({"cohorts": {"target": "nope", "progression": "disease_progression", "death": "death"}}, "not in the catalog"),
    ({"treatment_events": {"x": "No such set"}}, "concept sets"),
    ({"outcome_horizons_days": {"soon": ["before", 3]}}, "invalid study spec at outcome_horizons_days"),
    ({"min_cell_count": -1}, "invalid study spec at min_cell_count"),
    ({"survival": {"grid_days": [0, 30, 30]}}, "invalid study spec at survival.grid_days"),
    ({"unexpected": 1}, "invalid study spec at unexpected"),
])
def test_invalid_specs_one_line(copy_tree, changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_study(_edit(copy_tree, **changes))
    assert "\n" not in str(err.value)


def test_malformed_and_tampered(copy_tree):
    spec = copy_tree / "studies" / "sclc_stage_i_ii.json"
    spec.write_text("{oops")
    with pytest.raises(ConfigError, match="malformed JSON"):
        load_study(spec)
    shutil.copy(SPEC, spec)
    carbo = copy_tree / "concept_sets" / "carboplatin.json"
    carbo.write_text(carbo.read_text().replace('"includeDescendants": true', '"includeDescendants": false'))
    with pytest.raises(ConfigError, match="sha256 differs"):
        load_study(spec)


@pytest.mark.parametrize("survival, message", [
    ({"grid_days": [0, 365, 730], "summary_years": [1, 5]}, "5 years (1826 days) is not before the grid's last"),
    ({"grid_days": [0, 365, 730], "summary_years": [2]}, "2 years (730 days) is not before the grid's last"),
    ({"grid_days": [0, 300, 730, 1000], "summary_years": [1]}, "1 years (365 days) is not a grid point"),
])
def test_spec_refuses_horizons_off_or_beyond_its_grid(survival, message):
    from site_agent.study_spec import SurvivalSpec

    with pytest.raises(ValueError, match=re.escape(message)):
        SurvivalSpec(**survival)
    assert SurvivalSpec().horizons == [365, 730, 1826]
