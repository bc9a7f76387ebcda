"""GAIL's token discriminator: a small classification head on the hidden states of a causal LM trunk.

D(s_t, a_t) = σ(head(h_{t+1})), where h_{t+1} is the trunk's final hidden state at the input position of token a_t:
a causal trunk has read the prompt, y_<t and a_t there and nothing later, so h_{t+1} is a summary of the pair
(s_t, a_t) = s_{t+1}. Outputs use the shifted layout of `tirl.losses` ([B, T − 1], position t scores action
a_t = labels[:, t + 1]), so they line up with Q, V and log π token for token.

By default the trunk is a frozen copy of the initial model's trunk (shared with the frozen reference policy,
`tirl.trainers.reference_model`, so it costs no extra memory) and only the head learns: an MLP (hidden → `head_hidden` → 1) whose last layer starts at 0, so
D = ½ and every reward is 0 before the first update. Options: use only the first `num_layers` transformer layers
(cheaper), train the trunk as well (a separate copy), or a trunk from another causal LM with the same vocabulary.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def truncated_trunk(trunk: nn.Module, num_layers: int) -> nn.Module:
    """A view of `trunk` that runs only its first `num_layers` transformer layers (parameters shared, not copied)."""
    layers = getattr(trunk, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"cannot truncate a {type(trunk).__name__} trunk: it has no `layers` list of transformer blocks; "
            "leave gail_disc_num_layers unset"
        )
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"gail_disc_num_layers must be between 1 and {len(layers)} for this model, got {num_layers}")
    view = copy.copy(trunk)
    view._modules = dict(trunk._modules)  # a new module table, so the original trunk keeps all its layers
    view._modules["layers"] = nn.ModuleList(list(layers)[:num_layers])
    view.config = copy.deepcopy(trunk.config)
    view.config.num_hidden_layers = num_layers  # HF decoders iterate `layers[: config.num_hidden_layers]`
    return view


class TokenDiscriminator(nn.Module):
    """D(s_t, a_t) = σ(x_t), x_t = head(h_{t+1}) on a causal LM trunk (see the module docstring)."""

    def __init__(self, trunk: nn.Module, hidden_size: int, head_hidden: int = 256, train_trunk: bool = False):
        super().__init__()
        self.trunk = trunk
        self.train_trunk = train_trunk
        for p in trunk.parameters():
            p.requires_grad_(train_trunk)
        if head_hidden > 0:
            self.head = nn.Sequential(nn.Linear(hidden_size, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))
        else:
            self.head = nn.Sequential(nn.Linear(hidden_size, 1))
        # the last layer starts at zero: D = ½ and r = 0 everywhere until the first update
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def train(self, mode: bool = True) -> TokenDiscriminator:
        # a frozen trunk stays in eval mode (no dropout): it may be the reference policy's own trunk
        super().train(mode)
        if not self.train_trunk:
            self.trunk.eval()
        return self

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The trunk's final hidden states [B, T, H] (no gradient unless the trunk is trained)."""
        with torch.set_grad_enabled(self.train_trunk and torch.is_grad_enabled()):
            out = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False)
        return out.last_hidden_state

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """x_t for every action position from trunk states: [B, T, H] -> [B, T − 1] (float32)."""
        h = hidden[:, 1:]
        w = self.head[0].weight
        return self.head(h.to(w.dtype)).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits_from_hidden(self.hidden_states(input_ids, attention_mask, position_ids))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters that training changes (the head, and the trunk when it is trained): what a checkpoint keeps."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
