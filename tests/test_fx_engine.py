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


def test_linear_on_3d_input():
    report = audit(nn.Sequential(nn.Linear(16, 32)), meta(2, 5, 16), memory=False)
    linear = only(report)
    assert linear.macs == 2 * 5 * 16 * 32 == 5_120
    assert linear.params == 16 * 32 + 32
    assert linear.output_shape == [2, 5, 32]
    assert linear.flops_backward == 2 * 5_120  # weight gradient only: the input does not require grad
    assert linear.extra == {"in_features": 16, "out_features": 32, "bias": True}


def test_multihead_attention_counts_functional_in_proj():
    mha = nn.MultiheadAttention(16, num_heads=4, batch_first=True)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    report = audit(SelfAttention(), meta(2, 5, 16), memory=False)
    layer = only(report)
    # in_proj_weight (3*16*16) and in_proj_bias (48) are plain Parameters of the module, not of a Linear
    assert layer.params == 3 * 16 * 16 + 48 + 16 * 16 + 16 == 1_088
    in_proj, out_proj = 2 * 5 * 16 * 48, 2 * 5 * 16 * 16
    scores = attn_v = 2 * 4 * 5 * 5 * 4  # batch x heads x seq x seq x head_dim
    assert layer.macs == in_proj + scores + attn_v + out_proj == 11_840
    assert layer.output_shape == [2, 5, 16]


def test_sdpa_on_cpu_is_counted_forward_and_backward():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24, bias=False)

        def forward(self, x):
            q, k, v = self.qkv(x).view(2, 6, 3, 1, 8).permute(2, 0, 3, 1, 4)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    report = audit(Attention(), meta(2, 6, 8), memory=False)
    sdpa = next(layer for layer in report.layers if layer.op == "scaled_dot_product_attention")
    bmm = 2 * 1 * 6 * 6 * 8  # batch x heads x seq x seq x head_dim
    assert sdpa.macs == 2 * bmm  # q @ k^T and p @ v; the causal mask is not discounted (torch's convention)
    assert sdpa.flops_backward == 2 * 5 * bmm  # flash backward recomputes the scores, then dP, dV, dQ, dK
    assert report.uncounted == {}


def test_lstm_counts_gate_matmuls():
    report = audit(nn.Sequential(nn.LSTM(8, 16, num_layers=2, batch_first=True)), meta(3, 5, 8), memory=False)
    lstm = only(report)
    tokens = 3 * 5
    layer1, layer2 = 4 * 16 * (8 + 16), 4 * 16 * (16 + 16)  # 4 gates x hidden x (input + hidden)
    assert lstm.macs == tokens * (layer1 + layer2) == 53_760
    assert lstm.flops_backward == 2 * 2 * 53_760  # input and weight gradients
    assert lstm.params == (4 * 16 * 8 + 4 * 16 * 16 + 2 * 64) + (2 * 4 * 16 * 16 + 2 * 64) == 3_840
    assert lstm.output_shapes[0] == [3, 5, 16]


def test_embedding_is_zero_macs_and_tied_head_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 8)
            self.head = nn.Linear(8, 100, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, idx):
            return self.head(self.emb(idx))

    report = audit(Tied(), meta(2, 7, dtype=torch.long), memory=False)
    emb, head = report.layers
    assert (emb.name, emb.macs, emb.params, emb.output_shape) == ("emb", 0, 800, [2, 7, 8])
    assert (head.name, head.params, head.macs) == ("head", 0, 2 * 7 * 8 * 100)
    assert report.totals["params"] == 800 and report.totals["unused_params"] == 0
    assert report.uncounted == {}


def test_functional_params_get_their_own_records():
    report = audit(ZOO["vit_b16"].factory(depth=1), meta(1, 3, 224, 224), memory=False)
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["cls_token"].kind == "get_attr" and by_name["cls_token"].params == 768
    assert by_name["pos_embed"].params == 197 * 768
    assert report.totals["params"] == sum(layer.params for layer in report.layers)


