#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (README: "Run the tests").
# Installs the PostgreSQL server if missing (the tests start a private cluster with it) and R
# with its survival package (the independent reference for KM and Cox),
# creates .venv, installs the package with its dev, train and nlp extras, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing the PostgreSQL server (Debian package) for the integration tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || echo "warning: could not install postgresql; PostgreSQL tests will fail" >&2
  else
    echo "warning: PostgreSQL server not installed; run as root or: sudo apt-get install postgresql" >&2
  fi
fi

# R's survival package is the independent reference for KM and Cox (tests/test_reference_r.py)
if ! command -v Rscript >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing R and its survival package (Debian packages) for the reference tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq r-base-core r-cran-survival >/dev/null) \
      || echo "warning: could not install r-base-core r-cran-survival; the R reference tests will fail" >&2
  else
    echo "warning: Rscript not installed; run as root or: sudo apt-get install r-base-core r-cran-survival" >&2
  fi
fi

# systemd-analyze verifies the unit files in deploy/systemd (tests/test_deploy_static.py)
if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null) \
    || echo "warning: could not install systemd (systemd-analyze); the unit-file test will fail" >&2
fi

# a real browser for tests/test_browser.py (report.html and `coordinator view`): Debian's chromium + chromedriver
if { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; } && [ "$(id -u)" = 0 ]; then
  echo "installing chromium and chromium-driver (Debian packages) for the browser tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "warning: could not install chromium/chromium-driver; the browser tests will fail" >&2
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,train,nlp]'
# medspacy 1.3.1 pins spacy<3.8 on Python < 3.12 (numpy<2 through thinc); its code runs on the spaCy 3.8 of [nlp]
.venv/bin/python -c 'import medspacy' 2>/dev/null || .venv/bin/python -m pip install -q --no-deps medspacy==1.3.1
export MPLCONFIGDIR="${TMPDIR:-/tmp}/optima-mpl"
exec .venv/bin/python -m pytest "$@"
