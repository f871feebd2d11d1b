"""The `amp-lint` pre-commit hook, for real: `pre-commit try-repo` on a temporary git repository.

pre-commit builds the hook's own virtual environment by pip-installing this repository with its
core dependencies only (flake8 and libcst from PyPI, no torch; about 10-30 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

BAD = "import torch\nimport torch.nn.functional as F\n\nloss = F.binary_cross_entropy(torch.sigmoid(z), y)\nscaler = torch.amp.GradScaler()\n"
GOOD = "import torch.nn.functional as F\n\nloss = F.binary_cross_entropy_with_logits(z, y)\n"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_amp_lint_hook_with_pre_commit_try_repo(tmp_path):
    work = tmp_path / "user-project"
    work.mkdir()
    git(work, "init", "-q")
    (work / "train.py").write_text(BAD)
    (work / "ok.py").write_text(GOOD)
    (work / "notes.txt").write_text("F.binary_cross_entropy is not Python\n")
    (work / "unstaged.py").write_text(BAD)
    git(work, "add", "train.py", "ok.py", "notes.txt")
    env = dict(os.environ, PRE_COMMIT_HOME=str(tmp_path / "cache"), PRE_COMMIT_COLOR="never")
    env.pop("VIRTUAL_ENV", None)

    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(REPO), "amp-lint", "--verbose"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "amp-lint" in out and "Failed" in out
    assert "File: train.py" in out and "Line 4: [error] AMP301" in out
    assert "unstaged.py" not in out and "ok.py" not in out  # only staged Python files are linted

    # Fixing the file makes the hook pass.
    (work / "train.py").write_text(GOOD)
    git(work, "add", "train.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(REPO), "amp-lint"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Passed" in proc.stdout
