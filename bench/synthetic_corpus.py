"""Generate a synthetic corpus of realistic PyTorch project code for the lint speed benchmark.

Files mix what a real training repository holds: model definitions (CNNs, transformer blocks,
MLPs), training loops (fp32, AMP with GradScaler, bf16, some with the classic mistakes), data
pipelines, metrics and plain utilities without torch. Deterministic for a given seed.

    python bench/synthetic_corpus.py OUT_DIR [--lines 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import textwrap
from pathlib import Path

MODEL = '''\
"""{title} model definitions."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class {name}Block(nn.Module):
    """Residual block with {norm} and a {act} activation."""

    def __init__(self, channels: int, expansion: int = {exp}, dropout: float = {drop}):
        super().__init__()
        hidden = channels * expansion
        self.conv1 = nn.Conv2d(channels, hidden, kernel_size=3, padding=1, bias=False)
        self.norm1 = nn.{norm}({norm_arg})
        self.conv2 = nn.Conv2d(hidden, channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.{norm}({norm_arg2})
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = F.{act}(self.norm1(self.conv1(x)))
        out = self.dropout(out)
        out = self.norm2(self.conv2(out))
        return F.{act}(out + residual)


class {name}Attention(nn.Module):
    def __init__(self, dim: int = {dim}, heads: int = {heads}, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if mask is not None:
            attn = attn.masked_fill(~mask, {fill})
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class {name}Net(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = {width}, depth: int = {depth}, num_classes: int = {classes}):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.ModuleList([{name}Block(width) for _ in range(depth)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.pool(x).flatten(1)
        return self.head(x)


def {lname}_net(pretrained: bool = False, **kwargs) -> {name}Net:
    model = {name}Net(**kwargs)
    if pretrained:
        raise ValueError("no pretrained weights are shipped for {lname}_net")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cosine_schedule(step: int, total: int, warmup: int = {warmup}) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
'''

TRAIN_AMP = '''\
"""Training loop for {title} with automatic mixed precision."""

import logging
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)


def train_one_epoch(model, loader: DataLoader, optimizer, scheduler, epoch: int, device="cuda", clip: float = {clip}):
    model.train()
    scaler = torch.amp.GradScaler("cuda")
    criterion = nn.CrossEntropyLoss(label_smoothing={smooth})
    start = time.time()
    running = 0.0
    for step, (images, targets) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            logits = model(images)
            loss = criterion(logits, targets)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        running += loss.detach()
        if step % {log_every} == 0:
            logger.info("epoch %d step %d loss %.4f (%.1fs)", epoch, step, running.item() / (step + 1), time.time() - start)
    return running.item() / max(1, len(loader))


@torch.no_grad()
def evaluate(model, loader, device="cuda"):
    model.eval()
    correct = total = 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits = model(images)
        probs = F.softmax(logits.float(), dim=-1)
        correct += (probs.argmax(dim=-1) == targets).sum().item()
        total += targets.numel()
    return correct / max(1, total)
'''

TRAIN_BUGGY = '''\
"""Older training script for {title} (kept for reproducibility)."""

import torch
import torch.nn.functional as F
from torch.cuda.amp import GradScaler, autocast


def train(model, loader, optimizer, epochs: int = {epochs}):
    scaler = GradScaler()
    for epoch in range(epochs):
        for x, y in loader:
            x, y = x.cuda(), y.cuda()
            optimizer.zero_grad()
            with autocast():
                logits = model(x)
                probs = torch.sigmoid(logits)
            loss = F.binary_cross_entropy(probs, y)
            scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), {clip})
            scaler.step(optimizer)
            scaler.update()


def masked_scores(scores, mask):
    return scores.masked_fill(mask == 0, -1e9)


def normalize(x):
    return x / (x.norm(dim=-1, keepdim=True) + 1e-8)
'''

DATA = '''\
"""Dataset and transforms for {title}."""

import json
import os
import random
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass
class Sample:
    path: str
    label: int
    weight: float = 1.0


class {name}Dataset(Dataset):
    def __init__(self, root: str, split: str = "train", image_size: int = {size}, augment: bool = True):
        self.root = root
        self.split = split
        self.image_size = image_size
        self.augment = augment and split == "train"
        with open(os.path.join(root, f"{{split}}.json")) as fh:
            records = json.load(fh)
        self.samples = [Sample(r["path"], int(r["label"]), float(r.get("weight", 1.0))) for r in records]
        self.classes = sorted({{s.label for s in self.samples}})

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: str) -> torch.Tensor:
        data = torch.load(os.path.join(self.root, path), map_location="cpu")
        return data.float() / 255.0

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = self._load(sample.path)
        if self.augment:
            if random.random() < 0.5:
                image = image.flip(-1)
            shift = random.randint(-{shift}, {shift})
            image = torch.roll(image, shifts=shift, dims=-2)
        mean = image.mean(dim=(1, 2), keepdim=True)
        std = image.std(dim=(1, 2), keepdim=True).clamp_min(1e-3)
        return (image - mean) / std, sample.label


