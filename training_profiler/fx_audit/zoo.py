"""The model zoo: our own definitions of ten common architectures, with example inputs.

Used by the tests, the benchmarks (`bench/audit_speed.py`, `bench/audit_accuracy.py`) and the
docs. Every model is plain ``torch.nn`` and traceable by ``torch.fx.symbolic_trace``. Each entry
of :data:`ZOO` pairs a factory (keyword arguments shrink or grow it) with ``make_inputs(batch)``.
Build big ones without allocating: ``build_model(llama_7b_like)`` (see ``capture.py``), then
call ``make_inputs`` under ``torch.device("meta")`` or a ``FakeTensorMode``.

This module imports torch: import it only from torch-using code paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LLAMA_7B",
    "ZOO",
    "ZooModel",
    "bert_base_like",
    "gpt2_small_like",
    "llama_7b_like",
    "llama_like",
    "lstm_2layer",
    "mlp",
    "mobilenet_v3_like",
    "resnet18_like",
    "resnet50_like",
    "vgg16_like",
    "vit_b16_like",
]


# ----------------------------------------------------------------------------------- CNNs
class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-style ResNet: 7x7 stem, four stages, global pool, linear head."""

    def __init__(self, block: type, layers: list[int], num_classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_like(num_classes: int = 1000) -> nn.Module:
    """ResNet-18 (11,689,512 params at 1000 classes, like torchvision's)."""
    return ResNet(_BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50_like(num_classes: int = 1000) -> nn.Module:
    """ResNet-50 (25,557,032 params at 1000 classes, like torchvision's)."""
    return ResNet(_Bottleneck, [3, 4, 6, 3], num_classes)


class VGG(nn.Module):
    def __init__(self, cfg: list[Any], num_classes: int = 1000, hidden: int = 4096) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 49, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16_like(num_classes: int = 1000) -> nn.Module:
    """VGG-16 configuration D (138,357,544 params at 1000 classes)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    return VGG(cfg, num_classes)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, act: str, stride: int) -> None:
        super().__init__()
        act_layer = nn.Hardswish if act == "HS" else nn.ReLU
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers += [nn.Conv2d(cin, expanded, 1, bias=False), nn.BatchNorm2d(expanded), act_layer(inplace=True)]
        layers += [  # depthwise
            nn.Conv2d(expanded, expanded, kernel, stride, (kernel - 1) // 2, groups=expanded, bias=False),
            nn.BatchNorm2d(expanded), act_layer(inplace=True),
        ]
        if use_se:
            layers.append(_SqueezeExcite(expanded, _make_divisible(expanded // 4)))
        layers += [nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """MobileNetV3-Large layout: depthwise separable blocks, hardswish, squeeze-excite."""

    # kernel, expanded, out, SE, activation, stride
    LARGE = [
        (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
        (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1),
    ]

    def __init__(self, num_classes: int = 1000, last_channel: int = 1280) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(inplace=True)]
        cin = 16
        for k, exp, cout, se, act, s in self.LARGE:
            layers.append(_InvertedResidual(cin, k, exp, cout, se, act, s))
            cin = cout
        layers += [nn.Conv2d(cin, 6 * cin, 1, bias=False), nn.BatchNorm2d(6 * cin), nn.Hardswish(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * cin, last_channel), nn.Hardswish(inplace=True), nn.Dropout(0.2), nn.Linear(last_channel, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_like(num_classes: int = 1000) -> nn.Module:
    """MobileNetV3-Large (5,483,032 params at 1000 classes, like torchvision's)."""
    return MobileNetV3(num_classes)


# ---------------------------------------------------------------------------- transformers
class _SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (GQA when kv_heads < heads)."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, bias: bool = True, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads or heads, dim // heads
        self.causal = causal
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q = self._split(self.q_proj(x), self.heads)
        k = self._split(self.k_proj(x), self.kv_heads)
        v = self._split(self.v_proj(x), self.kv_heads)
        if rope is not None:
            q, k = _apply_rope(q, rope), _apply_rope(k, rope)
        if self.kv_heads != self.heads:  # GQA: share each key/value head among heads // kv_heads queries
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(x.size(0), x.size(1), -1))


class _MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class _PreNormBlock(nn.Module):
    """GPT-2 / ViT block: x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, causal: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _SelfAttention(dim, heads, causal=causal)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """ViT-B/16: conv patch embedding, class token and position embedding (functional params)."""

    def __init__(self, image_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 hidden: int = 3072, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[_PreNormBlock(dim, heads, hidden, causal=False, eps=1e-6) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_b16_like(image_size: int = 224, num_classes: int = 1000, depth: int = 12) -> nn.Module:
    """ViT-B/16 (86,567,656 params at 224 px and 1000 classes, like torchvision's vit_b_16)."""
    return ViT(image_size=image_size, num_classes=num_classes, depth=depth)


class GPT2(nn.Module):
    """GPT-2 decoder; ``lm_head.weight`` is tied to ``wte.weight`` (count it once)."""

    def __init__(self, vocab_size: int = 50257, max_seq: int = 1024, dim: int = 768, depth: int = 12,
                 heads: int = 12) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(max_seq, dim)
        self.h = nn.Sequential(*[_PreNormBlock(dim, heads, 4 * dim, causal=True) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.h(self.wte(idx) + self.wpe(pos))
        return self.lm_head(self.ln_f(x))


def gpt2_small_like(vocab_size: int = 50257, max_seq: int = 1024, depth: int = 12) -> nn.Module:
    """GPT-2 small (124,439,808 params with tied embeddings, like Hugging Face's gpt2)."""
    return GPT2(vocab_size=vocab_size, max_seq=max_seq, depth=depth)


class _PostNormBlock(nn.Module):
    """BERT block: ln(x + attn(x)), ln(x + mlp(x))."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attn = _SelfAttention(dim, heads)
        self.ln_1 = nn.LayerNorm(dim, eps=1e-12)
        self.mlp = _MLP(dim, hidden)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(x + self.mlp(x))


class BERT(nn.Module):
    """BERT-base encoder with word/position/segment embeddings and the tanh pooler."""

    def __init__(self, vocab_size: int = 30522, max_seq: int = 512, dim: int = 768, depth: int = 12, heads: int = 12,
                 type_vocab: int = 2) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_seq, dim)
        self.token_type_embeddings = nn.Embedding(type_vocab, dim)
        self.emb_norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.Sequential(*[_PostNormBlock(dim, heads, 4 * dim) for _ in range(depth)])
        self.pooler = nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        x = self.emb_norm(x + self.token_type_embeddings(torch.zeros_like(input_ids)))
        x = self.layers(x)
        return {"last_hidden_state": x, "pooler_output": torch.tanh(self.pooler(x[:, 0]))}


def bert_base_like(vocab_size: int = 30522, depth: int = 12) -> nn.Module:
    """BERT-base encoder + pooler (109,482,240 params, like Hugging Face's bert-base-uncased BertModel)."""
    return BERT(vocab_size=vocab_size, depth=depth)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rope_tables(head_dim: int, max_seq: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_seq, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    cos, sin = rope
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _LlamaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = _SelfAttention(dim, heads, kv_heads, bias=False, causal=True)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = _SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), (cos, sin))
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """LLaMA decoder: RMSNorm, rotary embeddings, SwiGLU MLP, grouped-query attention, untied head."""

    def __init__(self, vocab_size: int = 32000, dim: int = 768, depth: int = 12, heads: int = 12, kv_heads: int = 4,
                 hidden: int = 2048, max_seq: int = 2048) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList([_LlamaBlock(dim, heads, kv_heads, hidden) for _ in range(depth)])
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        cos, sin = _rope_tables(dim // heads, max_seq)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.size(1)
        cos, sin = self.rope_cos.narrow(0, 0, seq), self.rope_sin.narrow(0, 0, seq)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def llama_like(depth: int = 12, dim: int = 768, heads: int = 12, kv_heads: int = 4, hidden: int = 2048,
               vocab_size: int = 32000) -> nn.Module:
    """A LLaMA-style decoder with GQA, 12 query heads sharing 4 key/value heads (124,668,672 params)."""
    return Llama(vocab_size=vocab_size, dim=dim, depth=depth, heads=heads, kv_heads=kv_heads, hidden=hidden)


def llama_7b_like(depth: int = 32) -> nn.Module:
    """LLaMA-7B's configuration (6,738,415,616 params): build it with ``build_model`` (no allocation)."""
    return Llama(vocab_size=32000, dim=4096, depth=depth, heads=32, kv_heads=32, hidden=11008, max_seq=2048)


# ------------------------------------------------------------------------------- MLP, LSTM
def mlp(in_features: int = 784, hidden: int = 1024, depth: int = 3, num_classes: int = 10) -> nn.Module:
    """A plain ReLU MLP: ``depth`` hidden Linear layers, then the classifier."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, num_classes))


class LSTMClassifier(nn.Module):
    """Two stacked LSTM layers over a sequence, a Linear head on the last step."""

    def __init__(self, input_size: int = 128, hidden: int = 256, layers: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def lstm_2layer(input_size: int = 128, hidden: int = 256, num_classes: int = 10) -> nn.Module:
    """A 2-layer LSTM classifier (input 128, hidden 256)."""
    return LSTMClassifier(input_size, hidden, 2, num_classes)


# ------------------------------------------------------------------------------------ zoo
def _images(size: int = 224) -> Callable[[int], tuple[torch.Tensor, ...]]:
    return lambda batch: (torch.randn(batch, 3, size, size),)


def _tokens(seq: int, vocab: int) -> Callable[[int], tuple[torch.Tensor, ...]]:
    return lambda batch: (torch.randint(0, vocab, (batch, seq)),)


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: ``factory()`` builds the model, ``make_inputs(batch)`` its example inputs.

    ``make_inputs`` allocates small CPU tensors; call it under ``torch.device("meta")`` or a
    ``FakeTensorMode`` to allocate nothing. ``input_note`` describes the inputs for tables.
    """

    name: str
    factory: Callable[..., nn.Module]
    make_inputs: Callable[[int], tuple[torch.Tensor, ...]]
    input_note: str


ZOO: dict[str, ZooModel] = {
    z.name: z
    for z in (
        ZooModel("resnet18", resnet18_like, _images(), "images 3x224x224"),
        ZooModel("resnet50", resnet50_like, _images(), "images 3x224x224"),
        ZooModel("vgg16", vgg16_like, _images(), "images 3x224x224"),
        ZooModel("mobilenet_v3", mobilenet_v3_like, _images(), "images 3x224x224"),
        ZooModel("vit_b16", vit_b16_like, _images(), "images 3x224x224"),
        ZooModel("gpt2_small", gpt2_small_like, _tokens(1024, 50257), "token ids, seq 1024"),
        ZooModel("bert_base", bert_base_like, _tokens(128, 30522), "token ids, seq 128"),
        ZooModel("llama", llama_like, _tokens(512, 32000), "token ids, seq 512"),
        ZooModel("mlp", mlp, lambda batch: (torch.randn(batch, 784),), "vectors of 784"),
        ZooModel("lstm", lstm_2layer, lambda batch: (torch.randn(batch, 64, 128),), "sequences 64x128"),
    )
}
LLAMA_7B = ZooModel("llama_7b", llama_7b_like, _tokens(512, 32000), "token ids, seq 512")
