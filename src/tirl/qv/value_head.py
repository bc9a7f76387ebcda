"""The state-value head of `iq_value="head"`: V(s_t) = v_ψ(h_t), a linear map of the final hidden state (docs/method.md §1).

It is zero-initialised, so training starts with V ≡ 0 and r_t = log π(a_t|s_t), and Q(s_t, a_t) = log π(a_t|s_t) + V(s_t)
leaves the policy exactly the model's softmax. The head is a submodule of the causal LM (`tirl_value_head`), so the
optimizer, DDP/FSDP wrapping, device moves and mixed precision treat it like every other parameter, and PEFT leaves it
trainable. It is kept out of `model.safetensors` (so the policy loads in plain transformers without unexpected keys)
and written beside it as `value_head.safetensors`, in the final run directory and in every checkpoint.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import write_atomic

ATTRIBUTE = "tirl_value_head"
FILENAME = "value_head.safetensors"


class ValueHead(nn.Module):
    """v_ψ(h) = w·h + b, zero-initialised; returns float32 values with the hidden states' leading shape."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()


def _base(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (the head lives there, next to the LM head)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def get_value_head(model: nn.Module) -> ValueHead | None:
    """The value head attached to `model` (PEFT-wrapped or not), or None."""
    return getattr(_base(model), ATTRIBUTE, None)


def add_value_head(model: nn.Module) -> ValueHead:
    """Attach a zero-initialised `ValueHead` to `model` (idempotent) on the LM head's device and dtype; trainable."""
    base = _base(model)
    head = get_value_head(base)
    if head is None:
        lm_head = base.get_output_embeddings()
        hidden = base.config.get_text_config().hidden_size
        head = ValueHead(hidden).to(device=lm_head.weight.device, dtype=lm_head.weight.dtype)
        base.add_module(ATTRIBUTE, head)
        # saved on its own (`save_value_head`), so model.safetensors stays a plain causal LM
        ignored = set(getattr(base, "_keys_to_ignore_on_save", None) or ())
        base._keys_to_ignore_on_save = ignored | {f"{ATTRIBUTE}.linear.weight", f"{ATTRIBUTE}.linear.bias"}
    head.requires_grad_(True)
    return head


def save_value_head(model: nn.Module, directory: str | os.PathLike) -> str | None:
    """Write the head's weights to `directory/value_head.safetensors` (atomically); None when there is no head."""
    head = get_value_head(model)
    if head is None:
        return None
    path = os.path.join(directory, FILENAME)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "tirl.value_head.1"}))
    return path


def load_value_head(model: nn.Module, directory: str | os.PathLike) -> ValueHead:
    """Attach a value head to `model` and load its weights from `directory/value_head.safetensors`."""
    path = os.path.join(directory, FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the run trained with iq_value='head' but its value head is missing")
    head = add_value_head(model)
    state = load_file(path, device=str(head.linear.weight.device))
    head.load_state_dict({k: v.to(head.linear.weight.dtype) for k, v in state.items()})
    return head


__all__ = ["ATTRIBUTE", "FILENAME", "ValueHead", "add_value_head", "get_value_head", "load_value_head",
           "save_value_head"]
