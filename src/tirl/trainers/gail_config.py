"""`GAILConfig`: adversarial imitation with a token discriminator, a policy-gradient step and an MLE term
(docs/method.md §2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .arguments import QVArguments, SamplingArguments, check_objective, default_to_cpu


@dataclass
class GAILConfig(SamplingArguments, QVArguments, SFTConfig):
    r"""
    Configuration for [`GAILTrainer`]: every `SFTConfig` option, how Q and V are read (`iq_chunk_size`, `iq_value`,
    `iq_gamma`, `iq_reduction`; see `IQLearnConfig`), the sampling options (`SamplingArguments`, vLLM included), and
    GAIL's expert-term, discriminator and policy-gradient options (maths in `tirl.losses.gail`):

        loss = mle_weight · L_MLE + gail_pg_coef · L_PG

    L_MLE is plain MLE on the expert rows (the paper's GAIL + MLE). L_PG is PPO-clip on the policy samples with the
    discriminator reward r_t = log D − log(1−D), discounted by `iq_gamma`; with `generate_every=1` it is exactly
    REINFORCE with a baseline. The IQLearn options (`iq_lambda` and its warm-up, `iq_stop_grad_next`, `entropy_coef`,
    `loss_type`, `iq_alpha`, `iq_policy_terms`) are not GAIL's; `iq_value` sets the form of the TD statistics logged
    on the expert rows.

    Parameters:
        mle_weight (`float`, defaults to `1.0`):
            Weight of the MLE (expert) term; the paper uses 1.
        gail_disc_model (`str` or `None`, defaults to `None`):
            Trunk of the discriminator: `None` = a frozen copy of the initial model's trunk (shared with the reference
            policy); otherwise a local model directory or a `tirl.models` name with the same vocabulary.
        gail_disc_num_layers (`int` or `None`, defaults to `None`):
            Use only the first N transformer layers of the trunk (cheaper); `None` = all.
        gail_disc_head_hidden (`int`, defaults to `256`):
            Hidden width of the discriminator's MLP head; 0 = a linear head.
        gail_disc_train_trunk (`bool`, defaults to `False`):
            Train the trunk with the head (on a separate copy); default: only the head learns.
        gail_disc_learning_rate (`float`, defaults to `1e-3`):
            AdamW learning rate of the discriminator (constant).
        gail_disc_steps (`int`, defaults to `1`):
            Discriminator updates per micro-batch, before the policy update.
        gail_pg_coef (`float`, defaults to `1.0`):
            Weight of the policy-gradient loss.
        gail_clip_eps (`float`, defaults to `0.2`):
            PPO clip range ε of the ratio π_θ/π_old (binds only when samples are reused, `generate_every` > 1).
        gail_kl_coef (`float`, defaults to `0.05`):
            β_KL: penalty on log π_old − log π_ref folded into the reward (π_ref = the initial policy). The paper tunes
            a KL strength; its value is not recovered. 0.05 is TRL's PPO default.
        gail_entropy_coef (`float`, defaults to `0.0`):
            β_H: entropy bonus, as the max-ent reward term −β_H·log π_old. The paper found 0.1 harmful for large models.
        gail_normalize_advantages (`bool`, defaults to `True`):
            Divide advantages by their standard deviation over the micro-batch's policy tokens.
    """

    mle_weight: float = field(default=1.0, metadata={"help": "Weight of the MLE (expert) term next to the GAIL policy "
                                                      "gradient (the paper uses 1)."})
    gail_disc_model: str | None = field(
        default=None,
        metadata={"help": "Discriminator trunk: unset = a frozen copy of the initial model's trunk; or a local model "
                  "directory / tirl model name with the same vocabulary."},
    )
    gail_disc_num_layers: int | None = field(
        default=None, metadata={"help": "Use only the first N transformer layers of the discriminator trunk (unset = all)."}
    )
    gail_disc_head_hidden: int = field(
        default=256, metadata={"help": "Hidden width of the discriminator's MLP head (0 = linear head)."}
    )
    gail_disc_train_trunk: bool = field(
        default=False, metadata={"help": "Train the discriminator trunk too (a separate copy); default: head only."}
    )
    gail_disc_learning_rate: float = field(default=1e-3, metadata={"help": "Discriminator AdamW learning rate."})
    gail_disc_steps: int = field(default=1, metadata={"help": "Discriminator updates per micro-batch."})
    gail_pg_coef: float = field(default=1.0, metadata={"help": "Weight of the policy-gradient (PPO-clip) loss."})
    gail_clip_eps: float = field(default=0.2, metadata={"help": "PPO clip range ε for the ratio π/π_old."})
    gail_kl_coef: float = field(
        default=0.05, metadata={"help": "β_KL: KL-to-initial-policy penalty folded into the reward (0 = off)."}
    )
    gail_entropy_coef: float = field(
        default=0.0, metadata={"help": "β_H: entropy bonus as the reward term −β_H·log π (0 = off)."}
    )
    gail_normalize_advantages: bool = field(
        default=True, metadata={"help": "Divide advantages by their std over the policy tokens of a micro-batch."}
    )

    def __post_init__(self):
        default_to_cpu(self)
        super().__post_init__()
        check_objective(self)
        self.check_head()
        self.check_sampling()
        for name in ("mle_weight", "gail_disc_learning_rate", "gail_pg_coef", "gail_clip_eps", "gail_kl_coef",
                     "gail_entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.gail_disc_steps < 1:
            raise ValueError(f"gail_disc_steps must be >= 1, got {self.gail_disc_steps}")
        if self.gail_disc_head_hidden < 0:
            raise ValueError(f"gail_disc_head_hidden must be >= 0, got {self.gail_disc_head_hidden}")
        if self.gail_disc_num_layers is not None and self.gail_disc_num_layers < 1:
            raise ValueError(f"gail_disc_num_layers must be >= 1, got {self.gail_disc_num_layers}")
        if self.num_policy_samples == 0:
            raise ValueError("GAIL learns from policy samples: num_policy_samples must be >= 1 (or unset)")
