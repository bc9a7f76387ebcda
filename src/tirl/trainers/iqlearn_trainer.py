"""`IQLearnTrainer`: TRL's `SFTTrainer` with the offline IQLearn loss (TD-regularised MLE, docs/method.md §2).

Everything but the loss is TRL's: dataset formats (prompt/completion, messages), completion-only and assistant-only
masking, packing, PEFT via `peft_config`, accelerate multi-process, mixed precision, checkpoints, `report_to`. Swap
`SFTTrainer`/`SFTConfig` for `IQLearnTrainer`/`IQLearnConfig` and set `iq_lambda`.
"""

from __future__ import annotations

from .base import TirlTrainer
from .iqlearn_config import IQLearnConfig


class IQLearnTrainer(TirlTrainer):
    """Offline IQLearn: minimise E[−log π(a_t|s_t)] + λ·E[r_t²] over completion tokens. `iq_lambda=0` is SFT;
    `loss_type="dft"` and `"gem"` are the DFT and GEM baselines, `entropy_coef` entropy-regularised MLE.

    The loss is `TirlTrainer`'s offline loss with the run's `Objective`. Logs, besides TRL's `loss`, `entropy`,
    `mean_token_accuracy` and `num_tokens`: `mle_loss` (E[−log π], whatever the token loss), `td_loss` (E[r²], before
    λ), `mean_reward` (E[r_t]) and `mean_value` (E[V(s_t)], in the run's `iq_value` form), each with an `eval_`
    prefix in evaluation, and `iq_lambda` (the λ in force, during a warm-up).

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
