"""`IQLearnTrainer`: TRL's `SFTTrainer` with the offline IQLearn loss (TD-regularised MLE, METHOD.md §2).

Everything but the loss is TRL's: dataset formats (prompt/completion, messages), completion-only and assistant-only
masking, packing, PEFT via `peft_config`, accelerate multi-process, mixed precision, checkpoints, `report_to`. Swap
`SFTTrainer`/`SFTConfig` for `IQLearnTrainer`/`IQLearnConfig` and set `iq_lambda`.
"""

from __future__ import annotations

from .base import TirlTrainer
from .iqlearn_config import IQLearnConfig


class IQLearnTrainer(TirlTrainer):
    """Offline IQLearn: minimise E[−log π(a_t|s_t)] + λ·E[r_t²] over completion tokens. `iq_lambda=0` is SFT.

    Logs, besides TRL's `loss`, `entropy`, `mean_token_accuracy` and `num_tokens`: `mle_loss` (the −log π term),
    `td_loss` (E[r²], before λ), `mean_reward` (E[r_t]) and `mean_value` (E[V(s_t)], in the run's `iq_value` form),
    each with an `eval_` prefix in evaluation, and `iq_lambda` (the λ in force, during a warm-up).

    `iq_value="head"` attaches a zero-initialised value head to the model (`tirl.qv.value_head`), saved as
    `value_head.safetensors` with the model and in checkpoints; `iq_value="reference"` computes the starting model's
    logsumexp over the train and eval datasets before training (`tirl.qv.reference`, cached in the run directory).
    """

    _tag_names = ["trl", "sft", "tirl", "iqlearn"]
    _name = "IQLearn"
    _paper = {
        "title": "Imitating Language via Scalable Inverse Reinforcement Learning",
        "id": "2409.01369",
        "citation": (
            "@inproceedings{wulfmeier2024imitating,\n"
            "  title={Imitating Language via Scalable Inverse Reinforcement Learning},\n"
            "  author={Wulfmeier, Markus and others},\n"
            "  booktitle={Advances in Neural Information Processing Systems},\n"
            "  year={2024}\n}"
        ),
    }
    _config_class = IQLearnConfig
    _default_output_dir = "tirl-iqlearn"

    def current_lambda(self) -> float:
        """λ in force: ramped linearly over `iq_lambda_warmup_steps` during training; the full λ in evaluation."""
        a = self.args
        if a.iq_lambda_warmup_steps <= 0 or not self.model.training:
            return a.iq_lambda
        return a.iq_lambda * min(1.0, self.state.global_step / a.iq_lambda_warmup_steps)

    def needs_entropy_grad(self) -> bool:
        return self.args.entropy_coef > 0

    def objective(self) -> dict:
        return {**super().objective(), "lam": self.current_lambda(), "stop_grad_next": self.args.iq_stop_grad_next,
                "entropy_coef": self.args.entropy_coef}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training and self.args.iq_lambda_warmup_steps > 0:
            self.metrics.add("train", iq_lambda=self.current_lambda())
        return result
