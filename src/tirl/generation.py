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
`left_pad`, decoded by `generate_samples` in eval mode (`eval_mode`), and cut after their first EOS by
`truncate_at_eos`. `sample_completions` is that whole path for the online trainers; `tirl.evaluation.sampling` adds
what evaluation records (prompt rendering, seeds, per-token entropy, text). Both reach the model only through
`generate_samples`, whose `sampler` picks the decoding loop (`SAMPLERS`):

- `"packed"` (the default, `packed_generate`): tirl's own loop. K copies of a prompt share its prompt pass, and rows
  that reached EOS leave the batch (its key/value cache is re-packed with `DynamicCache.batch_select_indices` once
  enough rows have ended), so no step computes padding after EOS. It applies exactly the options of `generate`'s
  config here (greedy argmax, or temperature → top-k → top-p with transformers' own warpers → softmax → a draw) and
  refuses a config that asks for anything else. It draws each token by inverse CDF (`draw_tokens`), which costs a
  small fraction of `generate`'s `torch.multinomial` on a CPU.
- `"generate"` (`generate_copies`): `model.generate`, which keeps every row until the longest one stops.

Both sample the same distribution (greedy outputs are identical); only the random stream differs.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Iterator
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
# The decoding loops
# --------------------------------------------------------------------------------------------------------------------

SAMPLERS = ("packed", "generate")
DEFAULT_SAMPLER = "packed"
# `packed_generate` re-packs its batch once this share of its rows has ended (at least one row): a re-pack copies the
# key/value cache once, about what one decoding step's cache update costs, and every later step then skips those rows
REPACK_FRACTION = 0.125

LogitsObserver = Callable[[torch.Tensor, torch.Tensor], None]


def check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return sampler


def generate_samples(model, config: GenerationConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     copies: int = 1, *, sampler: str = DEFAULT_SAMPLER,
                     on_logits: LogitsObserver | None = None) -> torch.Tensor:
    """`copies` continuations of each left-padded prompt, rows in `num_return_sequences` order ([p0, p0, …, p1, …]):
    the prompt followed by the generated ids, padded after EOS with `config.pad_token_id`, as `generate` returns them.
    The one entry point of tirl's sampling (`tirl eval`, `tirl rewards analyse`, online IQLearn, GAIL).

    `sampler`: `"packed"` (`packed_generate`: finished rows leave the batch) or `"generate"` (`generate_copies`:
    `model.generate`). `on_logits(rows, logits)` is called at every decoding step with the raw next-token logits
    (float32, before temperature / top-k / top-p) of the batch's rows and their output row indices; rows that have
    ended may still be among them (their values are meaningless after their EOS)."""
    check_sampler(sampler)
    if sampler == "packed":
        return packed_generate(model, config, input_ids, attention_mask, copies, on_logits=on_logits)
    kwargs: dict[str, Any] = {}
    if on_logits is not None:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([_LogitsTap(on_logits)])
    return generate_copies(model, config, input_ids, attention_mask, copies, **kwargs)


class _LogitsTap:
    """A logits processor that shows `generate`'s raw scores to an observer and passes them through unchanged
    (`generate` runs custom processors before its warpers)."""

    def __init__(self, on_logits: LogitsObserver) -> None:
        self.on_logits = on_logits

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.on_logits(torch.arange(scores.shape[0], device=scores.device), scores)
        return scores


def _eos_list(config: GenerationConfig) -> list[int]:
    eos = config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos.tolist() if isinstance(eos, torch.Tensor) else eos if isinstance(eos, list) else [eos])]


def sampling_warpers(config: GenerationConfig):
    """The warpers `generate` applies to a sampling step for this config, in its order (transformers 5.24
    `_get_logits_processor`): temperature, top-k, top-p; none for greedy decoding."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            warpers.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    return warpers


def _preallocated_cache(model, capacity: int):
    """A `DynamicCache` for `model` whose full-attention layers write each step into buffers of `capacity` positions
    (`_BufferedLayer`) instead of concatenating the whole cache with the new position (`DynamicLayer.update`, which
    copies every cached key and value at every step). Other layer kinds (sliding windows, ...) are kept as they are.

    With transformers' SDPA attention (the default on CPU), which reads the cached keys and values only through
    `scaled_dot_product_attention`, a layer stores them in the autocast dtype when autocast is on: SDPA casts its
    inputs to that dtype under autocast anyway, so it sees the same numbers, without re-casting every cached
    float32 key (rotary embeddings make keys float32 under autocast) at every step."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(_owner(model), "config", None)
    cache = DynamicCache(config=config)
    sdpa = getattr(config, "_attn_implementation", None) == "sdpa"
    layers = getattr(cache, "layers", None)
    if layers:
        for i, layer in enumerate(layers):
            if type(layer) is DynamicLayer:
                layers[i] = _buffered_layer_class()(capacity, store_autocast_dtype=sdpa)
    return cache


