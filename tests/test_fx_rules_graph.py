"""The graph algorithms of the architecture rules on hand-built record lists (no torch, no engine)."""

from __future__ import annotations

import pytest

from training_profiler.findings import Severity
from training_profiler.fx_audit.records import AuditReport, CaptureInfo, LayerRecord, MemoryReport, TensorInfo
from training_profiler.fx_audit.memory import parse_bytes
from training_profiler.fx_audit.rules import AuditConfig, all_rules, check_report


def rec(node, op, inputs=(), params=0, kind="module", shape=(4, 8), name=None, **extra):
    return LayerRecord(name=name or node, node=node, op=op, kind=kind, inputs=list(inputs), params=params,
                       output_shape=list(shape) if shape is not None else None, output_dtype="float32",
                       extra=extra)


def report(layers, **totals):
    return AuditReport(model="hand", inputs=[], capture=CaptureInfo(path="symbolic_trace"), layers=layers,
                       totals={"params": sum(r.params for r in layers), **totals})


def plain_mlp(n, norm_every=0):
    layers, prev = [], "x"
    for i in range(n):
        layers.append(rec(f"fc{i}", "Linear", [prev], params=72))
        prev = f"fc{i}"
        if norm_every and (i + 1) % norm_every == 0:
            layers.append(rec(f"ln{i}", "LayerNorm", [prev], params=16))
            prev = f"ln{i}"
        layers.append(rec(f"act{i}", "ReLU", [prev]))
        prev = f"act{i}"
    return layers


def residual_stack(n):
    """x -> [fc_i -> relu -> add(x, .)] * n: every fc is one layer from the stream."""
    layers, stream = [], "x"
    for i in range(n):
        layers += [rec(f"fc{i}", "Linear", [stream], params=72), rec(f"act{i}", "relu", [f"fc{i}"], kind="function"),
                   rec(f"add{i}", "add", [stream, f"act{i}"], kind="function")]
        stream = f"add{i}"
    layers.append(rec("head", "Linear", [stream], params=72))
    return layers


def codes(findings):
    return sorted(f.code for f in findings)


def test_plain_mlp_of_21_layers_is_too_deep_and_unnormalized():
    findings = check_report(report(plain_mlp(21)))
    assert codes(findings) == ["FXA103", "FXA104"]
    deep = next(f for f in findings if f.code == "FXA103")
    assert deep.severity is Severity.ERROR
    assert deep.data == {"depth": 21, "limit": 20, "start": "fc0", "end": "fc20"}
    assert deep.message.startswith("gradients must cross 21 weight layers with no residual path, from 'fc0' to 'fc20'")
    norm = next(f for f in findings if f.code == "FXA104")
    assert norm.data == {"length": 21, "limit": 8, "start": "fc0", "end": "fc20"}


def test_depth_limit_is_inclusive_and_configurable():
    assert codes(check_report(report(plain_mlp(20, norm_every=1)))) == []
    assert codes(check_report(report(plain_mlp(20, norm_every=1)), config=AuditConfig(max_plain_depth=19))) == ["FXA103"]


def test_residual_adds_give_short_gradient_paths():
    # 30 residual blocks without norm: depth is 2 (one fc + head) but the unnormalized chain is 31 long
    findings = check_report(report(residual_stack(30)))
    assert codes(findings) == ["FXA104"]
    assert findings[0].data["length"] == 31


def test_norm_resets_the_unnormalized_chain():
    assert codes(check_report(report(plain_mlp(16, norm_every=7)))) == []
    findings = check_report(report(plain_mlp(16, norm_every=8)))
    assert codes(findings) == ["FXA104"] and findings[0].data["length"] == 8
    assert findings[0].data["start"] == "fc0" and findings[0].data["end"] == "fc7"


def test_concatenation_shortcut_like_densenet():
    # each layer sees cat(all previous): the first layer reaches the output through one concatenation
    layers, feats = [], ["x"]
    for i in range(25):
        layers.append(rec(f"cat{i}", "cat", list(feats), kind="function"))
        layers.append(rec(f"conv{i}", "Conv2d", [f"cat{i}"], params=100, shape=(1, 8, 4, 4)))
        layers.append(rec(f"bn{i}", "BatchNorm2d", [f"conv{i}"], params=16, shape=(1, 8, 4, 4)))
        feats.append(f"bn{i}")
    layers.append(rec("final", "cat", list(feats), kind="function"))
    assert codes(check_report(report(layers))) == []


