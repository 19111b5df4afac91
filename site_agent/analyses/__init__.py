"""Study analyses run at a site: treatment patterns, outcomes at horizons, survival, Cox pieces.

Each returns aggregates only (a ``summarised_result``); patient rows never leave.
"""