_BUFFERED_LAYER = None


def _buffered_layer_class():
    """`_BufferedLayer`, defined on first use (transformers is imported when a cache is built, not with this module)."""
    global _BUFFERED_LAYER
    if _BUFFERED_LAYER is not None:
        return _BUFFERED_LAYER
    from transformers.cache_utils import DynamicLayer

    class _BufferedLayer(DynamicLayer):
        """A `DynamicLayer` whose keys and values are the filled part of buffers with room for `capacity` positions
        (grown by doubling if ever exceeded): `update` writes the new positions in place, and `keys` / `values` are
        views of the same numbers `DynamicLayer` would hold. Batch re-packing and repetition copy the filled part."""

        def __init__(self, capacity: int, store_autocast_dtype: bool = False) -> None:
            super().__init__()
            self.capacity = capacity
            self.store_autocast_dtype = store_autocast_dtype
            self._keys_buffer = self._values_buffer = None

        def _stored(self, states: torch.Tensor) -> torch.Tensor:
            """`states` as SDPA will read them: in the autocast dtype when autocast is on (see
            `_preallocated_cache`)."""
            kind = states.device.type
            if self.store_autocast_dtype and states.dtype == torch.float32 and torch.is_autocast_enabled(kind):
                return states.to(torch.get_autocast_dtype(kind))
            return states

        def _reserve(self, batch_like_keys: torch.Tensor, batch_like_values: torch.Tensor, rows: int,
                     positions: int) -> tuple[torch.Tensor, torch.Tensor]:
            size = max(self.capacity, positions)
            keys = batch_like_keys.new_empty((rows, *batch_like_keys.shape[1:-2], size, batch_like_keys.shape[-1]))
            values = batch_like_values.new_empty((rows, *batch_like_values.shape[1:-2], size,
                                                  batch_like_values.shape[-1]))
            return keys, values

        def _adopt(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
            self._keys_buffer, self._values_buffer = keys, values
            self.keys, self.values = keys[..., :filled, :], values[..., :filled, :]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            key_states, value_states = self._stored(key_states), self._stored(value_states)
            filled, new = self.get_seq_length(), key_states.shape[-2]
            buffer = self._keys_buffer
            if (filled and buffer is None) or (buffer is not None and (
                    key_states.dtype != buffer.dtype or value_states.dtype != self._values_buffer.dtype
                    or key_states.shape[0] != buffer.shape[0])):
                # not what this layer wrote (or other dtypes): what `DynamicLayer` does
                self._keys_buffer = self._values_buffer = None
                return super().update(key_states, value_states, *args, **kwargs)
            if buffer is None or filled + new > buffer.shape[-2]:
                keys, values = self._reserve(key_states, value_states, key_states.shape[0],
                                             max(filled + new, 2 * filled))
                if filled:
                    keys[..., :filled, :] = self.keys
                    values[..., :filled, :] = self.values
                self._keys_buffer, self._values_buffer = keys, values
            self._keys_buffer[..., filled : filled + new, :] = key_states
            self._values_buffer[..., filled : filled + new, :] = value_states
            self._adopt(self._keys_buffer, self._values_buffer, filled + new)
            return self.keys, self.values

        def _select(self, rows: torch.Tensor) -> None:
            if self._keys_buffer is None or self.get_seq_length() == 0:
                return
            filled = self.get_seq_length()
            keys, values = self._reserve(self.keys, self.values, rows.shape[0], filled)
            keys[..., :filled, :] = self.keys.index_select(0, rows)
            values[..., :filled, :] = self.values.index_select(0, rows)
            self._adopt(keys, values, filled)

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self._keys_buffer is None:
                return super().batch_select_indices(indices)
            self._select(indices.to(self._keys_buffer.device))

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._keys_buffer is None:
                return super().batch_repeat_interleave(repeats)
            rows = torch.arange(self.keys.shape[0], device=self.keys.device).repeat_interleave(repeats)
            self._select(rows)

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.batch_select_indices(beam_idx)

        def crop(self, tokens_to_remove: int) -> None:
            self._keys_buffer = self._values_buffer = None  # the plain layer's own way from here on
            if self.is_initialized:
                self.keys, self.values = self.keys.contiguous(), self.values.contiguous()
            super().crop(tokens_to_remove)

        def reset(self) -> None:
            self._keys_buffer = self._values_buffer = None
            super().reset()

    _BUFFERED_LAYER = _BufferedLayer
    return _BufferedLayer


_DRAW_BLOCK = 256


def draw_tokens(probs: torch.Tensor) -> torch.Tensor:
    """One token id per row of `probs` [n, V] (non-negative weights, any scale), drawn with probability proportional
    to its weight: the inverse CDF at one float64 uniform per row, in two levels. The row's mass is summed per block of
    256 tokens, a block is chosen by the cumulative sums of those (float64), and a token within it by the float64
    cumulative sum of its 256 weights, rescaled to that block's own total; so each token keeps its weight up to the
    float32 rounding of its block's sum (a relative error, like softmax's own), and a token of weight 0 is never drawn.

    The same distribution as `torch.multinomial(probs, 1)`, another random stream, and far cheaper on a CPU:
    multinomial draws one exponential variate per vocabulary entry (SmolLM2: 49k per row and step), which costs more
    than the model's own decoding step there."""
    n, vocab = probs.shape
    pad = (-vocab) % _DRAW_BLOCK
    weights = torch.nn.functional.pad(probs, (0, pad)) if pad else probs
    blocks = weights.reshape(n, -1, _DRAW_BLOCK)
    sums = blocks.sum(-1).double()  # [n, blocks]
    cum = sums.cumsum(-1)
    u = torch.rand(n, 1, dtype=torch.float64, device=probs.device) * cum[:, -1:]
    index = torch.arange(sums.shape[1], device=probs.device)
    last_block = torch.where(sums > 0, index, 0).amax(-1, keepdim=True)  # where rounding could overshoot
    b = torch.minimum(torch.searchsorted(cum, u, right=True), last_block)  # first block whose cumulative sum > u
    size = sums.gather(1, b)
    share = ((u - (cum.gather(1, b) - size)) / size).clamp_(0.0, 1.0)  # where u falls inside its block, in [0, 1)
    inside = blocks.gather(1, b[:, :, None].expand(n, 1, _DRAW_BLOCK)).squeeze(1)
    within = inside.double().cumsum(-1)
    offsets = torch.arange(_DRAW_BLOCK, device=probs.device)
    last = torch.where(inside > 0, offsets, 0).amax(-1, keepdim=True)
    j = torch.minimum(torch.searchsorted(within, share * within[:, -1:], right=True), last)
    return (b * _DRAW_BLOCK + j).squeeze(1)


def _check_packable(model, config: GenerationConfig) -> None:
    """`packed_generate` implements greedy decoding and temperature / top-k / top-p sampling of a decoder-only model,
    one sequence per row: anything else is refused by name rather than left out."""
    if getattr(getattr(_owner(model), "config", None), "is_encoder_decoder", False):
        raise ValueError("the packed sampler decodes decoder-only models; use sampler='generate' for this model")
    settings = sampler_settings(config)
    other = [f"{k}={settings[k]!r}" for k, v in NEUTRAL.items() if settings[k] != v]
    if (config.num_return_sequences or 1) != 1:
        other.append(f"num_return_sequences={config.num_return_sequences}")
    if other:
        raise ValueError(f"the packed sampler applies only temperature, top-k and top-p; this config also sets "
                         f"{', '.join(other)}: use sampler='generate'")
    if config.max_new_tokens is None or config.max_new_tokens < 1:
        raise ValueError(f"the packed sampler needs max_new_tokens >= 1, got {config.max_new_tokens}")


@torch.no_grad()
def packed_generate(model, config: GenerationConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    copies: int = 1, *, on_logits: LogitsObserver | None = None,
                    repack_fraction: float | None = None) -> torch.Tensor:
    """`generate_copies` with a decoding loop in which finished rows leave the batch.

    Every prompt token but the last is read once per prompt and its key/value cache repeated for the `copies` rows
    (`generate_copies`' shared prompt pass); then all rows decode in lockstep, one token per step, with the position
    ids and attention mask `generate` gives left-padded rows. A row that emits an EOS id is done; once
    `repack_fraction` (default `REPACK_FRACTION`) of the batch's rows (at least one) are done, the cache keeps only
    the live rows (`DynamicCache.batch_select_indices`) and so do the mask and positions. The loop stops when every
    row has ended or after `max_new_tokens` steps. The cache writes each step in place (`_preallocated_cache`), and a
    forward that enters autocast itself keeps its cast weights for the whole call (`_autocast_cache_kept`).

    Each step computes the float32 logits of the last position, as `generate` does, and picks the argmax
    (`do_sample=False`) or draws from softmax(`sampling_warpers(config)`(logits)) with `draw_tokens`: the same
    distribution as `generate`, and for greedy decoding the same tokens. The random stream is another one
    (`draw_tokens` uses one uniform per row where `torch.multinomial` uses one per vocabulary entry, and rows that
    left draw nothing), reproducible for a seed and batch: the re-packs depend only on which rows ended. Returns what
    `generate_copies` returns: [rows, prompt + steps], padded after EOS with `config.pad_token_id` (the first EOS id
    when unset). Options other than greedy / temperature / top-k / top-p are refused (`_check_packable`)."""
    _check_packable(model, config)
    repack_fraction = REPACK_FRACTION if repack_fraction is None else repack_fraction
    owner = _owner(model)
    eos = _eos_list(config)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    warpers = sampling_warpers(config)
    max_new = int(config.max_new_tokens)
    device = input_ids.device
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    padded = not bool(attention_mask.all())  # like `generate`, pass no mask when there is no padding
    extra: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(owner.forward).parameters:
        extra["logits_to_keep"] = 1
    cache = _preallocated_cache(model, input_ids.shape[1] + max_new)

    def forward(ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=ids, attention_mask=mask if padded else None, position_ids=pos, cache=cache, **extra)
        return out.logits[:, -1].to(dtype=torch.float32, copy=True)

    with _autocast_cache_kept(device.type):
        return _packed_loop(forward, cache, config, input_ids, attention_mask, positions, copies, eos, pad, warpers,
                            max_new, on_logits, repack_fraction)


@contextmanager
def _autocast_cache_kept(device_type: str) -> Iterator[None]:
    """The autocast state as it is, one level deeper: a model whose forward enters autocast itself (accelerate's
    mixed-precision wrapper, which `unwrap_model_for_generation` keeps) then casts each weight once per call of
    `packed_generate` instead of at every decoding step, since autocast only drops its cast copies when its outermost
    region ends. The same casts, so the same numbers."""
    with torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                        enabled=torch.is_autocast_enabled(device_type),
                        cache_enabled=torch.is_autocast_cache_enabled()):
        yield