def test_integer_and_size_edges_do_not_shorten_paths():
    layers = plain_mlp(21)
    # a size() of the input consumed by the last reshape must not count as a shortcut
    layers.insert(0, rec("size", "size", ["x"], kind="method", shape=None))
    layers.append(rec("view", "view", ["act20", "size"], kind="method"))
    assert "FXA103" in codes(check_report(report(layers)))


def test_flatten_of_conv_map_into_big_linear_is_an_error_naming_the_producer():
    layers = [
        rec("conv", "Conv2d", ["x"], params=1792, shape=(2, 64, 32, 32)),
        rec("flat", "flatten", ["conv"], kind="function", shape=(2, 65536)),
        rec("drop", "Dropout", ["flat"], shape=(2, 65536)),
        rec("fc", "Linear", ["drop"], params=65536 * 100 + 100, shape=(2, 100)),
    ]
    found = check_report(report(layers))
    assert codes(found) == ["FXA101"]
    f = found[0]
    assert f.severity is Severity.ERROR
    assert f.data["producer"] == "conv" and f.data["spatial"] == [32, 32] and f.data["channels"] == 64
    assert "fed by a flatten of 'conv' (64 channels x 32x32)" in f.message
    assert f.location.module == "fc"


def test_linear_share_threshold():
    big = rec("fc", "Linear", ["x"], params=2_000_000)
    assert [f.data["share"] for f in check_report(report([big]))] == [1.0]
    # 2M / 8M = 25% each is fine; the 4M one holds 50% of the model
    found = check_report(report([big, rec("other", "Linear", ["fc"], params=2_000_000),
                                 rec("rest", "Linear", ["other"], params=4_000_000)]))
    assert [(f.location.module, f.severity, f.data["share"]) for f in found] == [("rest", Severity.ERROR, 0.5)]
    assert check_report(report([big, rec("rest", "Linear", ["fc"], params=4_000_000)]),
                        config=AuditConfig(linear_max_share=0.7)) == []
    # global pooling (1x1) before flatten is fine
    pooled = [rec("pool", "AdaptiveAvgPool2d", ["x"], shape=(1, 2048, 1, 1)),
              rec("flat", "flatten", ["pool"], kind="function", shape=(1, 2048)),
              rec("fc", "Linear", ["flat"], params=2_049_000)]
    assert codes(check_report(report(pooled, params=25_557_032))) == []
    # a Linear over the last dim of a (batch, seq, dim) tensor is not fed by a flatten
    tokens = [rec("norm", "LayerNorm", ["x"], shape=(1, 512, 768), params=1536),
              rec("up", "Linear", ["norm"], params=1_572_864, shape=(1, 512, 2048), in_features=768)]
    assert codes(check_report(report(tokens, params=100_000_000))) == []


def test_unused_tuple_element_is_not_an_output():
    # lstm -> getitem(0) -> head is the output; getitem(1) (the unused state) is a dead end
    layers = [rec("lstm", "LSTM", ["x"], params=100)]
    prev = "lstm"
    layers.append(rec("state", "getitem", ["lstm"], kind="function"))
    for i in range(21):
        layers.append(rec(f"fc{i}", "Linear", [prev], params=10))
        layers.append(rec(f"ln{i}", "LayerNorm", [f"fc{i}"], params=2))
        prev = f"ln{i}"
    found = check_report(report(layers))
    assert [(f.code, f.data["depth"], f.data["start"]) for f in found] == [("FXA103", 22, "lstm")]


def test_large_kernel_with_exemptions():
    layers = [rec("stem", "Conv2d", ["x"], params=23_296, kernel_size=[11, 11], groups=1, in_channels=3, stride=[4, 4]),
              rec("patch", "Conv2d", ["stem"], params=10, kernel_size=[16, 16], groups=1, in_channels=64, stride=[16, 16]),
              rec("dw", "Conv2d", ["patch"], params=10, kernel_size=[9, 9], groups=64, in_channels=64, stride=[1, 1])]
    found = check_report(report(layers))
    assert codes(found) == ["FXA102"]
    assert found[0].message == "Conv 'stem' uses a 11x11 kernel (23,296 params): stack 3x3 convs or use a depthwise conv"


