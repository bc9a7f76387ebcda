"""`OnlineIQLearnConfig`: IQLearn with policy samples mixed into each batch (docs/method.md §2, online IQLearn)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from ..losses import DEFAULTS
from .arguments import POLICY_TERMS, QVArguments, SamplingArguments, TDArguments, check_objective, default_to_cpu


@dataclass
class OnlineIQLearnConfig(SamplingArguments, TDArguments, QVArguments, SFTConfig):
    r"""
    Configuration for [`OnlineIQLearnTrainer`]: every `SFTConfig` option, how Q and V are read (`iq_chunk_size`,
    `iq_value`, `iq_gamma`, `iq_reduction`), the TD term (`iq_lambda`, its warm-up, `iq_stop_grad_next`; see
    `IQLearnConfig`), the sampling options (`SamplingArguments`, vLLM included), and the online mixture

        L_on = −E_E[r_t] + E_mix[V(s_t) − γ·V(s_{t+1})] + λ·E_mix[r_t²],   E_mix = (1−α)·E_E + α·E_π

    (`tirl.losses.online_iq_loss_from_qv`). With `iq_alpha=0` nothing is sampled and the trainer is exactly offline
    IQLearn.

    Parameters:
        iq_alpha (`float`, defaults to `0.1`):
            α, the weight of policy samples in the mixture (the paper's mix-in ratio, 0.1). It also sets how many
            completions are sampled per micro-batch unless `num_policy_samples` is given: max(1, round(α × batch)).
        iq_policy_terms (`str`, defaults to `"both"`):
            Which terms see policy samples: `"both"` (docs/method.md's L_on), `"td"` (only the χ² regulariser
            λ·E_mix[r²]) or `"value"` (only the telescoped initial-state term; it vanishes in expectation for γ = 1
            with sequence sums, see the loss docstring).
    """

    iq_alpha: float = field(
        default=DEFAULTS.iq_alpha,
        metadata={"help": "α: weight of policy samples in the online mixture (1−α)·expert + α·policy; 0 = offline "
                  "IQLearn (nothing is sampled)."},
    )
    iq_policy_terms: str = field(
        default=DEFAULTS.iq_policy_terms,
        metadata={"help": "Terms that see policy samples: 'both' (value + TD terms, docs/method.md), 'td' (only the χ² "
                  "regulariser) or 'value' (only the telescoped initial-state term).", "choices": list(POLICY_TERMS)},
    )

    def __post_init__(self):
        default_to_cpu(self)
        super().__post_init__()
        check_objective(self)
        self.check_head()
        self.check_sampling()
