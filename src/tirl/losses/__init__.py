"""The maths of `tirl` (METHOD.md §1–2) as pure functions on per-token tensors: no trainer state, no environment.

    mdp           the token MDP: Q and V per token (`QV`), the label shift, EOS and truncation, implicit rewards,
                  and `masked_mean`, the one reduction of every loss
    chunked_head  Q and V from hidden states and the LM head in row chunks (the same results as full logits)
    single_pass_head  offline IQLearn through the LM head in one pass, the gradient formed in forward (the cost of a
                  fused cross-entropy); `chunked_iq_loss` and the logits form are its oracles
    iq            offline IQLearn (TD-regularised MLE), online IQLearn, value parameterisations, the entropy term
    gail          GAIL: discriminator loss and reward, returns, advantages, PPO-clip, the KL estimate

Every loss has a logits form that is the oracle of its chunked form. The names below are the package's API;
`from tirl import losses as L` gives all of them.
"""

from . import gail
from .chunked_head import MAX_CHUNK_ELEMENTS, ChunkedQVFunction, qv_from_hidden
from .iq import (
    POLICY_TERMS,
    VALUE_FORMS,
    LossOutput,
    OnlineLossOutput,
    PolicyTerms,
    ValueForm,
    chunked_iq_loss,
    iq_loss,
    iq_loss_from_qv,
    mle_loss,
    online_iq_loss_from_qv,
    with_reference,
    with_value,
)
from .mdp import (
    IGNORE_INDEX,
    QV,
    Reduction,
    TokenRewards,
    eos_positions,
    masked_mean,
    next_values,
    qv_from_logits,
    restrict_rows,
    shift_labels,
    token_rewards,
)
from .single_pass_head import SinglePassLossOutput, single_pass_iq_loss

__all__ = [
    "IGNORE_INDEX",
    "MAX_CHUNK_ELEMENTS",
    "POLICY_TERMS",
    "QV",
    "VALUE_FORMS",
    "ChunkedQVFunction",
    "LossOutput",
    "OnlineLossOutput",
    "PolicyTerms",
    "Reduction",
    "SinglePassLossOutput",
    "TokenRewards",
    "ValueForm",
    "chunked_iq_loss",
    "eos_positions",
    "gail",
    "iq_loss",
    "iq_loss_from_qv",
    "masked_mean",
    "mle_loss",
    "next_values",
    "online_iq_loss_from_qv",
    "qv_from_hidden",
    "qv_from_logits",
    "restrict_rows",
    "shift_labels",
    "single_pass_iq_loss",
    "token_rewards",
    "with_reference",
    "with_value",
]
