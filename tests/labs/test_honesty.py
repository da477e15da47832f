"""The kit's promise, for every lab (issue 13, item 5): the student tree `lab new N` writes scores 0
on lab N's graded tests (and on its hidden ones), so the grader can fail; the reference tree gets
full marks (tests/labs/test_grade.py grades it, twice, for identical results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from exo.labs import catalog


@pytest.mark.slow
@pytest.mark.parametrize("lab", [lab.n for lab in catalog.LABS])
def test_the_student_tree_of_each_lab_scores_zero_on_that_lab(lab, tmp_path):
    assert any((ROOT / catalog.BY_N[lab].tests).glob("test_*.py")), f"lab {lab} has no graded tests"
    tree = tmp_path / f"lab{lab}"
    env = {**os.environ, "EXO_CACHE_DIR": str(tmp_path / "cache")}
    made = subprocess.run([sys.executable, "-m", "exo", "lab", "new", str(lab), str(tree)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    args = [sys.executable, "-m", "exo", "grade", str(lab), "--json", str(tmp_path / "r.json")]
    hidden = ROOT / "exo" / "labs" / "hidden" / f"lab{lab}"
    if hidden.is_dir():
        args += ["--hidden", str(hidden)]
    graded = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, timeout=1200)
    assert graded.returncode == 1, graded.stdout + graded.stderr  # points lost, nothing broken
    result = json.loads((tmp_path / "r.json").read_text())
    earned = {t["name"]: t["score"] for t in result["tests"] if t["score"]}
    assert result["score"] == 0 and not earned, earned
    assert sum(t["max_score"] for t in result["tests"]) >= 100
