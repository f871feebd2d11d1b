"""compare_precision on the museum's small transformer, its memory bound, and the precision CLI."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from training_profiler import compare_precision
from training_profiler.cli import main

ROOT = Path(__file__).resolve().parent.parent
MUSEUM = ROOT / "examples" / "failure_museum" / "tensors"
TRANSFORMER = MUSEUM / "unsafe_softmax_transformer.py"


pytestmark = pytest.mark.usefixtures("one_thread")


def load_transformer_module():
    spec = importlib.util.spec_from_file_location("unsafe_softmax_transformer", TRANSFORMER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def museum():
    return load_transformer_module()


@pytest.fixture(scope="module")
def bf16_report(museum):
    return compare_precision(*museum.make_model(), dtype=torch.bfloat16)


def test_unsafe_exp_is_the_first_layer_over_tolerance_in_bf16(bf16_report):
    r = bf16_report
    assert r.dtype == "bfloat16" and r.device_type == "cpu" and r.tolerance == 0.05
    assert r.first_exceeding == "blocks.1.attn.exp"
    names = [e.name for e in r.layers]
    exp_at = names.index("blocks.1.attn.exp")
    assert all(e.rel_error <= 0.05 for e in r.layers[:exp_at])
    assert r.layer("blocks.1.attn.exp").rel_error > 0.1
    assert r.most_amplifying[0] == "blocks.1.attn.exp"
    # execution order: a child finishes before its parent; the whole model comes last
    assert names.index("blocks.0.attn.q") < names.index("blocks.0.attn") < names.index("blocks.0")
    assert names[-1] == "" and r.layers[-1].label == "(model output)"
    assert r.layer("embed").rel_error == 0.0  # an embedding lookup does not round under autocast
    assert r.rounds == 1


def test_safe_variant_stays_within_tolerance(museum):
    r = compare_precision(*museum.make_model(unsafe=False), dtype="bf16")
    assert r.first_exceeding is None
    assert all(e.rel_error < 0.02 for e in r.layers)


def test_fp16_exp_overflows(museum):
    r = compare_precision(*museum.make_model(), dtype="fp16")
    exp = r.layer("blocks.1.attn.exp")
    assert r.first_exceeding == "blocks.1.attn.exp"
    assert exp.rel_error == math.inf and exp.nonfinite > 0
    assert r.output_rel_error == math.inf


def test_layer_error_matches_an_independent_computation(museum, bf16_report):
    model, tokens = museum.make_model()
    captured = {}
    handle = model.blocks[1].attn.q.register_forward_hook(lambda m, i, o: captured.setdefault(torch.is_autocast_enabled("cpu"), o))
    with torch.no_grad():
        model.eval()
        model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(tokens)
    handle.remove()
    ref, low = captured[False].double().flatten().tolist(), captured[True].double().flatten().tolist()
    rel = math.sqrt(sum((a - b) ** 2 for a, b in zip(low, ref)) / sum(b * b for b in ref))
    cos = sum(a * b for a, b in zip(low, ref)) / math.sqrt(sum(a * a for a in low) * sum(b * b for b in ref))
    got = bf16_report.layer("blocks.1.attn.q")
    assert got.rel_error == pytest.approx(rel, rel=1e-9)
    assert got.cosine == pytest.approx(cos, rel=1e-12)
    assert 2**-10 < got.rel_error < 2**-7  # a few bf16 roundings (unit roundoff 2**-9)


def test_memory_budget_streams_in_rounds_with_identical_results(museum, bf16_report):
    model, tokens = museum.make_model()
    small = compare_precision(model, tokens, memory_budget=64 * 1024)
    assert small.rounds > 1
    assert small.peak_stored_bytes <= 64 * 1024 < bf16_report.peak_stored_bytes
    assert [(e.name, e.rel_error, e.cosine, e.input_rel_error) for e in small.layers] == \
        [(e.name, e.rel_error, e.cosine, e.input_rel_error) for e in bf16_report.layers]
    # a budget of 0 still makes progress: one module call per round
    assert compare_precision(model, tokens, memory_budget=0).rounds == len(bf16_report.layers)


def test_reused_module_calls_are_reported_separately_and_mode_is_restored():
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act, nn.Dropout(0.5))
    model.train()
    r = compare_precision(model, torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    assert [e.name for e in r.layers] == ["0", "1", "2", "1 (call 2)", "4", ""]
    assert model.training and all(m.training for m in model.modules())
    assert r.layer("4").rel_error == r.layer("1 (call 2)").rel_error  # dropout is off (eval) while comparing


def test_keyword_inputs():
    class Add(nn.Module):
        def forward(self, a, b):
            return a @ b

    gen = torch.Generator().manual_seed(0)
    r = compare_precision(Add(), {"a": torch.randn(8, 8, generator=gen), "b": torch.randn(8, 8, generator=gen)})
    assert r.layers[0].name == "" and 0 < r.output_rel_error < 0.02


@pytest.mark.parametrize("args, error, words", [
    (("not a model", torch.ones(1)), TypeError, "needs a torch.nn.Module"),
    ((nn.Linear(2, 2), torch.ones(1, 2), torch.float8_e4m3fn), ValueError, "supports float16 and bfloat16"),
    ((nn.Linear(2, 2), torch.ones(1, 2), "int8"), ValueError, "unknown low-precision dtype 'int8'"),
    ((nn.Linear(2, 2), 3.0), TypeError, "inputs must be a tensor"),
    ((nn.Linear(2, 2), torch.ones(1, 3)), RuntimeError, "the model raised RuntimeError in the fp32 run"),
])
def test_bad_input_gets_a_clear_error(args, error, words):
    with pytest.raises(error, match=words):
        compare_precision(*args)


def test_cli_names_the_unsafe_layer_and_exits_1(capsys):
    code = main(["precision", f"{TRANSFORMER}:make_model", "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert code == 1
    assert "first layer over tolerance: blocks.1.attn.exp" in out


def test_cli_json_and_shape_input(capsys):
    code = main(["precision", f"{TRANSFORMER}:make_model", "--input", "3x8:int100", "--dtype", "fp16", "--gradients",
                 "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["dtype"] == "float16" and data["first_exceeding"] == "blocks.1.attn.exp"
    assert data["output_rel_error"] == "inf" and data["gradients"][-1]["name"] == "head"


def test_cli_usage_errors(capsys):
    assert main(["precision", "no_colon_here"]) == 2
    assert "must look like pkg.module:factory" in capsys.readouterr().err
    assert main(["precision", f"{TRANSFORMER}:make_model", "--input", "2xq"]) == 2
    assert "--input '2xq' is not a shape: write comma-separated sizes" in capsys.readouterr().err
    assert main(["precision", f"{TRANSFORMER}:make_model", "--input", "2,16:float"]) == 2
    assert "the part after ':' must be a dtype" in capsys.readouterr().err
    assert main(["precision", f"{TRANSFORMER}:nothing"]) == 2
    assert "has no callable 'nothing'" in capsys.readouterr().err
    assert main(["precision", f"{TRANSFORMER}:make_model", "--input", "2x16"]) == 2  # floats into nn.Embedding
    assert "the model raised RuntimeError in the fp32 run" in capsys.readouterr().err


def test_cli_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import training_profiler.runtime.cli as c, training_profiler.cli as m\n"
            "m.build_parser().parse_args(['precision', 'a.b:c'])\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_demo_prints_the_bbox_analysis(capsys):
    from training_profiler.runtime.cli import print_bbox_demo

    print_bbox_demo(MUSEUM.parent)
    out = capsys.readouterr().out
    assert "analyze_tensor: bbox_pred  shape (1000, 2)" in out
    assert "risk HIGH: dimension 1 is 800x smaller than dimension 0" in out
    assert "first layer over tolerance 0.05: blocks.1.attn.exp" in out


def test_gradients_match_an_independent_backward(museum):
    model, tokens = museum.make_model()
    loss_fn = lambda out: out.float().pow(2).mean()  # noqa: E731
    r = compare_precision(model, tokens, gradients=True, loss_fn=loss_fn)
    assert [e.name for e in r.gradients][-1] == "head" and len(r.gradients) == 18
    model.eval()
    grads = {}
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(tokens))
        found = torch.autograd.grad(loss, [model.head.weight, model.head.bias])
        grads[autocast] = [v for g in found for v in g.double().flatten().tolist()]
    diff2 = sum((a - b) ** 2 for a, b in zip(grads[True], grads[False]))
    ref2 = sum(b * b for b in grads[False])
    assert r.gradients[-1].rel_error == pytest.approx(math.sqrt(diff2 / ref2), rel=1e-9)
    assert all(p.grad is None for p in model.parameters())  # the user's .grad is left alone
    assert "parameter gradients" in str(r)
