"""`training-profiler audit`: the command line end to end, in-process."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from training_profiler.cli import main  # noqa: E402

MLP_MACS = 4 * (784 * 1024 + 2 * 1024 * 1024 + 1024 * 10)  # zoo mlp: 784 -> 1024 -> 1024 -> 1024 -> 10, batch 4


def test_json_output_has_the_hand_computed_totals(capsys):
    assert main(["audit", "training_profiler.fx_audit.zoo:mlp", "--input", "4,784", "--no-memory",
                 "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["macs"] == MLP_MACS == 11_640_832
    assert report["totals"]["params"] == 2_913_290
    assert report["inputs"] == [{"shape": [4, 784], "dtype": "float32"}]
    assert [layer["name"] for layer in report["layers"]] == [str(i) for i in range(7)]


def test_table_output_from_a_model_file(tmp_path, capsys):
    model_file = tmp_path / "tiny.py"
    model_file.write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 3))\n"
    )
    assert main(["audit", f"{model_file}:build", "--input", "2,5", "--dtype", "int64", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "Graph: 2 records, captured by symbolic_trace" in out
    assert "Embedding" in out and "Linear" in out and "2x5x3" in out
    assert "Params: 427 (427 trainable, 0 frozen)" in out  # 50*8 + 8*3 + 3
    assert "MACs: 240" in out  # 2*5 tokens x 8 x 3


def test_memory_budget_reports_the_largest_batch(capsys):
    code = main(["audit", "training_profiler.fx_audit.zoo:mlp", "--input", "4,784", "--optimizer", "sgd",
                 "--memory", "64MiB", "--format", "json", "--target", "cpu"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["totals"]["peak_bytes"] <= 64 * 2**20
    assert report["memory"]["optimizer"] == "sgd"
    assert report["totals"]["max_batch_size"] >= 4


@pytest.mark.parametrize("argv, message", [
    (["no_colon_here"], "must look like pkg.module:factory"),
    (["training_profiler.fx_audit.zoo:nothing"], "has no callable 'nothing'"),
    (["training_profiler.fx_audit.zoo:mlp", "--input", "4,abc"], "--input '4,abc' is not a shape"),
    (["training_profiler.fx_audit.zoo:mlp", "--input", "4,100", "--no-memory"],
     "layer '0' (Linear) failed on input shapes [[4, 100]]"),
    (["training_profiler.fx_audit.zoo:mlp", "--input", "4,784", "--memory", "lots"], "cannot read memory size 'lots'"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(["audit", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("training-profiler audit: error: ") and message in err[0]


def test_parser_records_and_table_view_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; import training_profiler.cli as cli, training_profiler.fx_audit.table, "
            "training_profiler.fx_audit.records; cli.build_parser(); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_table_groups_rows_by_module_depth():
    from training_profiler.fx_audit.records import AuditReport, CaptureInfo, LayerRecord
    from training_profiler.fx_audit.table import render_table

    layers = [
        LayerRecord(name=f"blocks.{b}.{leaf}", node=f"n{b}{leaf}", op="Linear", kind="module", module=f"blocks.{b}.{leaf}",
                    params=10, macs=1_000, flops_forward=2_000, flops_backward=4_000, output_shape=[2, 8])
        for b in range(2) for leaf in ("q", "k")
    ]
    totals = {"params": 40, "trainable_params": 40, "frozen_params": 0, "buffers": 0, "macs": 4_000,
              "flops_forward": 8_000, "flops_backward": 16_000, "saved_bytes": 0}
    report = AuditReport(model="Toy", inputs=[], capture=CaptureInfo("symbolic_trace"), layers=layers, totals=totals)
    rows = [line for line in render_table(report, depth=2).splitlines() if line.startswith("│")]
    assert len(rows) == 2  # blocks.0 and blocks.1, each the sum of its two Linear layers
    for block, row in zip(("blocks.0", "blocks.1"), rows):
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[:7] == [block, "2 nodes", "2x8", "20", "2.00 K", "4.00 K", "8.00 K"]
