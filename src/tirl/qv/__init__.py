"""Per-token Q and V of a model, in the value parameterisation a run trains with (METHOD.md §1).

    head         the chunked head on a model: `model(..., qv_head=True)` or `model_qv`, without full logits, and the
                 offline loss through the single-pass head (`model(..., iq_loss={...})`); decides where the chunked
                 maths of `tirl.losses` runs and gathers sharded head parameters
    value_head   V = v_ψ(h), the zero-initialised scalar head of `iq_value="head"`, saved beside the model
    reference    LSE of the starting model per token, for `iq_value="reference"`: computed once, cached, batched

Between the maths (`tirl.losses`) and the trainers; reward extraction (`tirl.rewards`) reads rewards through it too.
"""

from .head import add_qv_head, compile_chunks, has_qv_head, head_iq_loss, head_qv, model_qv, with_head_value
from .value_head import ValueHead, add_value_head, get_value_head, load_value_head, save_value_head

__all__ = ["ValueHead", "add_qv_head", "add_value_head", "compile_chunks", "get_value_head", "has_qv_head",
           "head_iq_loss", "head_qv", "load_value_head", "model_qv", "save_value_head", "with_head_value"]
