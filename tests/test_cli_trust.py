"""What a new user meets at the install and the command line: extras that install what the code
imports, one --input syntax, one line for an error in the user's code, one severity vocabulary,
exit codes that mean something, and model files that shadow nothing."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from training_profiler.cli import EXIT_CODES, main
from training_profiler.findings import Severity
from training_profiler.inputs import InputSpec, UsageError, load_factory, parse_input_spec

ROOT = Path(__file__).resolve().parent.parent
MUSEUM = ROOT / "examples" / "failure_museum"
STDLIB = set(sys.stdlib_module_names)


def _top_level_imports(path: Path) -> set[str]:
    """Third-party packages a module imports when it is imported (module level, not in functions)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names - STDLIB - {"training_profiler", "__future__"}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_the_audit_extra_installs_what_the_auditor_and_the_monitor_import():
    """README: `pip install "training-profiler[audit]"` is the auditor and the monitor."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    package = ROOT / "training_profiler"
    monitor = set().union(*(_top_level_imports(p) for p in (package / "runtime").glob("*.py")))
    auditor = set().union(*(_top_level_imports(p) for p in (package / "fx_audit").glob("*.py"))) | {"rich"}
    assert "numpy" in monitor and "torch" in auditor  # the walk sees what watch_training needs
    assert monitor | auditor <= _requirement_names(extras["audit"])
    assert monitor <= _requirement_names(extras["runtime"])
    readme = (ROOT / "README.md").read_text()
    assert 'pip install "training-profiler[audit]"   # + torch, numpy and rich: the auditor, the monitor' in readme


@pytest.mark.parametrize("token, spec", [
    ("8,3,224,224", InputSpec((8, 3, 224, 224), "float32")),
    ("8x1024:int64", InputSpec((8, 1024), "int64")),
    ("8,1024:int1000", InputSpec((8, 1024), "int64", high=1000)),
    ("2,16:bf16", InputSpec((2, 16), "bfloat16")),
    ("4,8:int8", InputSpec((4, 8), "int8")),  # a dtype name wins over intN
])
def test_one_input_token_syntax(token, spec):
    assert parse_input_spec(token) == spec


def test_input_token_errors_say_what_to_write():
    with pytest.raises(UsageError, match=r"--input '8,1024:long': the part after ':' must be a dtype \(float32, "):
        parse_input_spec("8,1024:long")
    with pytest.raises(ValueError, match=r"--input '8,q' is not a shape"):  # a UsageError is a ValueError
        parse_input_spec("8,q")
    assert parse_input_spec("2,5", default_dtype="int64") == InputSpec((2, 5), "int64")


EMBED = textwrap.dedent("""\
    from torch import nn


    def tokens():
        return nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 3))


    def broken():
        return 1 / 0
    """)


@pytest.fixture()
def models(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    (tmp_path / "tok_models.py").write_text(EMBED)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_subcommand_reads_token_ids_from_one_token(models, capsys):
    assert main(["audit", "tok_models:tokens", "--input", "2,5:int64", "--no-memory", "--format", "json"]) == 0
    assert '"dtype": "int64"' in capsys.readouterr().out
    assert main(["compare", "tok_models:tokens", "--input", "2,5:int1000", "--format", "markdown"]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| tok_models:tokens | 427 | ")  # 50*8 + 8*3 + 3
    (models / "pyproject.toml").write_text(textwrap.dedent("""\
        [tool.training-profiler.audit.models.tok]
        factory = "tok_models:tokens"
        inputs = ["2,5:int64"]
        real-weights = true
        max-params = 1000
        """))
    assert main(["audit", "--config", "pyproject.toml"]) == 0
    assert "tok (tok_models:tokens): 427 params" in capsys.readouterr().out


def test_deprecated_dtype_still_works_with_a_warning(models, capsys):
    assert main(["audit", "tok_models:tokens", "--input", "2,5", "--dtype", "int64", "--no-memory"]) == 0
    assert "--dtype is deprecated: write the dtype into the input, e.g. --input 8,1024:int64" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["audit", "tok_models:broken", "--input", "2,5"],
                                     ["compare", "tok_models:broken", "--input", "2,5"],
                                     ["precision", "tok_models:broken"]])
def test_an_error_in_the_users_factory_is_one_line_and_exit_3(models, capsys, command):
    assert main(command) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"training-profiler {command[0]}: error in your code: the model factory tok_models:broken raised "
                   "ZeroDivisionError: division by zero (--debug prints the traceback)"]
    assert main(["--debug", *command]) == 3
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "return 1 / 0" in err
    assert main([*command, "--debug"]) == 3
    assert "return 1 / 0" in capsys.readouterr().err


def test_a_model_file_that_raises_on_import_is_exit_3(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("import torch\nraise RuntimeError('no GPU here')\n")
    assert main(["audit", f"{tmp_path / 'bad.py'}:build", "--input", "2,5"]) == 3
    assert capsys.readouterr().err.strip() == (
        f"training-profiler audit: error in your code: importing {tmp_path / 'bad.py'} (for {tmp_path / 'bad.py'}:build) "
        "raised RuntimeError: no GPU here (--debug prints the traceback)")


def test_exit_codes_are_documented():
    readme = (ROOT / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} | " in readme
    assert "| 3 | your own code raised" in readme and "| 2 | usage error" in readme


def test_commands_without_torch_print_one_line():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from training_profiler.cli import main\n"
            "sys.exit(main(['precision', 'a.b:c']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "training-profiler precision: error: precision needs torch: pip install 'training-profiler[audit]'"


def test_fail_level_accepts_the_old_words_as_aliases(tmp_path, capsys):
    assert [Severity.parse(w) for w in ("high", "MEDIUM", "low", "error")] == [
        Severity.ERROR, Severity.WARNING, Severity.INFO, Severity.ERROR]
    bad = tmp_path / "train.py"
    # under autocast, so AMP301 is an error (in an fp32-only file it is readiness advice)
    bad.write_text("import torch\nimport torch.nn.functional as F\n\nwith torch.autocast('cuda'):\n"
                   "    loss = F.binary_cross_entropy(p, y)\n")
    assert main(["lint", str(bad), "--fail-level", "high"]) == 1
    out = capsys.readouterr().out
    assert "Line 5: [error] AMP301 " in out and out.endswith("1 finding (1 error)\n")


def test_audit_fails_at_the_fail_level(capsys):
    pytest.importorskip("torch")
    stem = f"{MUSEUM / 'models' / 'large_kernel_stem.py'}:build"  # FXA102, a warning
    flat = f"{MUSEUM / 'models' / 'conv_into_huge_linear.py'}:build"  # FXA101, an error
    assert main(["audit", stem, "--input", "2,3,64,64", "--no-memory"]) == 0  # default: error
    assert "[warning] FXA102 " in capsys.readouterr().out
    assert main(["audit", stem, "--input", "2,3,64,64", "--no-memory", "--fail-level", "warning"]) == 1
    assert main(["audit", stem, "--input", "2,3,64,64", "--no-memory", "--fail-level", "medium"]) == 1
    capsys.readouterr()
    from training_profiler.demo import museum_models

    shape = dict((name, shapes) for name, _, shapes, _ in museum_models(MUSEUM / "models"))["conv_into_huge_linear"][0]
    assert main(["audit", flat, "--input", ",".join(map(str, shape)), "--no-memory", "--format", "json"]) == 1


def test_model_files_load_under_their_own_name_and_leave_sys_path_alone(tmp_path):
    import copy

    (tmp_path / "copy.py").write_text("def build():\n    return 'built from copy.py'\n")
    (tmp_path / "helper.py").write_text("VALUE = 7\n")
    (tmp_path / "uses_helper.py").write_text("from helper import VALUE\n\ndef build():\n    return VALUE\n")
    path_before = list(sys.path)
    assert load_factory(f"{tmp_path / 'copy.py'}:build")() == "built from copy.py"
    assert load_factory(f"{tmp_path / 'uses_helper.py'}:build")() == 7  # siblings import while it loads
    assert sys.modules["copy"] is copy and sys.path == path_before
    assert load_factory("copy.py:build", base_dir=tmp_path)() == "built from copy.py"  # relative to base_dir
    assert sys.path == path_before


def test_demo_exit_code_counts_the_examples_it_missed(monkeypatch, capsys):
    import argparse

    pytest.importorskip("torch")
    from training_profiler import demo
    from training_profiler.runtime import monitor

    monkeypatch.setattr(monitor, "run_museum_demo", lambda museum: 2)  # two runs without their alert
    monkeypatch.setattr(demo, "SECTIONS", (("lint", demo._lint), ("monitor", demo._monitor)))
    assert demo.run_demo(argparse.Namespace(museum=str(MUSEUM))) == 1
    assert capsys.readouterr().err.strip() == (
        "training-profiler demo: 2 museum example(s) not caught by the tool they exist to show")
    monkeypatch.setattr(demo, "SECTIONS", (("lint", demo._lint),))
    assert demo.run_demo(argparse.Namespace(museum=str(MUSEUM))) == 0
