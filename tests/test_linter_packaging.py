"""The linter runs without torch, through flake8's real entry point, and never crashes a run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SAMPLE = textwrap.dedent(
    """\
    import torch
    import torch.nn.functional as F


    def loss_fn(logits, target):
        return F.binary_cross_entropy(torch.sigmoid(logits), target)


    scaler = torch.amp.GradScaler("cuda")
    """
)

BLOCK_TORCH_AND_RUN_FLAKE8 = textwrap.dedent(
    """\
    import sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import training_profiler, training_profiler.linter, training_profiler.cli
    from flake8.main.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_flake8_plugin_runs_without_torch(tmp_path):
    target = tmp_path / "model.py"
    target.write_text(SAMPLE)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH_AND_RUN_FLAKE8, "--select", "AMP", str(target)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        f"{target}:6:12: AMP301 [error] binary_cross_entropy is unsafe in fp16 and raises under CUDA autocast "
        "(this file uses torch.amp.GradScaler on line 9): use binary_cross_entropy_with_logits / BCEWithLogitsLoss on the logits"
    ]


def test_flake8_tiers_amp301_by_the_file_and_the_amp_option(tmp_path):
    """An fp32 script gets readiness advice (info, off by default); --amp (the package trains
    with AMP) makes the same line an error."""
    target = tmp_path / "dcgan.py"
    target.write_text("import torch.nn as nn\n\ncriterion = nn.BCELoss()\n")

    def flake8(*args):
        proc = subprocess.run([sys.executable, "-m", "flake8", "-j1", *args, str(target)], capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 1), proc.stderr
        return [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if ": AMP" in line]

    assert flake8() == []
    assert flake8("--extend-select", "AMP306") == [
        "AMP306 [info] AMP readiness: nn.BCELoss is fine in fp32 but raises under CUDA autocast and is unsafe in fp16: "
        "before enabling mixed precision, use binary_cross_entropy_with_logits / BCEWithLogitsLoss on the logits"
    ]
    def error(shown):
        return [
            "AMP301 [error] nn.BCELoss is unsafe in fp16 and raises under CUDA autocast (the package is configured with "
            f"amp = {shown}): use binary_cross_entropy_with_logits / BCEWithLogitsLoss on the logits"
        ]

    assert flake8("--amp", "bf16") == error('"bf16"')
    (tmp_path / "setup.cfg").write_text("[flake8]\namp = true\n")  # the package's flake8 config
    assert flake8("--config", str(tmp_path / "setup.cfg")) == error("true")
    (tmp_path / "setup.cfg").write_text("[flake8]\namp = fp8\n")
    proc = subprocess.run([sys.executable, "-m", "flake8", "--config", str(tmp_path / "setup.cfg"), str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "flake8 --amp: amp = 'fp8' is not a precision: use true, false, \"fp16\" or \"bf16\""


def test_package_import_does_not_import_torch():
    code = "import sys, training_profiler, training_profiler.linter.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_core_dependencies_are_flake8_and_libcst_only():
    from importlib.metadata import requires

    core = [r for r in requires("training-profiler") if "extra ==" not in r]
    names = sorted(r.split(";")[0].split(">")[0].split("=")[0].strip() for r in core)
    assert names == ["flake8", "libcst", "tomli"]  # tomli only on Python < 3.11
    assert any(r.startswith("tomli") and "python_version < " in r for r in core)


def test_linting_does_not_import_libcst():
    """libcst costs ~0.25 s to import: only --fix may pay that, never a flake8 run or an editor save."""
    code = (
        "import sys\n"
        "from training_profiler.linter.api import lint_source\n"
        "from training_profiler.linter.rules import all_detectors\n"
        "all_detectors(); lint_source('import torch.nn.functional as F\\nF.binary_cross_entropy(p, y)\\n')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('libcst', 'torch')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


RAISING_RULE_UNDER_FLAKE8 = textwrap.dedent(
    """\
    import sys
    from training_profiler.linter.rules import all_detectors
    from training_profiler.linter.rules.ops import BinaryCrossEntropy

    def boom(self, node, ctx):
        if ctx.path.endswith("crash.py"):
            raise KeyError("simulated rule bug")
        return original(self, node, ctx)

    original = BinaryCrossEntropy.visit_Call
    BinaryCrossEntropy.visit_Call = boom
    from flake8.main.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_crashing_rule_yields_amp000_and_flake8_goes_on(tmp_path):
    (tmp_path / "a_crash.py").write_text(SAMPLE)
    (tmp_path / "b_model.py").write_text(SAMPLE)
    proc = subprocess.run(
        [sys.executable, "-c", RAISING_RULE_UNDER_FLAKE8, "-j1", "--select", "AMP", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert [line.split(": ")[1].split()[0] for line in lines] == ["AMP000", "AMP301"]
    assert lines[0].startswith(f"{tmp_path / 'a_crash.py'}:1:1: AMP000 [error] could not analyse this file: internal error in AMP301/AMP306: KeyError")
    assert lines[1].startswith(f"{tmp_path / 'b_model.py'}:6:12: AMP301")
