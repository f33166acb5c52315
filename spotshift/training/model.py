"""A small decoder-only transformer language model (GPT-style, pre-norm), deterministic on CPU.

Attention is written out (matmul, causal mask, softmax) rather than calling fused kernels, so
``torch.use_deterministic_algorithms(True)`` holds on every backend and two runs of the same
config produce the same bits. Embeddings and the output head are separate tensors (no weight
tying) so every parameter is its own safetensors entry.

``lora_rank > 0`` adds LoRA adapters (``W x + B A x * alpha / r``, ``B`` zero-initialised) to the
attention projections; fine-tuning then trains ``*.lora_*`` only (``trainable`` patterns) and
a model with adapters computes exactly what its base computes until the first update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

# the one validation of model configs lives with the job declarations (torch-free): `jobs add`
# refuses exactly what the trainer would refuse
from spotshift.jobs import MODEL_KEYS, OPTIONAL_KEYS, check_model_config  # noqa: F401

LORA_ALPHA = 16


class LoRALinear(nn.Linear):
    """A linear layer with an optional low-rank adapter: ``W x + b + (B (A x)) * alpha / r``."""

    def __init__(self, d_in: int, d_out: int, rank: int = 0):
        super().__init__(d_in, d_out)
        self.rank = rank
        if rank:
            self.lora_a = nn.Parameter(torch.empty(rank, d_in))
            self.lora_b = nn.Parameter(torch.zeros(d_out, rank))
            nn.init.normal_(self.lora_a, std=1.0 / rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.rank:
            y = y + (x @ self.lora_a.t() @ self.lora_b.t()) * (LORA_ALPHA / self.rank)
        return y


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, seq_len: int, lora_rank: int = 0):
        super().__init__()
        self.n_head = n_head
        self.qkv = LoRALinear(d_model, 3 * d_model, lora_rank)
        self.proj = LoRALinear(d_model, d_model, lora_rank)
        mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        hd = c // self.n_head
        q = q.view(b, t, self.n_head, hd).transpose(1, 2)
        k = k.view(b, t, self.n_head, hd).transpose(1, 2)
        v = v.view(b, t, self.n_head, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(self.mask[:t, :t], float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_head: int, seq_len: int, d_ff: int, lora_rank: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, seq_len, lora_rank)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, d_ff)
        self.out = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Token + position embeddings, ``n_layer`` pre-norm blocks, final norm, linear head."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layer: int,
        n_head: int,
        seq_len: int,
        d_ff: int,
        lora_rank: int = 0,
    ):
        super().__init__()
        self.seq_len = seq_len
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(
            [Block(d_model, n_head, seq_len, d_ff, lora_rank) for _ in range(n_layer)]
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):  # (adapters keep their own init: A random, B zero)
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TinyGPT:
        return cls(**check_model_config(cfg))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds seq_len {self.seq_len}")
        pos = torch.arange(t, device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def parameter_count(cfg: Mapping[str, Any]) -> int:
    """Parameters of a model of this config (without building it)."""
    c = check_model_config(cfg)
    d, f, v, s, n = c["d_model"], c["d_ff"], c["vocab_size"], c["seq_len"], c["n_layer"]
    r = c.get("lora_rank", 0)
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    block += r * (d + 3 * d) + r * (d + d)  # adapters of qkv and proj
    return v * d + s * d + n * block + 2 * d + d * v
