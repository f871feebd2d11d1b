"""Exact finding codes on every failure-museum model and on the control set of the engine's zoo."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from training_profiler.findings import Severity  # noqa: E402
from training_profiler.fx_audit.capture import build_model  # noqa: E402
from training_profiler.demo import audit_museum  # noqa: E402
from training_profiler.fx_audit.review import audit_model  # noqa: E402
from training_profiler.fx_audit.zoo import ZOO  # noqa: E402

MUSEUM = Path(__file__).resolve().parent.parent / "examples" / "failure_museum" / "models"


@pytest.fixture(scope="module")
def museum():
    return audit_museum(MUSEUM)


def located(report):
    return [(f.code, f.severity.value, f.location.module, Path(f.location.path).name, f.location.line)
            for f in report.findings]


def test_every_museum_model_is_caught_by_exactly_its_rules(museum):
    assert {name: [f.code for f in r.findings] for name, r in museum.items()} == {
        "bias_before_bn": ["FXA107", "FXA107"],
        "conv_into_huge_linear": ["FXA101"],
        "deep_no_norm": ["FXA104"],
        "large_kernel_stem": ["FXA102"],
        "plain_mlp_100": ["FXA103", "FXA104"],
        "quadratic_attention": ["FXA106"],
    }


def test_museum_findings_point_at_the_source_line(museum):
    # nn.Sequential models: the factory's def line; custom classes: the `self.attr = ...` line
    assert located(museum["plain_mlp_100"]) == [
        ("FXA103", "error", "0", "plain_mlp_100.py", 13), ("FXA104", "warning", "0", "plain_mlp_100.py", 13)]
    assert located(museum["conv_into_huge_linear"]) == [
        ("FXA101", "error", "classifier", "conv_into_huge_linear.py", 19)]  # self.classifier = ...
    assert located(museum["bias_before_bn"]) == [
        ("FXA107", "warning", "0", "bias_before_bn.py", 12), ("FXA107", "warning", "3", "bias_before_bn.py", 12)]
    assert located(museum["quadratic_attention"]) == [  # the peak is in the root module: its class line
        ("FXA106", "warning", None, "quadratic_attention.py", 16)]


def test_museum_findings_carry_the_numbers(museum):
    (huge,) = museum["conv_into_huge_linear"].findings
    assert huge.data == {"params": 268_436_480, "share": 1.0, "threshold": 1_000_000,
                         "producer": "features.2", "spatial": [64, 64], "channels": 64}
    deep, unnormalized = museum["plain_mlp_100"].findings
    assert deep.data == {"depth": 101, "limit": 20, "start": "0", "end": "200"}
    assert unnormalized.data == {"length": 101, "limit": 8, "start": "0", "end": "200"}
    (stem,) = museum["large_kernel_stem"].findings
    assert stem.data == {"kernel_size": [11, 11], "params": 23_232, "limit": 7}
    assert [f.data for f in museum["bias_before_bn"].findings] == [
        {"bias_params": 32, "norm": "1"}, {"bias_params": 64, "norm": "4"}]
    (attention,) = museum["quadratic_attention"].findings
    assert attention.severity is Severity.WARNING
    assert attention.data["top_tensor_bytes"] == 4 * 4096 * 4096 * 4  # one (1, 4, 4096, 4096) fp32 score tensor
    assert "attention scores grow with seq^2" in attention.message
    assert museum["plain_mlp_100"].capture.notes[-1].startswith("FXA105 (initialisation) not checked")


@pytest.mark.parametrize("name", ["resnet50", "vit_b16", "gpt2_small", "llama"])
def test_control_set_has_no_error_findings(name):
    entry = ZOO[name]
    model = build_model(entry.factory)
    with torch.device("meta"):
        inputs = entry.make_inputs(1)
    # without the memory simulation (the slow part): FXA106 can only be an error against a budget
    report = audit_model(model, inputs, name=name, memory=False)
    assert [f for f in report.findings if f.severity is Severity.ERROR] == []
    assert [f.code for f in report.findings] == []


def test_vgg16_classifier_is_a_true_positive():
    entry = ZOO["vgg16"]
    model = build_model(entry.factory)
    report = audit_model(model, [(1, 3, 224, 224)], name="vgg16", memory=False)
    assert [f.code for f in report.findings] == ["FXA101", "FXA104"]
    fc = report.findings[0]
    assert fc.location.module == "classifier.0"
    assert fc.data["params"] == 102_764_544 and fc.data["producer"] == "avgpool" and fc.data["spatial"] == [7, 7]