def test_bias_before_batchnorm():
    layers = [rec("conv", "Conv2d", ["x"], params=448, shape=(2, 16, 8, 8), bias=True),
              rec("bn", "BatchNorm2d", ["conv"], params=32, shape=(2, 16, 8, 8)),
              rec("conv2", "Conv2d", ["bn"], params=2304, shape=(2, 16, 8, 8), bias=False),
              rec("bn2", "BatchNorm2d", ["conv2"], params=32, shape=(2, 16, 8, 8))]
    found = check_report(report(layers))
    assert codes(found) == ["FXA107"]
    assert found[0].data == {"bias_params": 16, "norm": "bn"}


@pytest.mark.parametrize("act,loss,severity", [
    ("softmax", "cross_entropy", Severity.ERROR),
    ("Softmax", "CrossEntropyLoss", Severity.ERROR),
    ("softmax", "nll_loss", Severity.ERROR),
    ("log_softmax", "cross_entropy", Severity.WARNING),
    ("aten._softmax.default", "aten.nll_loss_forward.default", Severity.ERROR),
])
def test_double_softmax(act, loss, severity):
    layers = [rec("fc", "Linear", ["x"], params=85), rec("sm", act, ["fc"], kind="function"),
              rec("loss", loss, ["sm", "target"], kind="function", shape=())]
    found = check_report(report(layers))
    assert [(f.code, f.severity) for f in found] == [("FXA109", severity)]


def test_log_softmax_into_nll_is_correct():
    layers = [rec("fc", "Linear", ["x"], params=85), rec("lsm", "log_softmax", ["fc"], kind="function"),
              rec("loss", "nll_loss", ["lsm", "target"], kind="function", shape=())]
    assert check_report(report(layers)) == []


def memory_report(peak, tensors):
    return MemoryReport(peak_bytes=peak, peak_phase="backward", peak_module="attn", breakdown={}, top_tensors=tensors)


def test_memory_budget_and_dominant_tensor():
    scores = TensorInfo("activation saved by attn", [1, 8, 4096, 4096], "float32", 536_870_912, "activations", "attn")
    small = TensorInfo("grad of fc.weight", [64, 64], "float32", 16_384, "grads", "fc")
    base = report([rec("attn", "matmul", ["x"], kind="function")], peak_bytes=1_000_000_000, peak_phase="backward")
    base.memory = memory_report(1_000_000_000, [small, scores])
    found = check_report(base)
    assert [(f.code, f.severity) for f in found] == [("FXA106", Severity.WARNING)]
    assert found[0].data["share"] == 0.5369
    assert "seq^2" in found[0].message and "one tensor holds 54% of the memory" in found[0].message
    over = check_report(base, config=AuditConfig(memory_budget=parse_bytes("512MiB")))
    assert [(f.code, f.severity) for f in over] == [("FXA106", Severity.ERROR)]
    assert over[0].data["budget_bytes"] == 536_870_912
    assert check_report(base, config=AuditConfig(memory_budget=2 * 10**9, dominant_tensor_share=0.6)) == []


def test_config_from_mapping_and_errors():
    cfg = AuditConfig.from_mapping({"max-plain-depth": 30, "memory_budget": "1GiB", "models": {"x": {}}})
    assert cfg.max_plain_depth == 30 and cfg.memory_budget == 2**30
    with pytest.raises(ValueError, match="unknown audit setting 'max-depth'"):
        AuditConfig.from_mapping({"max-depth": 3})
    with pytest.raises(TypeError, match="must be a number"):
        AuditConfig.from_mapping({"max-kernel": "7"})
    with pytest.raises(ValueError, match="cannot read memory size '24 gigs'"):
        parse_bytes("24 gigs")
    with pytest.raises(TypeError, match="config must be an AuditConfig"):
        check_report(report([]), config={"max_kernel": 3})


def test_rule_metadata_is_complete():
    rules = all_rules()
    assert [r.code for r in rules] == [f"FXA10{i}" for i in range(1, 10)]
    for r in rules:
        assert r.message and r.why and r.fix and r.references and r.bad and r.good, r.code


