"""What each value form reads besides the logits (`ValueForm.input`), and how a run provides it: attached to the
model, carried by the batch, computed in the forward, saved and loaded. The one place that knows the inputs; a new
one is one class here, registered in `VALUE_INPUTS`. The maths of each form stays in `tirl.losses.ValueForm`.

    ValueInput      the base class, and the logits form's: nothing to read
    ReferenceLSE    LSE_θ0 per token, of the starting model θ0 (`iq_value="reference"`): a batch column, computed by
                    the starting model before the forward (once per dataset row before training, `tirl.qv.reference`;
                    when the online trainers' samples are drawn; beside a checkpoint whose rewards are read)
    ValueHeadInput  v_ψ(h_t) of the value head (`iq_value="head"`): attached to the model, computed from its final
                    hidden states, saved beside it as value_head.safetensors (`tirl.qv.value_head`)

`value_input_of(form)` gives the one that a form reads.
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from torch import nn

from ..losses import QV, ValueForm, value_form
from . import reference
from .value_head import add_value_head, get_value_head, load_value_head, save_value_head


class ValueInput:
    """What a value form reads besides the logits, as the methods below say; the base class reads nothing."""

    key: ClassVar[str | None] = None  # the `ValueForm.input` it serves
    column: ClassVar[str | None] = None  # the batch column it arrives in, when computed before the forward
    reads_hidden: ClassVar[bool] = False  # computed in the forward from the final hidden states
    reads_starting_model: ClassVar[bool] = False  # computed by the starting model θ0 (`of_starting_model`)

    def attach(self, model: nn.Module) -> None:
        """Add what the input needs to a model about to be trained (PEFT-wrapped or not)."""

    def take(self, batch: dict) -> torch.Tensor | None:
        """The input's column of a collated batch [B, T − 1], removed from `batch`; None when it has no column."""
        return None

    def compute(self, model: nn.Module, hidden: torch.Tensor | None, column: torch.Tensor | None) -> torch.Tensor | None:
        """The input x [B, T − 1] in a forward of `model`: from the batch's `column` (`take`), or from the final
        hidden states `hidden` [B, T, D] (given when `reads_hidden`)."""
        return None

    def of_starting_model(self, qv: QV) -> torch.Tensor:
        """The column's values [B, T − 1] for rows the dataset does not hold (samples, rewards), from the starting
        model's logits-form `qv` of those rows (`tirl.qv.model_qv`), when `reads_starting_model`."""
        raise NotImplementedError(f"{type(self).__name__} is not computed by the starting model")

    def save(self, model: nn.Module, directory: str | os.PathLike) -> None:
        """Write what the input keeps beside the model's weights into `directory`."""

    def load(self, model: nn.Module, directory: str | os.PathLike) -> None:
        """Restore onto `model` what `save` wrote into `directory`."""


class ReferenceLSE(ValueInput):
    """LSE_θ0(s_t), the starting model's logsumexp per token, as data (no gradient)."""

    key = "reference_lse"
    column = reference.COLUMN
    reads_starting_model = True

    def take(self, batch: dict) -> torch.Tensor:
        values = batch.pop(self.column, None)
        if values is None:
            raise ValueError(f"iq_value='reference' needs the batch's '{self.column}' (the starting model's "
                             "logsumexp); it is missing from this batch")
        return values[:, :-1]  # the column is laid out like input_ids; position t belongs to the logits of t + 1

    def compute(self, model: nn.Module, hidden: torch.Tensor | None, column: torch.Tensor | None) -> torch.Tensor:
        if column is None:
            raise ValueError("iq_value='reference' needs the batch's LSE of the starting model (tirl.qv.reference)")
        return column

    def of_starting_model(self, qv: QV) -> torch.Tensor:
        return qv.lse.detach() * qv.mask


class ValueHeadInput(ValueInput):
    """v_ψ(h_t), the value head on the final hidden state, trained with the model."""

    key = "value_head"
    reads_hidden = True

    def attach(self, model: nn.Module) -> None:
        add_value_head(model)

    def compute(self, model: nn.Module, hidden: torch.Tensor | None, column: torch.Tensor | None) -> torch.Tensor:
        head = get_value_head(model)
        if head is None:
            raise ValueError("iq_value='head' needs the model's value head (tirl.qv.value_head.add_value_head)")
        return head(hidden[:, :-1])

    def save(self, model: nn.Module, directory: str | os.PathLike) -> None:
        save_value_head(model, directory)

    def load(self, model: nn.Module, directory: str | os.PathLike) -> None:
        load_value_head(model, directory)


VALUE_INPUTS: dict[str | None, ValueInput] = {kind.key: kind for kind in (ValueInput(), ReferenceLSE(), ValueHeadInput())}
# the per-position float columns a batch may carry (the online trainers' policy rows fill them too)
VALUE_COLUMNS: tuple[str, ...] = tuple(kind.column for kind in VALUE_INPUTS.values() if kind.column is not None)


def value_input_of(form: str | ValueForm) -> ValueInput:
    """The `ValueInput` that the value form `form` (or its name) reads."""
    return VALUE_INPUTS[value_form(form).input]


__all__ = ["VALUE_COLUMNS", "VALUE_INPUTS", "ReferenceLSE", "ValueHeadInput", "ValueInput", "value_input_of"]
