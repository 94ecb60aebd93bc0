"""The optimizers of a training run: AdamW alone, or Muon for the hidden matrices and AdamW for the rest.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks";
torch.optim.Muon, used as it is) takes SGD-momentum's update of a 2-D weight and replaces it
with the nearest semi-orthogonal matrix (five Newton-Schulz iterations), so that every
direction of the matrix learns at the same rate. It is meant for the hidden layers only: the
matrices chosen here by role are the linear layers inside the blocks (attention's q/k/v and
output projections, the MLP's); embeddings and the output layer, 2-D as they are, stay with
AdamW, with the norm gains and biases. Llama's q, k and v are three matrices
(model.LlamaAttention), so each is orthogonalised on its own, as modded-nanogpt does: that
scored better than one fused matrix (BENCHMARKS.md). GPT-2's c_attn is one matrix in Hugging
Face's layout, and is orthogonalised whole. Under DDP every process holds the averaged
gradients and steps Muon on all of them, so the processes stay identical.

`Optimizers` steps both as one and saves one state dict, a part per optimizer, in one
checkpoint file.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


class Optimizers:
    """Named torch optimizers stepped, zeroed and saved as one.

    Each parameter group carries "lr_scale": its learning rate is the schedule's times that
    (1 for AdamW's groups, train.muon_lr / train.lr for Muon's), see set_lr.
    """

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.parts.values() for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        """Every optimizer's per-parameter state (moments, momentum buffers), keyed by parameter."""
        return {p: s for optimizer in self.parts.values() for p, s in optimizer.state.items()}

    def set_lr(self, lr: float) -> None:
        """Set the schedule's learning rate: each group gets lr times its lr_scale."""
        for group in self.param_groups:
            group["lr"] = lr * group["lr_scale"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.parts.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, scaler: torch.amp.GradScaler) -> None:
        """One step of each optimizer, through the gradient scaler (a no-op unless float16)."""
        for optimizer in self.parts.values():
            scaler.step(optimizer)

    def unscale_(self, scaler: torch.amp.GradScaler) -> None:
        for optimizer in self.parts.values():
            scaler.unscale_(optimizer)

    def state_dict(self) -> dict:
        """{name: that optimizer's state_dict}, e.g. {"adamw": ..., "muon": ...}."""
        return {name: optimizer.state_dict() for name, optimizer in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, optimizer in self.parts.items():
            optimizer.load_state_dict(state[name])


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the linear layers between the embeddings and the output layer (lm_head)."""
    head = getattr(model, "lm_head", None)
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear) and m is not head and m.weight.requires_grad]


def make_optimizer(model: nn.Module, train: TrainConfig, device: str) -> Optimizers:
    """AdamW, with Muon for the hidden matrices when train.optimizer is "muon".

    AdamW's weight decay pulls matrices (linear weights, embeddings) toward zero, not biases
    and norm gains, whose size sets a scale rather than storing knowledge; decay_all decays
    every parameter, as torch.optim.AdamW does by default (the seed's recipe). Muon decays its
    matrices by train.weight_decay too (decoupled, as AdamW).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    parts: dict[str, torch.optim.Optimizer] = {}
    if train.optimizer == "muon":
        hidden = hidden_matrices(model)
        parts["muon"] = torch.optim.Muon(
            [{"params": hidden, "lr_scale": train.muon_lr / train.lr}],
            lr=train.muon_lr,
            weight_decay=train.weight_decay,
            momentum=train.muon_momentum,
        )
        params = [p for p in params if all(p is not h for h in hidden)]
    if train.decay_all:
        groups = [{"params": params, "weight_decay": train.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    # One fused kernel for all parameters instead of about ten small ops per tensor, on CUDA
    # and on CPU (where small models have many small tensors); MPS has no fused AdamW.
    fused = True if device.startswith(("cuda", "cpu")) else None
    parts["adamw"] = torch.optim.AdamW(
        [{**g, "lr_scale": 1.0} for g in groups if g["params"]], lr=train.lr, betas=(train.beta1, train.beta2), fused=fused
    )
    return Optimizers(parts)
