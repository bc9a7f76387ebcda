"""`IQLearnConfig`: TRL's `SFTConfig` plus the offline IQLearn options (METHOD.md §2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .arguments import QVArguments, TDArguments, default_to_cpu


@dataclass
class IQLearnConfig(TDArguments, QVArguments, SFTConfig):
    r"""
    Configuration for [`IQLearnTrainer`]: every `SFTConfig` / `TrainingArguments` option, plus the offline IQLearn
    objective  L = E[−log π(a_t|s_t)] + λ·E[r_t²],  r_t = Q(s_t,a_t) − γ·V(s_{t+1})  (METHOD.md §2).

    With `iq_lambda=0` the trainer computes exactly TRL's SFT loss. Differences from `SFTConfig`'s defaults: on a
    machine without a GPU, `use_cpu` is switched on (TRL's bf16 default otherwise refuses to start on CPU).

    Parameters:
        iq_lambda (`float`, defaults to `0.01`):
            λ, the weight of the TD / χ² term E[r²]. 0 is plain MLE. The paper sweeps it and gives no default;
            METHOD.md suggests 0.1 (unconfirmed). Raw logits make r of order 10 at the start (E[r²] ≈ 80 for
            SmolLM2), so the TD term starts large: with λ = 0.1 or more, 40 steps on GSM8k flattened SmolLM2's
            sampling distribution (entropy of sampled tokens 4.5 nats against 1.8 after MLE; samples no longer
            fluent; benchmarks/quality.py), while λ = 0.01 kept it and was also the best IQLearn setting on the
            known-expert grammar. With `iq_value="reference"` r starts at log π_θ0 (E[r²] ≈ 4), yet λ = 0.1 still
            cost accuracy on the arithmetic screen (held-out −log π 0.120 against 0.079 at λ = 0.01, seed 0), so
            0.01 stays the default for every form. `iq_lambda_warmup_steps` stays 0: its screen run (λ = 1) did not finish this round.
        iq_gamma (`float`, defaults to `0.99`):
            γ, the discount in r_t = Q(s_t,a_t) − γ·V(s_{t+1}). Unconfirmed default (METHOD.md).
        iq_chunk_size (`int`, defaults to `1024`):
            Rows of hidden states pushed through the LM head at once by the chunked loss, which never builds the
            [batch, seq, vocab] logits. 0 uses the model's full logits instead (the simple reference path).
        iq_head (`str`, defaults to `"auto"`):
            How the chunked loss goes through the LM head. `"auto"`: in training, one pass (`tirl.losses.
            single_pass_head`): the gradient of the logits is formed while each chunk's logits are in memory, as a
            fused cross-entropy does, so the IQ loss costs one head matmul less than the two-pass head; the same
            loss and gradients in every value form, reduction and λ. The two-pass head (Q and V in forward, the
            logits recomputed in backward) serves evaluation and fp16 training (the gradient, formed before the
            loss scale, would flush to zero in float16). `"two_pass"`: always the two-pass head.
        iq_reduction (`str`, defaults to `"token"`):
            `"token"`: both terms are sums over completion tokens divided by the number of completion tokens in the
            accumulated batch (TRL's SFT normalisation). `"sequence"`: each sequence's token mean, averaged.
        iq_stop_grad_next (`bool`, defaults to `False`):
            Stop the gradient through V(s_{t+1}) in the TD term (a target-network-like ablation; the paper's
            objective differentiates through it).
        iq_value (`str`, defaults to `"reference"`):
            How V(s) is parameterised (METHOD.md §1; the policy is softmax(logits) in every form). `"logits"`:
            V = logsumexp(logits), Q = logits. `"reference"`: V = LSE_θ − LSE_θ0, relative to the starting model
            (computed once over the dataset before training and cached in the run directory; no second model is
            held; online trainers use their frozen reference for their samples), so V ≡ 0 and r_t = log π_θ0 at the
            start instead of r_t ≈ 30. `"head"`: V = v_ψ(h), a zero-initialised linear head on the final hidden
            state, trained with the model and saved beside it (`value_head.safetensors`).
            Why `"reference"` (benchmarks/quality.py, cpu preset, README "Does IQLearn beat MLE?"): on 64 arithmetic
            rows × 5 epochs it had the lowest held-out −log π of the offline forms (0.070 ± 0.006 against MLE's
            0.083 ± 0.007, paired Δ −0.013 ± 0.003, 4 seeds) and the best accuracy along MLE's temperature frontier
            at T = 0.5–1 (+5 to +7 points at equal Self-BLEU, ± 3), with no loss in greedy accuracy beyond the
            s.e.m.; `"logits"` was between the two and `"head"` trained like MLE (the head absorbs the TD term).
            Its rewards ranked XSum samples no better than the model's log-likelihood.
            The cost is one forward pass of the starting model over the training set before the first step.
        iq_lambda_warmup_steps (`int`, defaults to `0`):
            Ramp λ linearly from 0 (plain MLE) to `iq_lambda` over this many optimizer steps. 0: full λ from the
            first step. Evaluation always uses the full λ.
        entropy_coef (`float`, defaults to `0.0`):
            β of entropy-regularised MLE, the paper's other baseline: subtracts β·E[H(π(·|s_t))] over the expert
            completion tokens. Combine with `iq_lambda=0` (`--method mle`) for the baseline itself.
    """

    iq_lambda_warmup_steps: int = field(
        default=0,
        metadata={"help": "Ramp λ linearly from 0 (MLE) to iq_lambda over this many steps (0 = no warm-up)."},
    )
    entropy_coef: float = field(
        default=0.0,
        metadata={"help": "β of entropy-regularised MLE: subtract β·E[H(π(·|s_t))] on expert tokens (0 = off)."},
    )

    def __post_init__(self):
        default_to_cpu(self)
        super().__post_init__()
        self.check_td()
        self.check_qv()
        if self.iq_lambda_warmup_steps < 0:
            raise ValueError(f"iq_lambda_warmup_steps must be >= 0, got {self.iq_lambda_warmup_steps}")
        if self.entropy_coef < 0:
            raise ValueError(f"entropy_coef must be >= 0, got {self.entropy_coef}")
