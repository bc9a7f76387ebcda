"""`IQLearnTrainer`: TRL's `SFTTrainer` with the offline IQLearn loss (TD-regularised MLE, METHOD.md §2).

Everything but the loss is TRL's: dataset formats (prompt/completion, messages), completion-only and assistant-only
masking, packing, PEFT via `peft_config`, accelerate multi-process, mixed precision, checkpoints, `report_to`. Swap
`SFTTrainer`/`SFTConfig` for `IQLearnTrainer`/`IQLearnConfig` and set `iq_lambda`.
"""

from __future__ import annotations

import torch
from accelerate.utils import is_peft_model
from trl import SFTTrainer

from ..losses import QV, LossOutput, iq_loss_from_qv, qv_from_logits
from ..qv_head import add_qv_head
from .iqlearn_config import IQLearnConfig


def eos_token_ids(tokenizer, model) -> list[int]:
    """Every token id that ends an episode: the tokenizer's EOS and the model's generation EOS ids."""
    ids = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


class IQLearnTrainer(SFTTrainer):
    """Offline IQLearn: minimise E[−log π(a_t|s_t)] + λ·E[r_t²] over completion tokens. `iq_lambda=0` is SFT.

    Logs, besides TRL's `loss`, `entropy`, `mean_token_accuracy` and `num_tokens`: `mle_loss` (the −log π term),
    `td_loss` (E[r²], before λ), `mean_reward` (E[r_t]) and `mean_value` (E[V(s_t)]), each with an `eval_` prefix in
    evaluation.
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

    def __init__(self, model, args: IQLearnConfig | None = None, *pos, **kwargs):
        if args is None:
            args = IQLearnConfig(output_dir="tirl-iqlearn")
        if not isinstance(args, IQLearnConfig):
            raise TypeError(f"IQLearnTrainer needs an IQLearnConfig, got {type(args).__name__}")
        super().__init__(model, args, *pos, **kwargs)
        if self.aux_loss_enabled:
            raise NotImplementedError(
                "MoE router auxiliary losses are not supported by IQLearnTrainer yet; set router_aux_loss_coef=0.0."
            )
        if self.compute_loss_func is not None:
            raise ValueError("IQLearnTrainer computes its own loss; `compute_loss_func` cannot be combined with it.")
        if args.loss_type != "nll":
            raise ValueError(f"IQLearnTrainer supports loss_type='nll' only (got {args.loss_type!r}).")
        if args.label_smoothing_factor > 0:
            raise ValueError("label_smoothing_factor is not supported by IQLearnTrainer: it changes Q, not only π.")
        base = self.model.get_base_model() if is_peft_model(self.model) else self.model
        if args.iq_chunk_size > 0:
            add_qv_head(base, chunk_size=args.iq_chunk_size)
        self.eos_token_ids = eos_token_ids(self.processing_class, base)

    # ----------------------------------------------------------------------------------------------------------------

    def compute_qv(self, model, inputs) -> QV:
        """Per-token Q and V of a collated batch, chunked or from full logits according to `iq_chunk_size`."""
        if self.args.iq_chunk_size > 0:
            return model(**inputs, qv_head=True)
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        return qv_from_logits(logits, inputs["labels"])

    def iq_loss(self, qv: QV, num_items_in_batch=None) -> LossOutput:
        a = self.args
        return iq_loss_from_qv(
            qv,
            lam=a.iq_lambda,
            gamma=a.iq_gamma,
            eos_token_id=self.eos_token_ids or None,
            num_items_in_batch=num_items_in_batch,
            reduction=a.iq_reduction,
            stop_grad_next=a.iq_stop_grad_next,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        qv = self.compute_qv(model, inputs)
        out = self.iq_loss(qv, num_items_in_batch)
        loss = out.loss
        # like TRL/Trainer: `num_items_in_batch` counts every rank's tokens while DDP averages gradients over ranks
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self._tp_size)
        self._record_metrics(mode, qv, out, inputs)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    def _record_metrics(self, mode: str, qv: QV, out: LossOutput, inputs) -> None:
        gather = self.accelerator.gather_for_metrics
        sums = {k: gather(v.reshape(1)).sum() for k, v in out.sums.items()}
        n = sums["tokens"].clamp(min=1)
        n_td = sums["td_tokens"].clamp(min=1)
        entropy = gather(qv.entropy.sum().reshape(1)).sum() if qv.entropy is not None else torch.tensor(0.0)
        top1 = gather(qv.is_top1.sum().reshape(1)).sum() if qv.is_top1 is not None else torch.tensor(0)
        m = self._metrics[mode]
        m["mle_loss"].append((sums["nll"] / n).item())
        m["td_loss"].append((sums["td"] / n).item())
        m["mean_reward"].append((sums["reward"] / n_td).item())
        m["mean_value"].append((sums["value"] / n).item())
        m["entropy"].append((entropy / n).item())
        m["mean_token_accuracy"].append((top1 / n).item())
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += gather(local.reshape(1)).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
