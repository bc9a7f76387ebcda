"""How `tirl` calls `model.generate`: every option that changes the sampled distribution is set here, none inherited.

In transformers 5.x, `generate(generation_config=c)` fills every option that `c` leaves unset (None) from the model's
own `generation_config` (a checkpoint's `generation_config.json`: `repetition_penalty=1.05`, `top_k=20`, `min_p=0.1`,
...), and what is still unset from library defaults (`top_k=50`). Policy samples drawn that way come from another
distribution than π, which biases online IQLearn and GAIL (their losses treat the samples as π's), and an evaluation
score would not say what it sampled from. So the samplers of training (`sample_completions`, for the online
trainers) and of evaluation (`tirl.evaluation.sampling`) both

- build their config with `generation_config`, which sets every option with a neutral value (`NEUTRAL`) to it and
  the sampler's own options (temperature, top-k, top-p) to what was asked, and
- call `generate` (this module's), which makes that same config the model's defaults for the call, so options whose
  only neutral value is "unset" (forced BOS/EOS, bad words, sequence bias, suppressed tokens, min-p, top-h,
  stop strings, watermarking, DoLa, assisted decoding, ...) cannot be filled in from the model either.

`sampler_settings(config)` lists every such option with the value used, for run records (`eval_config.json`).

This module is the one generation stack of training and evaluation: prompts (token ids) are left-padded by
`left_pad`, decoded by `generate` in eval mode (`eval_mode`), and cut after their first EOS by `truncate_at_eos`.
`sample_completions` is that whole path for the online trainers; `tirl.evaluation.sampling` adds what evaluation
records (prompt rendering, seeds, per-token entropy, text).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # transformers is imported when a config is built, not when this module is
    from transformers import GenerationConfig

# Options of `GenerationConfig` that change which tokens can be drawn or how likely they are, at values that change
# nothing (transformers 5.24 `GenerationMixin._get_logits_processor`, `get_generation_mode`, stopping criteria).
# None means "no processor"; such options are protected by `generation_defaults`, not by their value.
NEUTRAL: dict[str, Any] = {
    # decoding strategy: one beam, no contrastive search, constraints, DoLa or assisted/speculative decoding
    "num_beams": 1,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "length_penalty": 1.0,
    "penalty_alpha": None,
    "constraints": None,
    "force_words_ids": None,
    "dola_layers": None,
    "prompt_lookup_num_tokens": None,
    "assistant_early_exit": None,
    "use_mtp": None,
    "token_healing": False,
    # logits processors (greedy and sampling)
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": None,
    "bad_words_ids": None,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "guidance_scale": None,
    "watermarking_config": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    # warpers (sampling only); temperature, top_k and top_p are the sampler's own options
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "top_h": None,
    # stopping: only EOS and max_new_tokens end a sample
    "stop_strings": None,
    "max_time": None,
}
SAMPLER_OPTIONS = ("do_sample", "temperature", "top_k", "top_p")
# token ids that say what the sequences are made of, not how likely they are: taken from the model when not given
_STRUCTURAL_IDS = ("bos_token_id", "decoder_start_token_id")


def generation_config(
    *,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int | None,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    **overrides: Any,
) -> GenerationConfig:
    """A `GenerationConfig` that samples from softmax(logits / temperature), cut to the top-k / top-p set when asked
    (`top_k=0`, `top_p=1.0`: off), or decodes greedily (`do_sample=False`), and nothing else.

    Every option in `NEUTRAL` is set to its neutral value; `overrides` (any `GenerationConfig` option) replace them
    explicitly. Use it with this module's `generate`, which also keeps the model's defaults out of unset options.
    """
    from transformers import GenerationConfig

    options: dict[str, Any] = {**NEUTRAL, "max_new_tokens": max_new_tokens, "eos_token_id": eos_token_id,
                               "pad_token_id": pad_token_id, "num_return_sequences": num_return_sequences,
                               "do_sample": do_sample, "use_cache": True}
    if do_sample:  # warpers only apply when sampling (greedy would warn that they are ignored)
        options.update(temperature=temperature, top_k=top_k, top_p=top_p)
    options.update(overrides)
    return GenerationConfig(**options)


def sampler_settings(config: GenerationConfig) -> dict[str, Any]:
    """Every option of `config` that can change the sampled distribution, with its value (JSON-ready): what a score or
    a sample was drawn with. None means unset, i.e. no processor for it (see `NEUTRAL`)."""
    settings = {}
    for name in (*SAMPLER_OPTIONS, *NEUTRAL):
        value = getattr(config, name, None)
        settings[name] = value if value is None or isinstance(value, bool | int | float | str | list) else repr(value)
    return settings


def _owner(model) -> Any:
    """The transformers model whose `generate` runs (a PEFT model delegates to its base model)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@contextmanager
