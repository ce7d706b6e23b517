"""
LoRA (Hu et al. 2021): a frozen linear layer of model.py's decoder plus a trainable low-rank update,
y = x W^T + b + s * (x A^T) B^T, on any of the seven projections of every block.

    apply_lora(model, rank=16, alpha=32.0, dropout=0.05, targets=("q", "v"))   # freezes everything else
    set_lora_enabled(model, False)          # the base model (the reference policy an RL step needs), no copy
    merge_lora(model)                       # folds the adapters into the weights: a plain Transformer again

checkpoint.py saves the adapters alone (they name their base) and merges them on load for sampling; the
engine generates through unmerged adapters. Only torch and model.py are imported here.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Linear


LORA_TARGETS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


class LoRALinear(nn.Module):
    """An nn.Linear's weight and bias (the same Parameters, so the names stay q_proj.weight ...) plus lora_A
    (rank, in) and lora_B (out, rank) in fp32, scaled by alpha / rank. lora_B starts at zero: a fresh adapter
    changes nothing. enabled=False gives the base layer (the frozen reference model an RL step needs)."""

    def __init__(self, base: nn.Linear, rank, alpha, dropout=0.0):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft) initialise A
        self.scale, self.dropout, self.enabled = alpha / rank, dropout, True

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if not self.enabled:
            return y
        h = F.dropout(x, self.dropout, self.training) if self.dropout else x
        # (.., out); bf16 under autocast
        h = F.linear(F.linear(h.to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return y + (self.scale * h).to(y.dtype)


def apply_lora(model, rank, alpha, dropout=0.0, targets=tuple(LORA_TARGETS)):
    """Put a LoRA adapter on the named projections of every block and freeze everything else."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.layers:
        for t in targets:
            parent, name = LORA_TARGETS[t].split(".")
            owner = getattr(block, parent)
            setattr(owner, name, LoRALinear(getattr(owner, name), rank, alpha, dropout))
    model.uncompile()  # the blocks changed: compile them again if wanted
    return model


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def set_lora_enabled(model, enabled):
    for m in lora_layers(model):
        m.enabled = enabled


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its weight (W += s * B A, computed in fp32) and put plain Linear layers back."""
    for block in model.layers:
        for path in LORA_TARGETS.values():
            parent, name = path.split(".")
            owner = getattr(block, parent)
            m = getattr(owner, name)
            if isinstance(m, LoRALinear):
                lin = Linear(m.weight.size(1), m.weight.size(0), bias=m.bias is not None, device="meta")
                w = m.weight.float() + m.scale * (m.lora_B @ m.lora_A)
                lin.weight = nn.Parameter(w.to(m.weight.dtype), requires_grad=True)
                lin.bias = m.bias
                setattr(owner, name, lin)
    for p in model.parameters():
        p.requires_grad_(True)
    model.uncompile()
    return model