def test_each_rule_keeps_metadata_examples_and_checker_in_one_module():
    """`grep FXA103` lands on one module holding the rule's metadata, its examples and its checker."""
    import inspect
    import sys

    from training_profiler.fx_audit.rules import audit_rules

    for audit_rule in audit_rules():
        module = sys.modules[audit_rule.check.__module__]
        assert getattr(module, audit_rule.code) is audit_rule.rule, audit_rule.code
        source = inspect.getsource(module)
        assert source.count(f'code="{audit_rule.code}"') == 1 and f"@register({audit_rule.code})" in source
        assert audit_rule.rule.bad and audit_rule.rule.good


def _boom(ctx):
    yield from ()
    raise KeyError("fc7")


def test_a_rule_that_raises_is_isolated_and_noted_in_the_report(monkeypatch):
    from training_profiler.fx_audit.rules import base

    monkeypatch.setitem(base.REGISTRY, "FXA104", base.AuditRule(base.REGISTRY["FXA104"].rule, _boom))
    r = report(plain_mlp(21))
    findings = check_report(r)
    assert codes(findings) == ["FXA103"]  # FXA104 crashed, FXA103 and the others still ran
    assert r.rule_errors == [{"code": "FXA104", "error": "KeyError: 'fc7'"}]
    assert AuditReport.from_dict(r.to_dict()).rule_errors == r.rule_errors
    monkeypatch.undo()
    assert codes(check_report(r)) == ["FXA103", "FXA104"] and r.rule_errors == []  # a rerun starts clean


def test_totals_are_typed_and_read_the_peak_from_the_memory_report():
    from training_profiler.fx_audit.records import AuditTotals

    r = report([rec("fc", "Linear", ["x"], params=72)], macs=1_000, peak_bytes=123, peak_phase="forward")
    assert isinstance(r.totals, AuditTotals) and r.totals.params == 72 and r.totals["macs"] == 1_000
    assert r.totals["peak_bytes"] is None and r.totals.get("peak_phase") is None  # no simulation: no peak
    r.memory = memory_report(4096, [])
    assert (r.totals.peak_bytes, r.totals["peak_bytes"], r.totals.get("peak_phase")) == (4096, 4096, "backward")
    assert "max_batch_size" not in r.totals and r.totals.get("max_batch_size", "-") == "-"
    r.totals.max_batch_size = 8
    assert r.totals["max_batch_size"] == 8
    assert list(r.to_dict()["totals"]) == [
        "params", "trainable_params", "frozen_params", "buffers", "unused_params", "macs", "flops_forward",
        "flops_backward", "saved_bytes", "peak_bytes", "peak_phase", "uncounted_op_calls", "op_calls",
        "max_batch_size"]
    again = AuditReport.from_dict(r.to_dict())
    assert again.totals == r.totals and again.totals["peak_bytes"] == 4096
    with pytest.raises(KeyError):
        r.totals["peak"]


def test_over_budget_on_model_state_alone_suggests_sharding_not_checkpointing():
    grad = TensorInfo("grad of fc.weight", [25_000, 4096], "float32", 409_600_000, "grads", "fc")
    base = report([rec("fc", "Linear", ["x"], params=102_400_000)])
    base.memory = MemoryReport(peak_bytes=1_700_000_000, peak_phase="optimizer", peak_module=None, top_tensors=[grad],
                               breakdown={"params": 409_600_000, "grads": 409_600_000, "optimizer_state": 819_200_000,
                                          "activations": 61_600_000})
    def fxa106(budget):
        return [f for f in check_report(base, config=AuditConfig(memory_budget=budget)) if f.code == "FXA106"]

    (over,) = fxa106(2**30)
    assert over.code == "FXA106" and over.data["model_state_bytes"] == 1_638_400_000
    assert over.message.endswith(
        ": parameters, gradients and optimizer state alone take 1.53 GiB, over the budget: shard the optimizer "
        "state or the parameters (ZeRO, FSDP), use an 8-bit or factored optimizer (AdamW8bit, Adafactor) "
        "or a smaller model")
    assert "checkpointing" not in over.message
    (fits,) = fxa106(1_650_000_000)  # the state fits, the peak does not
    assert fits.message.endswith(": use activation checkpointing, a smaller batch or bf16 autocast")
    assert "model_state_bytes" not in fits.data
