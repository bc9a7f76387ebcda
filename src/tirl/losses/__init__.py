"""The maths of `tirl` (docs/method.md §1–2) as pure functions on per-token tensors: no trainer state, no environment.

    mdp           the token MDP: Q and V per token (`QV`), the label shift, EOS and truncation, implicit rewards,
                  and `masked_mean`, the one reduction of every loss
    objective     `Objective` (every setting of a loss, checked once), `ValueForm` (the value parameterisations) and
                  `Counts` (the global counts a loss divides by)
    chunked_head  Q and V from hidden states and the LM head in row chunks (the same results as full logits)
    iq            offline IQLearn (TD-regularised MLE, DFT's token weighting, the entropy term) and online IQLearn
    single_pass_head  offline IQLearn through the LM head in one pass, the gradient formed in forward (the cost of a
                  fused cross-entropy); `chunked_iq_loss` and the logits form are its oracles
    gem           GEM, the diversity-preserving SFT baseline, from full logits and in one pass through the head
    gail          GAIL: discriminator loss and reward, returns, advantages, PPO-clip, the KL estimate

Every loss takes `(…, objective, counts, value_input)` and has a full-logits form that is the oracle of its chunked
form (Liger's rule: the same signature). The names below are the package's API; `from tirl import losses as L`
gives all of them.
"""

from . import gail
from .chunked_head import MAX_CHUNK_ELEMENTS, ChunkedQVFunction, qv_from_hidden
from .gem import chunked_gem_loss, gem_loss
from .iq import (
    NO_COUNTS,
    LossOutput,
    OnlineLossOutput,
    PolicyTerms,
    chunked_iq_loss,
    iq_loss,
    iq_loss_from_qv,
    online_iq_loss_from_qv,
    statistics_from_qv,
    td_residuals,
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
from .objective import (
    DEFAULTS,
    GEM_H,
    HEAD,
    LOGITS,
    LOSS_TYPES,
    MLE,
    POLICY_TERMS,
    REDUCTIONS,
    REFERENCE,
    VALUE_FORMS,
    Counts,
    Objective,
    ValueForm,
    value_form,
)
from .single_pass_head import single_pass_iq_loss

__all__ = [
    "DEFAULTS",
    "GEM_H",
    "HEAD",
    "IGNORE_INDEX",
    "LOGITS",
    "LOSS_TYPES",
    "MAX_CHUNK_ELEMENTS",
    "MLE",
    "NO_COUNTS",
    "POLICY_TERMS",
    "QV",
    "REDUCTIONS",
    "REFERENCE",
    "VALUE_FORMS",
    "ChunkedQVFunction",
    "Counts",
    "LossOutput",
    "Objective",
    "OnlineLossOutput",
    "PolicyTerms",
    "Reduction",
    "TokenRewards",
    "ValueForm",
    "chunked_gem_loss",
    "chunked_iq_loss",
    "eos_positions",
    "gail",
    "gem_loss",
    "iq_loss",
    "iq_loss_from_qv",
    "masked_mean",
    "next_values",
    "online_iq_loss_from_qv",
    "qv_from_hidden",
    "qv_from_logits",
    "restrict_rows",
    "shift_labels",
    "single_pass_iq_loss",
    "statistics_from_qv",
    "td_residuals",
    "token_rewards",
    "value_form",
]