def collate(batch):
    images, labels = zip(*batch)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def class_weights(dataset: {name}Dataset) -> torch.Tensor:
    counts = torch.zeros(len(dataset.classes))
    for sample in dataset.samples:
        counts[sample.label] += 1
    return counts.sum() / (len(counts) * counts.clamp_min(1))
'''

UTILS = '''\
"""Configuration and bookkeeping helpers for {title}."""

import argparse
import csv
import os
import sys
from collections import defaultdict
from datetime import datetime


DEFAULTS = {{
    "lr": {lr},
    "batch_size": {batch},
    "epochs": {epochs},
    "weight_decay": {wd},
    "warmup": {warmup},
}}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="{title} experiments")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{{key.replace('_', '-')}}", type=type(value), default=value)
    parser.add_argument("--output", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class AverageMeter:
    def __init__(self, name: str):
        self.name = name
        self.reset()

    def reset(self):
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1):
        self.total += value * n
        self.count += n

    @property
    def average(self) -> float:
        return self.total / self.count if self.count else 0.0


class CsvLogger:
    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.path = os.path.join(folder, f"log-{{stamp}}.csv")
        self.rows = defaultdict(list)

    def log(self, step: int, **values):
        for key, value in values.items():
            self.rows[key].append((step, value))

    def flush(self):
        with open(self.path, "w", newline="") as fh:
            writer = csv.writer(fh)
            for key, series in sorted(self.rows.items()):
                for step, value in series:
                    writer.writerow([key, step, value])


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"running with {{vars(args)}}", file=sys.stderr)
    return 0
'''

TEMPLATES = [(MODEL, 3), (TRAIN_AMP, 2), (TRAIN_BUGGY, 1), (DATA, 2), (UTILS, 2)]
NAMES = ["Res", "Conv", "Vision", "Seg", "Det", "Audio", "Text", "Graph", "Mix", "Dense", "Sparse", "Fast", "Tiny", "Wide"]


def _params(rng: random.Random, index: int) -> dict:
    name = rng.choice(NAMES) + str(index)
    norm = rng.choice(["BatchNorm2d", "GroupNorm"])
    return {
        "title": f"{name} project",
        "name": name,
        "lname": name.lower(),
        "norm": norm,
        "norm_arg": "hidden" if norm == "BatchNorm2d" else "8, hidden",
        "norm_arg2": "channels" if norm == "BatchNorm2d" else "8, channels",
        "act": rng.choice(["relu", "gelu", "silu"]),
        "exp": rng.choice([1, 2, 4]),
        "drop": rng.choice([0.0, 0.1, 0.2]),
        "dim": rng.choice([256, 384, 512, 768]),
        "heads": rng.choice([4, 8, 12]),
        "fill": rng.choice(["float('-inf')", "torch.finfo(attn.dtype).min", "-1e4"]),
        "width": rng.choice([32, 64, 96, 128]),
        "depth": rng.randint(2, 12),
        "classes": rng.choice([10, 100, 1000]),
        "warmup": rng.choice([100, 500, 1000]),
        "clip": rng.choice([0.5, 1.0, 5.0]),
        "smooth": rng.choice([0.0, 0.1]),
        "log_every": rng.choice([10, 50, 100]),
        "epochs": rng.randint(10, 300),
        "size": rng.choice([32, 64, 224]),
        "shift": rng.randint(1, 8),
        "lr": rng.choice([1e-3, 3e-4, 0.1]),
        "batch": rng.choice([32, 64, 128, 256]),
        "wd": rng.choice([0.0, 1e-4, 0.05]),
    }


def generate(out_dir: str | Path, lines: int = 100_000, seed: int = 0) -> list[Path]:
    """Write files into ``out_dir`` until at least ``lines`` lines exist; returns their paths."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weighted = [t for t, w in TEMPLATES for _ in range(w)]
    paths, total, index = [], 0, 0
    while total < lines:
        template = rng.choice(weighted)
        text = textwrap.dedent(template).format(**_params(rng, index))
        package = out / f"pkg{index // 50}"
        package.mkdir(exist_ok=True)
        path = package / f"module_{index}.py"
        path.write_text(text)
        paths.append(path)
        total += text.count("\n")
        index += 1
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    files = generate(ns.out, ns.lines, ns.seed)
    print(f"wrote {len(files)} files to {ns.out}")
