"""Per-token Q and V of a model, in the value form a run trains with (docs/method.md §1).

    head         the chunked head on a model: `model(..., tirl_head=HeadCall(...))` or `model_qv`, without full
                 logits: the `QV` (two-pass head), or with `FusedLossCall` the loss through a fused head
                 (single-pass IQ, GEM); where the chunked maths runs; sharded head parameters gathered
    inputs       what each value form reads besides the logits (`ValueInput`, one class per input): how a run
                 attaches it, carries it in a batch, computes, saves and loads it
    value_head   V = v_ψ(h), the zero-initialised scalar head of `iq_value="head"`, saved beside the model
    reference    LSE of the starting model per token, for `iq_value="reference"`: computed once, cached, batched

Between the maths (`tirl.losses`, where `ValueForm` holds each form's maths) and the trainers; reward extraction
(`tirl.rewards`) reads rewards through it too.
"""

from .head import (
    FusedLossCall,
    HeadCall,
    add_qv_head,
    compile_chunks,
    fused_loss,
    has_qv_head,
    head_qv,
    model_qv,
    value_input,
)
from .inputs import VALUE_COLUMNS, VALUE_INPUTS, ValueInput, value_input_of
from .value_head import ValueHead, add_value_head, get_value_head, load_value_head, save_value_head

__all__ = ["VALUE_COLUMNS", "VALUE_INPUTS", "FusedLossCall", "HeadCall", "ValueHead", "ValueInput", "add_qv_head",
           "add_value_head", "compile_chunks", "fused_loss", "get_value_head", "has_qv_head", "head_qv",
           "load_value_head", "model_qv", "save_value_head", "value_input", "value_input_of"]