class _Gate(nn.Module):
    """Python control flow on a tensor value: not symbolically traceable."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        if x.mean() > 0:
            return torch.relu(self.lin(x))
        return -self.lin(x)


class _GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.gate, self.fc2 = nn.Linear(4, 8), _Gate(), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(self.gate(self.fc1(x)))


class _ShapeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide, self.narrow = nn.Linear(4, 8), nn.Linear(4, 2)

    def forward(self, x):
        return self.wide(x) if x.shape[0] > 2 else self.narrow(x)


class _ValueBranch(_ShapeBranch):
    def forward(self, x):
        return self.wide(x) if x.sum() > 0 else self.narrow(x)


def test_cascade_keeps_untraceable_submodule_as_leaf():
    report = audit(_GatedNet(), (3, 4), memory=False)
    assert report.capture.path == "leaf_tracer"
    assert report.capture.leaf_modules == ["gate"]
    assert report.capture.attempts == [{"path": "symbolic_trace", "error": "TraceError: symbolically traced "
                                        "variables cannot be used as inputs to control flow"}]
    assert report.capture.notes == ["assumed a data-dependent value is 0 in layer 'gate' (_Gate)"]
    assert [(r.name, r.params, r.macs) for r in report.layers] == [
        ("fc1", 40, 3 * 4 * 8), ("gate", 72, 3 * 8 * 8), ("fc2", 18, 3 * 8 * 2)]


def test_cascade_falls_back_to_export_for_shape_branches():
    report = audit(_ShapeBranch(), (3, 4), memory=False)
    assert report.capture.path == "export"
    assert [a["path"] for a in report.capture.attempts] == ["symbolic_trace", "leaf_tracer"]
    (linear,) = report.layers  # aten-level: one linear node, owned by the branch taken
    assert (linear.op, linear.module, linear.module_type) == ("linear", "wide", "Linear")
    assert (linear.params, linear.macs, linear.output_shape) == (40, 3 * 4 * 8, [3, 8])
    assert report.totals["unused_params"] == 10  # the narrow branch


def test_cascade_ends_with_hooks_for_root_value_branches():
    report = audit(_ValueBranch(), (3, 4), memory=False)
    assert report.capture.path == "hooks"
    assert [a["path"] for a in report.capture.attempts] == ["symbolic_trace", "leaf_tracer", "export"]
    assert "GuardOnDataDependentSymNode" in report.capture.attempts[-1]["error"]
    narrow = next(r for r in report.layers if r.name == "narrow")  # value assumed 0: the else branch
    assert (narrow.params, narrow.macs, narrow.output_shape) == (10, 3 * 4 * 2, [3, 2])


def test_dict_returning_model_counts_every_output():
    report = audit(ZOO["bert_base"].factory(depth=1), meta(2, 16, dtype=torch.long), memory=False)
    assert report.capture.path == "symbolic_trace"
    pooler = next(r for r in report.layers if r.name == "pooler")
    assert pooler.macs == 2 * 768 * 768 and pooler.output_shape == [2, 768]
    # both outputs get a gradient, so the pooler's backward is counted too (weight + input gradients)
    assert pooler.flops_backward == 2 * 2 * 2 * 768 * 768


def _snapshot(model):
    state = {k: (v.device, v.dtype, v.requires_grad, v.clone() if v.device.type != "meta" else None)
             for k, v in model.state_dict(keep_vars=True).items()}
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
    grads = [p.grad for p in model.parameters()]
    return state, hooks, grads, [m.training for m in model.modules()]


def _assert_same(before, after):
    (state, hooks, grads, training), (state2, hooks2, grads2, training2) = before, after
    assert hooks == hooks2 and training == training2 and grads == grads2 == [None] * len(grads)
    for key, (device, dtype, requires_grad, value) in state.items():
        device2, dtype2, requires_grad2, value2 = state2[key]
        assert (device, dtype, requires_grad) == (device2, dtype2, requires_grad2), key
        if value is not None:
            assert torch.equal(value, value2), key


@pytest.mark.parametrize("model, inputs", [
    (lambda: ZOO["resnet18"].factory(), (2, 3, 64, 64)),  # BatchNorm running stats must not move
    (lambda: _GatedNet(), (3, 4)),
    (lambda: _ValueBranch(), (3, 4)),
])
def test_model_is_not_mutated_and_no_hooks_are_left(model, inputs):
    from torch.nn.modules import module as module_globals

    torch.manual_seed(0)
    model = model()
    before = _snapshot(model)
    global_hooks = (len(module_globals._global_forward_hooks), len(module_globals._global_forward_pre_hooks))
    audit(model, inputs, memory=False)
    _assert_same(before, _snapshot(model))
    assert global_hooks == (len(module_globals._global_forward_hooks), len(module_globals._global_forward_pre_hooks))


def _comparable(report):
    out = report.to_dict()
    out.pop("source")
    return out


def test_meta_fake_and_cpu_models_give_identical_reports():
    from torch._subclasses.fake_tensor import FakeTensorMode

    class Mixed(nn.Module):  # ops whose CPU kernels differ from the generic ones: conv, SDPA, LSTM
        def __init__(self):
            super().__init__()
            self.vit = ZOO["vit_b16"].factory(image_size=32, depth=1, num_classes=16)
            self.lstm = nn.LSTM(16, 8, batch_first=True)

        def forward(self, x):
            return self.lstm(self.vit(x).unsqueeze(1))[0]

    # rules=False: FXA105 (initialisation) legitimately needs real weights
    on_cpu = _comparable(audit(Mixed(), torch.randn(2, 3, 32, 32), memory=False, rules=False))
    on_meta = _comparable(audit(build_model(Mixed), meta(2, 3, 32, 32), memory=False, rules=False))
    fake_mode = FakeTensorMode()
    fake_model = build_model(Mixed, fake_mode=fake_mode)
    with fake_mode:
        fake_input = torch.empty(2, 3, 32, 32)
    on_fake = _comparable(audit(fake_model, fake_input, memory=False, rules=False))
    assert on_cpu == on_meta == on_fake
    ops = {layer["op"] for layer in on_cpu["layers"]}
    assert {"Conv2d", "scaled_dot_product_attention", "LSTM"} <= ops
    assert on_cpu["totals"]["macs"] > 0 and on_cpu["totals"]["flops_backward"] > 0


def test_inputs_that_do_not_fit_name_the_layer_and_shapes():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match=r"layer '2' \(Linear\) failed on input shapes \[\[3, 8\]\]: RuntimeError: "
                                         r"a and b must have same reduction dim, but got \[3, 8\] X \[16, 2\]. Pass "
                                         r"example inputs with the shapes this layer expects.$"):
        audit(model, (3, 4), memory=False)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="model must be an nn.Module, not str"):
        audit("resnet", (1, 3), memory=False)
    with pytest.raises(ValueError, match="amp='int8' is not supported"):
        audit(nn.Linear(2, 2), (1, 2), amp="int8", memory=False)
    with pytest.raises(TypeError, match="example input #0 is a dict: pass tensors"):
        audit(nn.Linear(2, 2), ({"x": 1},), memory=False)


def test_parameters_sharing_one_storage_are_counted_once():
    model = nn.Sequential(nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False))
    model[1].weight = nn.Parameter(model[0].weight.data)  # two Parameter objects, one storage
    report = audit(model, (2, 6), memory=False)
    assert report.totals["params"] == 36
    assert [layer.params for layer in report.layers] == [36, 0]
    assert [layer.macs for layer in report.layers] == [2 * 36, 2 * 36]


_SMALL_ZOO = {  # the zoo's architectures, shrunk so that a forward on fake tensors takes well under a second
    "resnet18": ({}, (2, 3, 32, 32)), "resnet50": ({}, (2, 3, 32, 32)), "vgg16": ({}, (2, 3, 32, 32)),
    "mobilenet_v3": ({}, (2, 3, 32, 32)), "vit_b16": ({"image_size": 64, "depth": 2}, (1, 3, 64, 64)),
    "gpt2_small": ({"depth": 2}, (2, 64)), "bert_base": ({"depth": 2}, (2, 64)), "llama": ({"depth": 2}, (2, 64)),
    "mlp": ({}, (4, 784)), "lstm": ({}, (2, 16, 128)),
}


@pytest.mark.parametrize("name", sorted(_SMALL_ZOO))
def test_zoo_macs_agree_with_flop_counter_mode_plus_missing_formulas(name):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    # FlopCounterMode passes shapes, not tensors, to its formulas
    def sdpa(q, k, v, *args, **kwargs):  # q @ k^T and p @ v, 2 FLOPs per MAC
        b, h, s, d = q
        return 2 * 2 * b * h * s * k[2] * d

    def rnn_layer(x, w_ih, w_hh, *args, **kwargs):  # every token (seq x batch) through both weight matrices
        return 2 * x[0] * x[1] * (w_ih[0] * w_ih[1] + w_hh[0] * w_hh[1])

    aten = torch.ops.aten
    missing = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa, aten.mkldnn_rnn_layer: rnn_layer}
    kwargs, shape = _SMALL_ZOO[name]
    factory = ZOO[name].factory
    dtype = torch.long if name in ("gpt2_small", "bert_base", "llama") else torch.float32
    fake_mode = FakeTensorMode()
    model = build_model(factory, fake_mode=fake_mode, **kwargs)
    with fake_mode:
        x = torch.zeros(shape, dtype=dtype)
        with FlopCounterMode(display=False, custom_mapping=missing) as counter:
            model(x)
    report = audit(build_model(factory, **kwargs), meta(*shape, dtype=dtype), memory=False)
    assert report.totals["flops_forward"] == counter.get_total_flops() > 0
    assert report.totals["macs"] * 2 == report.totals["flops_forward"]
    assert report.uncounted == {}


def test_hugging_face_decoder_goes_through_export_with_tied_head():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    model = build_model(transformers.GPT2LMHeadModel, config)
    report = audit(model, meta(2, 16, dtype=torch.long), memory=False)
    assert report.capture.path == "export"  # HF forwards are not symbolically traceable
    assert report.totals["params"] == sum(p.numel() for p in model.parameters())  # wte == lm_head, once
    head = next(layer for layer in report.layers if layer.module == "lm_head")
    assert (head.op, head.params, head.macs, head.output_shape) == ("linear", 0, 2 * 16 * 32 * 100, [2, 16, 100])
    assert report.uncounted == {}


def test_repeated_blocks_costed_once_match_the_full_run():
    def comparable(report):
        out = _comparable(report)
        out["capture"]["notes"] = []
        return out

    model = build_model(ZOO["llama"].factory, depth=4, dim=64, heads=4, kv_heads=2, hidden=128, vocab_size=100)
    ids = meta(2, 16, dtype=torch.long)
    fast = audit(model, ids, memory=False)
    full = audit(model, ids, memory=False, dedup_blocks=False)
    assert fast.capture.notes == ["costed 2 repeated blocks (layers.2 to layers.3) once each, as the block before "
                                  "them: same modules, graph and input shapes"]
    assert comparable(fast) == comparable(full)
    assert full.totals["params"] == fast.totals["params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("amp, dtype, itemsize", [(None, "float32", 4), ("bf16", "bfloat16", 2),
                                                  ("pure-fp16", "float16", 2)])
def test_precision_modes_change_bytes_not_macs(amp, dtype, itemsize):
    report = audit(nn.Sequential(nn.Linear(16, 32)), meta(4, 16), amp=amp, memory=False)
    linear = only(report)
    assert (linear.macs, linear.output_dtype, linear.output_bytes) == (4 * 16 * 32, dtype, 4 * 32 * itemsize)


def test_hooks_path_names_the_failing_layer_too():
    model = _ValueBranch()
    model.narrow = nn.Linear(5, 2)  # the branch taken (value assumed 0) does not fit 4 features
    with pytest.raises(ValueError, match=r"layer 'narrow' \(Linear\) failed on input shapes \[\[3, 4\]\]"):
        audit(model, (3, 4), memory=False)


class _DataDependent(nn.Module):
    """The ops whose output size depends on tensor values, as a CTC-style loss uses them."""

    def __init__(self):
        super().__init__()
        self.fc, self.emb = nn.Linear(8, 5), nn.Embedding(10, 8)

    def forward(self, x, labels):
        kept = labels >= 0
        logits = self.fc(x + self.emb(torch.unique(labels)).sum(0))[kept]  # boolean indexing
        targets = labels.masked_select(kept)
        return nn.functional.cross_entropy(logits, targets) + x[(x > 0).nonzero()[:, 0]].sum()


def test_data_dependent_ops_run_with_upper_bound_sizes():
    labels = torch.tensor([1, 4, 0, 3])  # no padding: "every element kept" is exact here
    report = audit(_DataDependent(), {"x": torch.randn(4, 8), "labels": labels}, memory=False)
    assert report.capture.path == "export"
    notes = [n for n in report.capture.notes if "depends on the data" in n]
    assert [n.split(" of ")[1].split(" in ")[0] for n in notes] == ["_unique2", "index", "masked_select", "nonzero"]
    assert notes[2] == ("assumed the largest output of masked_select in layer 'masked_select' (masked_select) of "
                        "module '(root)' (_DataDependent) (its size depends on the data: every element kept, every "
                        "value distinct): the sizes after it are upper bounds")
    by_op = {}
    for layer in report.layers:
        by_op.setdefault(layer.op, layer)  # the first of each op
    assert by_op["masked_select"].output_shape == [4] and by_op["_unique2"].output_shapes[0] == [4]
    assert by_op["index"].output_shape == [4, 5]  # 4 rows of logits kept, the real count for these labels
    assert by_op["nonzero"].output_shape == [32, 2]
    assert report.params_without_grad == {} and report.totals["flops_backward"] > 0


class _Repeats(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, counts):
        return self.fc(torch.repeat_interleave(x, counts, dim=0))


def test_data_dependent_op_without_a_bound_names_op_module_and_remedy():
    with pytest.raises(ValueError) as info:
        audit(_Repeats(), {"x": torch.randn(3, 4), "counts": torch.tensor([1, 2, 3])}, memory=False)
    message = str(info.value)
    assert message.startswith("cannot audit on fake tensors: aten.repeat_interleave in layer 'repeat_interleave' "
                              "(repeat_interleave) of module '(root)' (_Repeats) returns a tensor whose size "
                              "depends on the input values")
    assert message.endswith("leave out the inputs that lead to it (for example audit without labels), or audit "
                            "the submodule that does not use it")
    assert "example inputs do not fit" not in message


def test_speech_model_with_ctc_labels_is_audited():
    """HF's CTC loss calls labels.masked_select(labels >= 0); SpecAugment masks by boolean index."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                                         conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(config)
    labels = torch.randint(1, 32, (2, 10), generator=torch.Generator().manual_seed(0))
    report = audit(model, {"input_values": torch.randn(2, 1600), "labels": labels}, memory=False)
    assert report.capture.path == "hooks"  # export cannot guard on the masked_select size either
    bounded = [note.split(" in ")[0] for note in report.capture.notes if note.endswith("upper bounds")]
    assert bounded == ["assumed the largest output of _ctc_loss", "assumed the largest output of index",
                       "assumed the largest output of masked_select"]
    assert report.totals["params"] == sum(p.numel() for p in model.parameters()) and report.totals["flops_backward"]
    assert report.params_without_grad == {}
    with pytest.raises(ValueError, match=r"^cannot audit on fake tensors: aten._local_scalar_dense in the "
                       r"training-step memory simulation returns a Python value that depends on the input values.* "
                       r"\(for example audit without labels\), skip the simulation \(memory=False, --no-memory\)"):
        audit(model, {"input_values": torch.randn(2, 1600), "labels": labels})
