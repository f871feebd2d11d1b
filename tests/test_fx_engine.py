"""fx_audit engine: hand-computed params / MACs / shapes, capture cascade, invariance, errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from training_profiler.fx_audit import audit, build_model  # noqa: E402
from training_profiler.fx_audit.zoo import ZOO  # noqa: E402


def meta(*shape, dtype=None):
    return torch.empty(*shape, device="meta", dtype=dtype)


def only(report, kind="module"):
    layers = [layer for layer in report.layers if layer.kind == kind]
    assert len(layers) == 1, [(layer.name, layer.kind) for layer in report.layers]
    return layers[0]


def test_conv_stem_hand_check():
    model = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False))
    report = audit(model, meta(1, 3, 224, 224), memory=False)
    conv = only(report)
    # 64 out channels x 112 x 112 outputs x (3 x 7 x 7) MACs each
    assert conv.macs == 64 * 112 * 112 * 3 * 7 * 7 == 118_013_952
    assert conv.params == 64 * 3 * 7 * 7 == 9_408
    assert conv.flops_forward == 2 * 118_013_952
    # backward: only the weight gradient (the input does not require grad), same size as forward
    assert conv.flops_backward == 2 * 118_013_952
    assert conv.output_shape == [1, 64, 112, 112]
    assert conv.output_dtype == "float32"
    assert conv.output_bytes == 64 * 112 * 112 * 4
    assert conv.saved_bytes == 3 * 224 * 224 * 4  # the input, for the weight gradient
    assert report.capture.path == "symbolic_trace"
    assert report.totals["params"] == 9_408 and report.totals["macs"] == 118_013_952


@pytest.mark.parametrize("name, params", [
    ("resnet18", 11_689_512), ("resnet50", 25_557_032), ("vgg16", 138_357_544), ("mobilenet_v3", 5_483_032),
    ("vit_b16", 86_567_656), ("gpt2_small", 124_439_808), ("bert_base", 109_482_240), ("llama", 124_668_672),
    ("mlp", 2_913_290), ("lstm", 924_170),
])
def test_zoo_params_match_reference_implementations(name, params):
    # torchvision / Hugging Face parameter counts of the architectures the zoo imitates
    model = build_model(ZOO[name].factory)
    assert sum(p.numel() for p in model.parameters()) == params
