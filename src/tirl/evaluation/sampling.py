"""Batched sampling of K completions per prompt, recording what the metrics need, on `tirl.generation`'s stack.

`sample(model, tokenizer, prompts, SamplingSettings(k=4, ...))` returns, for each prompt, K `Sample`s: the text, the
completion token ids, their number, whether EOS was reached, and the mean per-token entropy of the policy along the
sample. `iter_samples` yields the same batch by batch (what `tirl eval` appends to its JSONL file as it goes).
`SamplingSettings` holds how the samples are drawn; its `temperature`, `top_p`, `max_new_tokens` and `sampler` are
`tirl.generation`'s options of the same name.

Prompts are formatted exactly as `tirl.data.to_trl` + TRL's SFTTrainer format training prompts: a user message
rendered with the tokenizer's chat template and the generation prompt when the tokenizer has a template, else the
plain prompt followed by a newline, tokenized with the tokenizer's default special tokens.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch

from ..generation import (
    DEFAULT_SAMPLER,
    check_sampler,
    eval_mode,
    generate_samples,
    generation_config,
    left_pad,
    sampler_settings,
    truncate_at_eos,
)
from .metrics import token_entropy

Prompt = str | list[dict]  # a user message, or a conversation (list of {"role", "content"}) ending before the answer


@dataclass
class Sample:
    """One completion of one prompt.

    `token_ids` are the generated ids up to and including the first EOS (when reached); `num_tokens` is their
    number; `finished` says whether EOS was reached before `max_new_tokens`; `text` is the decoded completion without
    special tokens; `entropy` is the mean over those tokens of H(π(·|s_t)) in nats, the entropy of the model's own
    next-token distribution (raw logits: before temperature and top-p, so it measures the policy, not the sampler).
    """

    text: str
    token_ids: list[int]
    num_tokens: int
    finished: bool
    entropy: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SamplingSettings:
    """How `iter_samples` and `sample` draw the completions of each prompt, checked once when built.

    `k` samples per prompt, ancestral at `temperature` with nucleus `top_p` (1.0 = off), or with `greedy` the one
    greedy completion per prompt, computed once and repeated K times; at most `max_new_tokens` each. Nothing else
    shapes the distribution: no top-k (HF's default top_k=50 is switched off), and no option of the model's own
    generation config (repetition penalty, min-p, ...; see `tirl.generation` and `generation_settings`, which lists
    every option as used). `sampler` is `tirl.generation.generate_samples`' decoding loop: `"packed"` (finished rows
    leave the batch) or `"generate"` (`model.generate`); same distribution, different random streams.

    Each call holds `batch_size` sequences: `max(1, batch_size // k)` prompts × K samples. Each batch is seeded with
    `batch_seed(seed, first prompt index)` inside a forked RNG, so results are reproducible for a seed and batch size
    and the caller's RNG is untouched. `autocast_bf16`: the forward passes under bf16 autocast. `progress`: a tqdm bar
    that counts prompts and shows generated tokens per second.
    """

    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    greedy: bool = False
    sampler: str = DEFAULT_SAMPLER
    batch_size: int = 32
    seed: int = 0
    autocast_bf16: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError("temperature must be > 0 for sampling (use greedy=True for temperature 0)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        check_sampler(self.sampler)


# --------------------------------------------------------------------------------------------------------------------
# Prompt formatting
# --------------------------------------------------------------------------------------------------------------------


def has_chat_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def encode_prompt(prompt: Prompt, tokenizer, chat: bool | None = None) -> list[int]:
    """Token ids of a prompt, as TRL's SFTTrainer tokenizes the prompt side of the rows `tirl.data.to_trl` makes with
    the same `chat`.

    A message list, or a plain string with `chat=None` (the built-in tasks' rule) or `chat=True` when the tokenizer has
    a chat template: `apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)`.
    `chat=None` without a template: `tokenizer(prompt + "\\n")`; `chat=False`: `tokenizer(prompt)`, `trl sft`'s plain
    text.
    """
    template = has_chat_template(tokenizer)
    if isinstance(prompt, list) or (template and chat is not False):
        if not template:
            raise ValueError("a conversational prompt needs a tokenizer with a chat template")
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
        return list(out["input_ids"])
    return list(tokenizer(text=prompt + "\n" if chat is None else prompt)["input_ids"])


def _eos_ids(model, tokenizer) -> list[int]:
    from ..models import eos_token_ids

    ids = eos_token_ids(tokenizer, model)
    if not ids:
        raise ValueError("the tokenizer has no EOS token, so generation could never stop early")
    return ids


# --------------------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------------------


class _EntropyRecorder:
    """Records H(softmax(logits)) of each row at every decoding step (`generate_samples`' `on_logits`: the model's
    raw next-token logits, before temperature/top-k/top-p), for the rows still in the batch."""

    def __init__(self, on_step: Callable[[int], None] | None = None) -> None:
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # each (output rows [b], entropies [b])
        self.on_step = on_step

    def __call__(self, rows: torch.Tensor, logits: torch.Tensor) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)  # `token_entropy`, without its pass for -inf logits unless there are any
        if torch.isnan(entropy).any():
            entropy = token_entropy(logits)
        self.steps.append((rows.cpu(), entropy.cpu()))
        if self.on_step is not None:
            self.on_step(len(self.steps))

    def table(self, num_rows: int) -> torch.Tensor:
        """[num_rows, steps]: each row's entropy at each step (NaN where the row had left the batch)."""
        out = torch.full((num_rows, len(self.steps)), float("nan"))
        for t, (rows, entropy) in enumerate(self.steps):
            out[rows, t] = entropy.float()
        return out


def batch_seed(seed: int, start: int) -> int:
    """The RNG seed of the batch that starts at prompt `start`: a hash of both, so batches never share a stream and a
    resumed run (same batch size) draws exactly what the uninterrupted run would have drawn."""
    return int.from_bytes(hashlib.sha256(f"tirl-sample:{seed}:{start}".encode()).digest()[:8], "little") % (2**63)


@torch.no_grad()
def iter_samples(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    settings: SamplingSettings | None = None,
    *,
    skip: set[int] | frozenset[int] = frozenset(),
    desc: str = "sampling",
    chat: bool | None = None,
) -> Iterator[tuple[list[int], list[list[Sample]]]]:
    """Generate K samples for each prompt not in `skip`, yielding `(prompt indices, samples per prompt)` per batch.

    Sampling goes through `tirl.generation.generate_samples`, as `settings` says (`SamplingSettings`; None: its
    defaults). `desc` labels the progress bar; `chat`: how plain-string prompts are rendered (`encode_prompt`).
    """
    s = settings or SamplingSettings()
    todo = [i for i in range(len(prompts)) if i not in skip]
    copies = 1 if s.greedy else s.k
    per_call = max(1, s.batch_size // copies)
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    device = next(model.parameters()).device
    config = _config(s.temperature, s.top_p, s.greedy, s.max_new_tokens, eos, pad_id)

    tokens_done, t0 = 0, time.time()
    with eval_mode(model), _progress(total=len(todo), desc=desc, enabled=s.progress) as bar:
        for start in range(0, len(todo), per_call):
            idx = todo[start : start + per_call]
            encoded = [encode_prompt(prompts[i], tokenizer, chat) for i in idx]
            input_ids, attention_mask = left_pad(encoded, pad_id, device)
            done_before = tokens_done

            def show_step(step: int, done_before: int = done_before, rows: int = len(idx) * copies) -> None:
                # a batch can take minutes on a CPU: show its progress every 16 decoding steps
                if step % 16 == 0:
                    rate = (done_before + step * rows) / max(time.time() - t0, 1e-9)
                    bar.set_postfix_str(f"step {step}/{s.max_new_tokens} of this batch, ~{rate:.0f} tok/s")

            recorder = _EntropyRecorder(show_step)
            amp = torch.autocast(device.type, dtype=torch.bfloat16) if s.autocast_bf16 else nullcontext()
            with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), amp:
                torch.manual_seed(batch_seed(s.seed, idx[0]))
                out = generate_samples(model, config, input_ids, attention_mask, copies, sampler=s.sampler,
                                       on_logits=recorder)
            generated = out[:, input_ids.shape[1] :].cpu()  # [B·copies, steps]
            entropies = recorder.table(generated.shape[0])
            rows = [_to_sample(generated[r], entropies[r], eos, tokenizer) for r in range(generated.shape[0])]
            per_prompt = [rows[j * copies : (j + 1) * copies] for j in range(len(idx))]
            if s.greedy and s.k > 1:
                per_prompt = [[Sample(**p[0].to_dict()) for _ in range(s.k)] for p in per_prompt]
            tokens_done += sum(r.num_tokens for r in rows)
            bar.update(len(idx))
            bar.set_postfix_str(f"{tokens_done / max(time.time() - t0, 1e-9):.0f} tok/s")
            yield idx, per_prompt


def _config(temperature: float, top_p: float, greedy: bool, max_new_tokens: int, eos: list[int] | None,
            pad_id: int | None):
    """The `GenerationConfig` of a pass: greedy, or ancestral sampling at `temperature` with nucleus `top_p`."""
    if greedy:
        return generation_config(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad_id, do_sample=False)
    return generation_config(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad_id, temperature=temperature,
                             top_k=0, top_p=top_p)


def generation_settings(temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False) -> dict:
    """Every generation option that shapes the distribution of a pass (`tirl.generation.sampler_settings`), as
    `iter_samples` sets it for these `SamplingSettings` fields; the model's own generation config never adds to it. For
    run records (eval_config.json)."""
    return sampler_settings(_config(temperature, top_p, greedy, max_new_tokens=1, eos=None, pad_id=None))


def sample(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    settings: SamplingSettings | None = None,
    *,
    on_batch: Callable[[list[int], list[list[Sample]]], None] | None = None,
) -> list[list[Sample]]:
    """K `Sample`s for each prompt (a list per prompt, in prompt order), drawn as `settings` says (`SamplingSettings`;
    None: its defaults); see `iter_samples`.

    `on_batch(indices, samples)` is called after each batch (e.g. to write results as they come).
    """
    results: list[list[Sample] | None] = [None] * len(prompts)
    for idx, batch in iter_samples(model, tokenizer, prompts, settings):
        for i, samples in zip(idx, batch, strict=True):
            results[i] = samples
        if on_batch is not None:
            on_batch(idx, batch)
    return results  # type: ignore[return-value]


def _to_sample(ids: torch.Tensor, entropies: torch.Tensor, eos: list[int], tokenizer) -> Sample:
    """Cut one generated row at its first EOS (kept) and summarise it; padding after EOS is dropped."""
    kept, finished = truncate_at_eos(ids.tolist(), eos)
    n = len(kept)
    entropy = float(entropies[:n].mean()) if n else float("nan")
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Sample(text=text.strip(), token_ids=kept, num_tokens=n, finished=finished, entropy=entropy)


def _progress(total: int, desc: str, enabled: bool):
    from ..progress import progress_bar

    return progress_bar(total, desc, "prompt", enabled, dynamic_ncols=True)
