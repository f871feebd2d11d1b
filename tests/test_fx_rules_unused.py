"""FXA108 (unused parameters) gives one verdict whatever path captured the graph.

A parameter is *unused* when it is trainable and receives no gradient from the audit's backward
pass over the model's floating outputs: the set DistributedDataParallel would wait for, and the
set ``report.params_without_grad`` lists (name -> elements) for the memory simulation to compare.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from training_profiler.fx_audit import audit  # noqa: E402

transformers = pytest.importorskip("transformers")


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head, self.old_head = nn.Linear(16, 8), nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)))


class _Rope(nn.Module):
    """Rotary tables as buffers, sliced by the sequence length (a Python check on the shape:
    symbolic_trace cannot run it)."""

    def __init__(self, dim: int, max_len: int = 32):
        super().__init__()
        freqs = torch.outer(torch.arange(max_len).float(), 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("cos", freqs.cos().repeat(1, 2), persistent=False)
        self.register_buffer("sin", freqs.sin().repeat(1, 2), persistent=False)
        self.max_len = max_len

    def forward(self, x):  # (batch, heads, seq, head_dim)
        seq = x.shape[-2]
        if seq > self.max_len:
            raise ValueError(f"sequence of {seq} tokens is longer than {self.max_len}")
        x1, x2 = x.chunk(2, dim=-1)
        return x * self.cos[:seq] + torch.cat((-x2, x1), dim=-1) * self.sin[:seq]


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.out = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.rope = _Rope(d // heads)
        self.norm2, self.mlp = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True)
        x = x + self.out(att.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


class _Decoder(nn.Module):
    """LLaMA-like: 4 identical blocks (the engine costs blocks 2 and 3 as copies of block 1)."""

    def __init__(self, value_head: bool = False):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.blocks = nn.ModuleList(_Block(32, 4) for _ in range(4))
        self.norm, self.lm_head = nn.LayerNorm(32), nn.Linear(32, 50, bias=False)
        self.value_head = nn.Linear(32, 1) if value_head else None  # an RLHF head this forward never calls

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


class _DecoderWithLoss(_Decoder):
    def forward(self, input_ids, labels):
        return F.cross_entropy(super().forward(input_ids).flatten(0, 1), labels.flatten())


def _llama():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config)


def _gpt2():
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)  # lm_head.weight is tied to transformer.wte.weight


def _ids():
    return torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))


VALUE_HEAD = {"value_head.weight": 32, "value_head.bias": 1}
CASES = [  # (model, inputs, capture paths that can take it, expected params_without_grad)
    ("two-heads", lambda: _TwoHeads(), lambda: torch.randn(2, 16),
     ("symbolic_trace", "leaf_tracer", "export", "hooks"), {"old_head.weight": 32, "old_head.bias": 4}),
    ("rope-decoder", lambda: _Decoder(), _ids, ("leaf_tracer", "export", "hooks"), {}),
    ("rope-decoder+value-head", lambda: _Decoder(value_head=True), _ids, ("leaf_tracer", "export", "hooks"),
     VALUE_HEAD),
    ("rope-decoder+labels", lambda: _DecoderWithLoss(value_head=True), lambda: {"input_ids": _ids(), "labels": _ids()},
     ("export", "hooks"), VALUE_HEAD),
    ("hf-llama+labels", _llama, lambda: {"input_ids": _ids(), "labels": _ids()}, ("export", "hooks"), {}),
    ("hf-gpt2+labels", _gpt2, lambda: {"input_ids": _ids(), "labels": _ids()}, ("export", "hooks"), {}),
]


@pytest.mark.parametrize("make_model, make_inputs, paths, expected",
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_every_capture_path_gives_the_same_unused_parameter_verdict(make_model, make_inputs, paths, expected,
                                                                     one_thread):
    torch.manual_seed(0)
    model, inputs = make_model(), make_inputs()
    for path in paths:
        report = audit(model, inputs, memory=False, capture_paths=(path,))
        assert report.capture.path == path
        unused = [f for f in report.findings if f.code == "FXA108"]
        if expected:
            (finding,) = unused
            assert finding.data == {"count": len(expected), "params": sum(expected.values()), "names": list(expected)}
            assert finding.location.module == next(iter(expected)).rsplit(".", 1)[0]
        else:
            assert unused == [], (path, unused[0].message)
        assert report.params_without_grad == expected, path


def test_symbolic_trace_cannot_take_the_rope_decoder():
    report = audit(_Decoder(), _ids(), memory=False)
    assert report.capture.path == "leaf_tracer" and report.capture.attempts[0]["path"] == "symbolic_trace"
    assert report.capture.leaf_modules == [f"blocks.{i}.rope" for i in range(4)]


def test_hugging_face_llama_with_labels_has_no_unused_parameters():
    """The reported case: export graphs are aten-level, so no module or get_attr record 'uses' a
    parameter; the verdict now comes from the gradients, as DDP sees them."""
    torch.manual_seed(0)
    model = _llama()
    report = audit(model, {"input_ids": _ids(), "labels": _ids()}, memory=False)
    assert report.capture.path == "export"
    assert "FXA108" not in {f.code for f in report.findings}
    assert report.params_without_grad == {} and report.totals["unused_params"] == 0


def test_frozen_parameters_are_not_unused():
    model = _TwoHeads()
    model.old_head.requires_grad_(False)  # frozen on purpose: no gradient expected
    report = audit(model, torch.randn(2, 16), memory=False)
    assert "FXA108" not in {f.code for f in report.findings} and report.params_without_grad == {}


def test_without_a_backward_the_check_says_it_did_not_run():
    class Argmax(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x).argmax(-1)  # an integer output: no gradient reaches any parameter

    report = audit(Argmax(), torch.randn(2, 4), memory=False)
    assert report.params_without_grad is None and "FXA108" not in {f.code for f in report.findings}
    assert "FXA108 (unused parameters) not checked: no backward ran (no floating output needs a gradient)" \
        in report.capture.notes


def test_fxa108_and_the_memory_simulation_agree_on_which_params_get_no_gradient():
    # One notion of "used": the parameters FXA108 reports are exactly those the memory simulation
    # leaves without gradient and optimizer state (torch.optim skips params whose .grad is None).
    import torch.nn as nn

    from training_profiler.fx_audit import audit

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head, self.unused_head = nn.Linear(16, 32), nn.Linear(32, 4), nn.Linear(32, 512)

        def forward(self, x):
            return self.head(self.body(x).relu())

    report = audit(Net(), [(8, 16)], optimizer="adam")
    assert report.params_without_grad == {"unused_head.weight": 32 * 512, "unused_head.bias": 512}
    assert set(report.memory.params_without_grad) == set(report.params_without_grad)
    fxa108 = [f for f in report.findings if f.code == "FXA108"]
    assert len(fxa108) == 1 and "16,896 params" in fxa108[0].message