def generation_defaults(model, config: GenerationConfig) -> Iterator[GenerationConfig]:
    """Within the block, `model.generate` falls back on (a copy of) `config`, which the block yields, instead of
    `model.generation_config` for options left unset, so nothing of the model's own generation config reaches the
    sampler. The copy takes the model's BOS / decoder-start ids when `config` has none (they say what a sequence
    starts with, not how likely its tokens are). Restored on exit, also on error.

    `generation_config` is the documented, public place where transformers keeps a model's generation defaults."""
    owner = _owner(model)
    saved = owner.generation_config
    config = copy.deepcopy(config)
    for name in _STRUCTURAL_IDS:
        if getattr(config, name, None) is None and saved is not None:
            setattr(config, name, getattr(saved, name, None))
    owner.generation_config = config
    try:
        yield config
    finally:
        owner.generation_config = saved


def generate(model, config: GenerationConfig, **kwargs: Any) -> torch.Tensor:
    """`model.generate(generation_config=config, **kwargs)` with `config` as the only source of generation options
    (`generation_defaults`); `kwargs` are generate's inputs (input_ids, attention_mask, logits_processor, ...)."""
    with generation_defaults(model, config) as own:
        return model.generate(generation_config=own, **kwargs)


def generate_copies(model, config: GenerationConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    copies: int, **kwargs: Any) -> torch.Tensor:
    """`generate` of `copies` samples of each left-padded prompt, rows in `num_return_sequences` order ([p0, p0, …,
    p1, …]), with the prompt read once: its key/value cache is computed for one copy and repeated for the others, so
    K samples cost one prompt pass instead of K (on a CPU the prompt pass dominates short completions). The same
    distribution as `num_return_sequences=copies`; `config` must ask for one sequence per row."""
    if copies == 1 or input_ids.shape[1] < 2:
        ids, mask = input_ids.repeat_interleave(copies, 0), attention_mask.repeat_interleave(copies, 0)
        return generate(model, config, input_ids=ids, attention_mask=mask, **kwargs)
    from transformers import DynamicCache

    # every prompt token but the last goes into the cache, with the position ids `generate` gives left-padded rows
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=getattr(model, "config", None))
    model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=positions[:, :-1],
          cache=cache, use_cache=True)
    cache.batch_repeat_interleave(copies)
    ids, mask = input_ids.repeat_interleave(copies, 0), attention_mask.repeat_interleave(copies, 0)
    return generate(model, config, input_ids=ids, attention_mask=mask, cache=cache, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Token ids in, token ids out
# --------------------------------------------------------------------------------------------------------------------


def left_pad(prompts: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as a left-padded [N, P] id tensor and its attention mask, the layout `generate` continues from."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, P - len(p) :] = 1
    return ids.to(device), mask.to(device)


def truncate_at_eos(completion: Iterable[int], eos_token_ids: Iterable[int]) -> tuple[list[int], bool]:
    """The completion up to and including its first EOS, and whether it had one. What `generate` put after it
    (padding, a second turn) is not part of the sample."""
    completion, eos = list(completion), set(eos_token_ids)
    for i, tok in enumerate(completion):
        if tok in eos:
            return completion[: i + 1], True
    return completion, False


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """The model in eval mode (no dropout) within the block, and in its previous mode after it, also on error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def sample_completions(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_token_ids: list[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generation_kwargs: dict | None = None,
) -> list[list[int]]:
    """Sample one completion per prompt with `model.generate` (ancestral sampling; temperature 1 = the policy itself).

    Samples come from softmax(logits / temperature), cut to top-k / top-p when asked (0 / 1.0 = off), and nothing
    else: no option of the model's own `generation_config` (repetition penalty, min-p, ...) is applied;
    `generation_kwargs` are explicit extra `GenerationConfig` options. `model` must be unwrapped
    (`trl.models.unwrap_model_for_generation`). Returns the new token ids of each row as `generate` produced them (cut
    them with `truncate_at_eos`). The model is put in eval mode for the call and its previous mode restored.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_token_id, device)
    config = generation_config(
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_token_ids) or None,
        pad_token_id=pad_token_id,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        **(generation_kwargs or {}),
    )
    with eval_mode(model):
        out = generate(model, config, input_ids=ids, attention_mask=mask)
    return out[:, ids.shape[1] :].tolist()


__all__ = ["NEUTRAL", "SAMPLER_OPTIONS", "eval_mode", "generate", "generate_copies", "generation_config",
           "generation_defaults",
           "left_pad", "sample_completions", "sampler_settings", "truncate_at_eos"]
