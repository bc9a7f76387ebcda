"""`IQLearnConfig`: TRL's `SFTConfig` plus the offline IQLearn options (docs/method.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from .arguments import QVArguments, TDArguments, TokenLossArguments, check_objective, default_to_cpu


@dataclass
class IQLearnConfig(TokenLossArguments, TDArguments, QVArguments, SFTConfig):
    r"""
    Configuration for [`IQLearnTrainer`]: every `SFTConfig` / `TrainingArguments` option, plus the offline IQLearn
    objective  L = E[−log π(a_t|s_t)] + λ·E[r_t²],  r_t = Q(s_t,a_t) − γ·V(s_{t+1})  (docs/method.md §2), and the
    token losses users compare it with (entropy-regularised MLE, DFT, GEM).

    With `iq_lambda=0` the trainer computes exactly TRL's SFT loss, and with `loss_type="dft"` TRL's DFT loss.
    Differences from `SFTConfig`'s defaults: on a machine without a GPU, `use_cpu` is switched on (TRL's bf16 default
    otherwise refuses to start on CPU), and an unset `bf16` is on only where the CPU computes bf16 natively
    (`tirl.hardware`); `loss_type` also takes `"gem"`.

    Parameters:
        iq_lambda (`float`, defaults to `0.01`):
            λ, the weight of the TD / χ² term E[r²]. 0 is plain MLE. The paper sweeps it and gives no default; the
            default follows the quality benchmark (docs/benchmarks.md): larger λ cost held-out likelihood and
            accuracy at 135M in every value form screened.
        iq_lambda_warmup_steps (`int`, defaults to `0`):
            Ramp λ linearly from 0 (plain MLE) to `iq_lambda` over this many optimizer steps. 0: full λ from the
            first step. Evaluation always uses the full λ.
        iq_gamma (`float`, defaults to `tirl.losses.DEFAULTS.iq_gamma`):
            γ, the discount in r_t = Q(s_t,a_t) − γ·V(s_{t+1}). The paper does not state its value (docs/method.md).
        iq_value (`str`, defaults to `"reference"`):
            How V(s) is parameterised (docs/method.md §1; `tirl.losses.ValueForm`; the policy is softmax(logits) in
            every form). `"logits"`: V = logsumexp(logits), Q = logits. `"reference"`: V = LSE_θ − LSE_θ0, relative to
            the starting model (computed once over the training rows before training and cached in the run directory;
            no second model is held; online trainers use their frozen reference for their samples), so V ≡ 0 and
            r_t = log π_θ0 at the start instead of r_t ≈ 30. `"head"`: V = v_ψ(h), a zero-initialised linear head on
            the final hidden state, trained with the model and saved beside it (`value_head.safetensors`). The
            default follows the quality benchmark (docs/benchmarks.md).
        iq_chunk_size (`int`, defaults to `1024`):
            Rows of hidden states pushed through the LM head at once by the chunked loss, which never builds the
            [batch, seq, vocab] logits. 0 uses the model's full logits instead (the simple reference path).
        iq_head (`str`, defaults to `"auto"`):
            How the chunked loss goes through the LM head. `"auto"`: in training, one pass (`tirl.losses.
            single_pass_head`, and `tirl.losses.gem` for GEM): the gradient of the logits is formed while each
            chunk's logits are in memory, as a fused cross-entropy does; the same loss and gradients in every value
            form, reduction and λ. The two-pass head (Q and V in forward, the logits recomputed in backward) serves
            evaluation, DFT and fp16 training (a gradient formed before the loss scale would flush to zero in
            float16). `"two_pass"`: always the two-pass head (GEM keeps its one-pass head).
        iq_reduction (`str`, defaults to `"token"`):
            `"token"`: every term is a sum over completion tokens divided by the number of completion tokens in the
            accumulated batch (TRL's SFT normalisation). `"sequence"`: each sequence's token mean, averaged.
        iq_stop_grad_next (`bool`, defaults to `False`):
            Stop the gradient through V(s_{t+1}) in the TD term (a target-network-like ablation; the paper's
            objective differentiates through it).
        loss_type (`str`, defaults to `"nll"`):
            The token loss. `"nll"`: −log π (MLE, plus λ·E[r²]). `"dft"`: −sg(π(a_t|s_t))·log π(a_t|s_t) (DFT, as
            TRL's `loss_type="dft"`). `"gem"`: GEM (`tirl.losses.gem`). DFT and GEM take `iq_lambda=0` and
            `entropy_coef=0`.
        gem_beta (`float`, defaults to `0.7`):
            GEM's β: the target q = softmax(logits/β) of its gradient. β → 1 with `gem_h="linear"` is cross-entropy.
        gem_h (`str`, defaults to `"logsigmoid"`):
            GEM's weights: `"linear"` (w = 1) or `"logsigmoid"` (w_v = sigmoid(0.01·(z_v − z_y))), the default of
            the authors' scripts.
        entropy_coef (`float`, defaults to `0.0`):
            β of entropy-regularised MLE, the paper's other baseline: subtracts β·E[H(π(·|s_t))] over the expert
            completion tokens. Combine with `iq_lambda=0` (`--method mle`) for the baseline itself.
    """

    def __post_init__(self):
        default_to_cpu(self)
        super().__post_init__()
        check_objective(self)
        self.check_head()
        if self.loss_type == "gem" and self.fp16 and self.iq_chunk_size > 0:
            raise ValueError("loss_type='gem' forms its gradient in the chunked head's forward pass, before fp16's loss "
                             "scale (it would flush to zero): use bf16, or iq_chunk_size=0 with fp16")