def _packed_loop(forward, cache, config, input_ids, attention_mask, positions, copies, eos, pad, warpers, max_new,
                 on_logits, repack_fraction) -> torch.Tensor:
    """The decoding loop of `packed_generate` (see there)."""
    device = input_ids.device
    if copies > 1 and input_ids.shape[1] >= 2:  # the shared prompt pass
        forward(input_ids[:, :-1], attention_mask[:, :-1], positions[:, :-1])
        cache.batch_repeat_interleave(copies)
        mask, pos = attention_mask.repeat_interleave(copies, 0), positions.repeat_interleave(copies, 0)
        logits = forward(input_ids[:, -1:].repeat_interleave(copies, 0), mask, pos[:, -1:])
    else:
        mask, pos = attention_mask.repeat_interleave(copies, 0), positions.repeat_interleave(copies, 0)
        logits = forward(input_ids.repeat_interleave(copies, 0), mask, pos)
    pos = pos[:, -1]
    n = mask.shape[0]
    rows = torch.arange(n, device=device)  # the output row of each batch row
    tokens = torch.full((n, max_new), pad, dtype=torch.long, device=device)
    live = torch.ones(n, dtype=torch.bool, device=device)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    steps = 0
    while True:
        if on_logits is not None:
            on_logits(rows, logits)
        if config.do_sample:
            nxt = draw_tokens(torch.nn.functional.softmax(warpers(None, logits), dim=-1))
        else:
            nxt = torch.argmax(logits, dim=-1)
        nxt = torch.where(live, nxt, pad)
        tokens[rows, steps] = nxt
        steps += 1
        if eos:
            live &= ~torch.isin(nxt, eos_ids)
        alive = int(live.sum())
        if steps == max_new or alive == 0:
            break
        if live.shape[0] - alive >= max(1.0, repack_fraction * live.shape[0]):
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, live, nxt, mask, pos = rows[keep], live[keep], nxt[keep], mask[keep], pos[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        pos = pos + 1
        logits = forward(nxt[:, None], mask, pos[:, None])
    return torch.cat([input_ids.repeat_interleave(copies, 0), tokens[:, :steps]], dim=-1)


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
    sampler: str = DEFAULT_SAMPLER,
) -> list[list[int]]:
    """Sample one completion per prompt with `generate_samples` (ancestral sampling; temperature 1 = the policy itself;
    `sampler`: its decoding loop, `"packed"` or `"generate"`).

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
        out = generate_samples(model, config, ids, mask, sampler=sampler)
    return out[:, ids.shape[1] :].tolist()


__all__ = ["DEFAULT_SAMPLER", "NEUTRAL", "SAMPLERS", "SAMPLER_OPTIONS", "check_sampler", "draw_tokens", "eval_mode",
           "generate", "generate_copies", "generate_samples", "generation_config", "generation_defaults", "left_pad",
           "packed_generate", "sample_completions", "sampler_settings", "sampling_warpers", "truncate_at_eos"]
