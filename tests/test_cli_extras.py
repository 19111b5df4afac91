"""Without the `train` extra, image commands say what to install in one line (no traceback)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

BLOCK = "import sys; sys.modules['shapely'] = None; sys.modules['pydicom'] = None; " \
        "from site_agent.cli import main; sys.exit(main(sys.argv[1:]))"


def test_missing_train_extra_is_one_clear_line(tmp_path):
    for args in (["train", "pathology", "--data", str(tmp_path), "--out", str(tmp_path / "o")],
                 ["images", "synth", "mammography", "--out", str(tmp_path / "m"), "--site", "a"]):
        proc = subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "pip install -e '.[train]'" in proc.stderr
        assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()
