"""The pooling view puts sites' calendar intervals together by result, interval kind and calendar
year (earliest start, latest end); expectations written by hand."""

from __future__ import annotations

import pandas as pd

from coordinator.pooling.results import pooling_view

INC = "incidence_start_date &&& incidence_end_date &&& analysis_interval"
PREV = "prevalence_start_date &&& prevalence_end_date &&& analysis_interval"


def test_calendar_intervals_are_joined_per_result_name_and_year():
    rows = [  # (result_id, additional_name, additional_level, expected level after the view)
        (1, INC, "2010-01-01 &&& 2010-12-31 &&& years", "2010-01-01 &&& 2010-12-31 &&& years"),
        (1, INC, "2010-03-01 &&& 2010-12-31 &&& years", "2010-01-01 &&& 2010-12-31 &&& years"),
        (1, INC, "2011-01-01 &&& 2011-06-30 &&& years", "2011-01-01 &&& 2011-12-31 &&& years"),
        (1, INC, "2011-01-01 &&& 2011-12-31 &&& years", "2011-01-01 &&& 2011-12-31 &&& years"),
        (1, INC, "2011-01-01 &&& 2011-06-30 &&& years", "2011-01-01 &&& 2011-12-31 &&& years"),  # a repeat
        (1, INC, "2010-01-01 &&& 2011-06-30 &&& overall", "2010-01-01 &&& 2011-12-31 &&& overall"),
        (1, INC, "2010-03-01 &&& 2011-12-31 &&& overall", "2010-01-01 &&& 2011-12-31 &&& overall"),
        (2, INC, "2010-02-01 &&& 2010-12-31 &&& years", "2010-02-01 &&& 2010-12-31 &&& years"),  # another result
        # another name: joined with its own rows only (not with incidence's 2010-01-01 .. 2010-12-31)
        (1, PREV, "2010-06-01 &&& 2010-06-01 &&& years", "2010-02-01 &&& 2010-09-30 &&& years"),
        (1, PREV, "2010-02-01 &&& 2010-09-30 &&& years", "2010-02-01 &&& 2010-09-30 &&& years"),
        (1, INC, "2010-01-01 &&& years", "2010-01-01 &&& years"),  # not three parts: left alone
        (1, INC, "2010-01-01 &&& 2010-12-31 &&& months", "2010-01-01 &&& 2010-12-31 &&& months"),  # not dated
        (1, "overall", "overall", "overall"),
    ]
    data = pd.DataFrame({"result_id": [r[0] for r in rows], "additional_name": [r[1] for r in rows],
                         "additional_level": [r[2] for r in rows], "cdm_name": "x"})
    out = pooling_view(data)
    assert out["additional_level"].tolist() == [r[3] for r in rows]
    assert data["additional_level"].tolist() == [r[2] for r in rows]  # the input is not changed


def test_prevalence_point_days_pool_with_their_period():
    # prevalence at one day per year: the sites' days differ, the year's earliest day and latest day label it
    data = pd.DataFrame({"result_id": [3, 3, 3], "additional_name": [PREV] * 3, "cdm_name": ["a", "b", "c"],
                         "additional_level": ["2012-01-01 &&& 2012-01-01 &&& years", "2012-07-01 &&& 2012-07-01 &&& years",
                                              "2013-01-01 &&& 2013-01-01 &&& years"]})
    assert pooling_view(data)["additional_level"].tolist() == [
        "2012-01-01 &&& 2012-07-01 &&& years", "2012-01-01 &&& 2012-07-01 &&& years",
        "2013-01-01 &&& 2013-01-01 &&& years"]
