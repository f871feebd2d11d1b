"""End to end: realistic training scripts through both front ends, exact codes and lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from training_profiler.linter.api import lint_paths

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lint"

# Each checked by hand against the rule definitions.
EXPECTED_MISTAKES = [
    (8, "AMP103"),  # from torch.cuda.amp import GradScaler, autocast
    (22, "AMP401"),  # masked_fill(~mask, -1e9)
    (23, "AMP304"),  # torch.log(torch.softmax(...))
    (28, "AMP403"),  # x / (x.abs().amax() + 1e-8): a norm would be float32 under autocast, amax is not
    (38, "AMP201"),  # images.half() in a file that uses autocast
    (39, "AMP102"),  # scaler.scale(...).backward() inside autocast
    (40, "AMP503"),  # clip_grad_norm_ without scaler.unscale_
    (50, "AMP101"),  # loss outside autocast on an autocast output
    (50, "AMP301"),  # binary_cross_entropy on sigmoid
    (52, "AMP502"),  # optimizer.step() after a scaled backward
]


def test_training_script_with_mistakes():
    findings = lint_paths([str(FIXTURES / "train_amp_mistakes.py")])
    assert [(f.line, f.code) for f in findings] == EXPECTED_MISTAKES


def test_correct_amp_patterns_are_clean():
    assert lint_paths([str(FIXTURES / "train_correct.py")]) == []


def _flake8(*args: str) -> list[tuple[int, str]]:
    proc = subprocess.run([sys.executable, "-m", "flake8", "-j1", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    out = []
    for line in proc.stdout.splitlines():
        path, lineno, col, rest = line.split(":", 3)
        out.append((int(lineno), rest.split()[0]))
    return out


def test_flake8_reports_the_same_findings():
    assert _flake8("--select", "AMP", str(FIXTURES)) == EXPECTED_MISTAKES


INFO_SOURCE = '''\
import torch

scaler = torch.amp.GradScaler("cuda")


def step(model, x):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return model(x).sum()
'''


def test_flake8_info_rules_are_off_by_default_and_selectable(tmp_path):
    target = tmp_path / "bf16.py"
    target.write_text(INFO_SOURCE)
    assert _flake8(str(target), "--isolated") == []
    assert _flake8("--extend-select", "AMP203", str(target)) == [(3, "AMP203")]
