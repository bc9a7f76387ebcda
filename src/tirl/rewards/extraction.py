"""Reward extraction: the implicit per-token reward r_t of any causal LM checkpoint (docs/method.md §4).

    r_t = Q(s_t, a_t) − γ·V(s_{t+1}),   Q = log π + V, V after EOS = 0,
    R   = Σ_t r_t   (over the completion tokens whose reward is defined; see `tirl.losses`).

V is read in the form the checkpoint was trained with (`iq_value` in its run.json; `load_reward_model` finds it):
logits (V = logsumexp(logits)), reference (V = LSE_θ − LSE_θ0, with the starting model loaded beside it) or head (the
saved `value_head.safetensors`). A model that is not a tirl run is read in the logits form.

No extra network: the reward is read off the LM head. With γ = 1, R telescopes to log π(y|x) + V(s_0) (the sequence
log-likelihood plus a prompt-dependent offset), so rankings for one prompt equal log-likelihood rankings; use γ < 1
(default 0.99) for a reward that is more than a likelihood. IQLearn trains the logits to make r meaningful (its TD
term pins the free per-state offset of the logits); for an MLE model the offset is arbitrary, which is why MLE
"rewards" correlate poorly with quality.

`score` returns per-token and per-sequence rewards (`tirl.rewards.analysis.preference_accuracy` scores chosen/rejected
pairs with it); `RewardScorer` wraps a checkpoint as a reward function for TRL's online trainers (`GRPOTrainer(reward_funcs=
[RewardScorer(path)])`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import models
from ..data.tokenize import Prompt, encode_prompt_completion
from ..losses import IGNORE_INDEX, LOGITS, ValueForm, token_rewards, value_form
from ..models import eos_token_ids
from ..progress import progress_bar
from ..qv.head import model_qv
from ..qv.value_head import load_value_head


@dataclass
class RewardModel:
    """A checkpoint ready to score rewards in its own value parameterisation."""

    model: Any
    tokenizer: Any
    form: ValueForm = LOGITS  # the run's iq_value
    reference: Any = None  # the starting model, for the reference form
    gamma: float = 0.99  # the run's iq_gamma (the γ its TD term was trained with)
    source: str = ""


def training_run(path: str) -> dict:
    """The run.json of a `tirl train` run directory (or of the run holding a `checkpoint-N`), else {}."""
    if not os.path.isdir(path):
        return {}
    for d in (Path(path), Path(path).parent):
        if (d / "run.json").is_file():
            try:
                return json.loads((d / "run.json").read_text())
            except (OSError, json.JSONDecodeError):
                return {}
    return {}


def load_reward_model(name_or_path: str, trust_remote_code: bool = False) -> RewardModel:
    """Load a checkpoint and what its reward's value form needs: the value head, or the starting model (named in
    run.json; tiny models are rebuilt from the run's seed)."""
    model, tokenizer = models.load(name_or_path, trust_remote_code=trust_remote_code)
    run = training_run(name_or_path)
    config = run.get("config") or {}
    form = value_form(config.get("iq_value") or "logits")
    reference = None
    if form.needs_value_head:
        load_value_head(model, name_or_path)
    if form.needs_reference_lse:
        base = run.get("model")
        if not base:
            raise ValueError(f"{name_or_path}: trained with iq_value='reference' but run.json names no starting model")
        reference, _ = models.load(base, seed=int(config.get("seed", 0)), trust_remote_code=trust_remote_code)
        reference.eval().requires_grad_(False)
    gamma = config.get("iq_gamma")
    return RewardModel(model.eval(), tokenizer, form=form, reference=reference,
                       gamma=0.99 if gamma is None else float(gamma), source=name_or_path)


@dataclass
class SequenceRewards:
    """The reward decomposition of one completion. Lists are per completion token, in order."""

    tokens: list[str]  # each completion token decoded on its own
    token_ids: list[int]
    rewards: list[float]  # r_t (NaN where undefined: after EOS, or the last token of a truncated completion)
    values: list[float]  # V(s_t)
    logprobs: list[float]  # log π(a_t|s_t)
    reward: float  # R = Σ r_t over defined tokens
    logprob: float  # Σ log π(a_t|s_t) over the tokens R sums (where r_t is defined)
    value0: float  # V(s_0), the value of the prompt
    num_tokens: int
    terminated: bool  # the completion ends with EOS

    def to_dict(self) -> dict:
        return asdict(self)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def score(
    model,
    tokenizer,
    pairs: Sequence[tuple[Prompt, Prompt]],
    gamma: float = 0.99,
    batch_size: int = 8,
    max_length: int | None = 1024,
    chunk_size: int = 1024,
    bf16: bool = False,
    progress: bool = True,
    form: ValueForm = LOGITS,
    reference_model=None,
) -> list[SequenceRewards]:
    """Per-token and per-sequence rewards of `(prompt, completion)` pairs under `model` (strings or message lists).

    Pairs are tokenised exactly as training tokenises them (`encode_prompt_completion`), batched with right padding,
    and pushed through the model's LM head in chunks (no [B, T, V] logits). V is read in `form`: the logsumexp of the
    logits, LSE − LSE of `reference_model` (the starting model), or the model's value head.
    """
    encoded = [encode_prompt_completion(tokenizer, p, c) for p, c in pairs]
    return score_encoded(model, tokenizer, encoded, gamma=gamma, batch_size=batch_size, max_length=max_length,
                         chunk_size=chunk_size, bf16=bf16, progress=progress, form=form,
                         reference_model=reference_model)


def encode_generated(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> dict[str, list[int]]:
    """A sampled completion as the model produced it (token ids, EOS included only if it was reached), so a
    completion cut by `max_new_tokens` is scored as truncated rather than given an EOS it never emitted."""
    return {"input_ids": list(prompt_ids) + list(completion_ids), "labels": [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)}


@torch.no_grad()
def score_encoded(
    model,
    tokenizer,
    encoded: Sequence[dict[str, list[int]]],
    gamma: float = 0.99,
    batch_size: int = 8,
    max_length: int | None = 1024,
    chunk_size: int = 1024,
    bf16: bool = False,
    progress: bool = True,
    form: ValueForm = LOGITS,
    reference_model=None,
) -> list[SequenceRewards]:
    """`score` for sequences already tokenised: dicts with `input_ids` and `labels` (−100 outside the completion)."""
    if form.needs_reference_lse and reference_model is None:
        raise ValueError("rewards in the reference form need the starting model (reference_model)")
    was_training = model.training
    model.eval()
    eos = eos_token_ids(tokenizer, model.get_base_model() if hasattr(model, "get_base_model") else model)
    if max_length is not None:
        encoded = [{k: v[:max_length] for k, v in e.items()} for e in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _device(model)
    bar = progress_bar(len(encoded), "scoring rewards", "seq", progress)
    # sequences of similar length share a batch (less padding: preference dialogues vary from 50 to 1,000 tokens);
    # results go back in input order
    order = sorted(range(len(encoded)), key=lambda j: len(encoded[j]["input_ids"]))
    results: list[SequenceRewards | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        chunk = [encoded[j] for j in index]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, e in enumerate(chunk):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            attn[i, :n] = 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            reference_lse = None
            if form.needs_reference_lse:
                ref_device = _device(reference_model)
                reference_lse = model_qv(reference_model, ids.to(ref_device), attn.to(ref_device),
                                         labels.to(ref_device), chunk_size=chunk_size).lse.to(device)
            qv = model_qv(model, ids.to(device), attn.to(device), labels.to(device), chunk_size=chunk_size, form=form,
                          reference_lse=reference_lse)
        rw = token_rewards(qv, iq_gamma=gamma, eos_token_ids=eos)
        for i, j in enumerate(index):
            pos = qv.mask[i].nonzero().flatten()
            if len(pos) == 0:
                raise ValueError(f"sequence {j} has no completion token (empty completion, or cut by max_length)")
            tok_ids = qv.actions[i, pos].tolist()
            defined = rw.td_mask[i, pos]
            r = torch.where(defined, rw.reward[i, pos], torch.full_like(rw.reward[i, pos], math.nan))
            results[j] = SequenceRewards(
                tokens=[tokenizer.decode([t]) for t in tok_ids],
                token_ids=tok_ids,
                rewards=r.tolist(),
                values=qv.v[i, pos].tolist(),
                logprobs=rw.logprob[i, pos].tolist(),
                reward=float(rw.reward[i, pos][defined].sum()),
                # over the tokens R sums (not the template's tokens after EOS), so the two rank alike at γ = 1
                logprob=float(rw.logprob[i, pos][defined].sum()),
                value0=float(qv.v[i, pos[0]]),
                num_tokens=len(pos),
                terminated=any(t in eos for t in tok_ids),
            )
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return results  # type: ignore[return-value]  # every slot is filled above


class RewardScorer:
    """A `tirl` checkpoint as a reward function for TRL's online trainers (GRPO, RLOO, ...).

    >>> scorer = RewardScorer("runs/iqlearn-smollm2")                      # doctest: +SKIP
    >>> GRPOTrainer(model=..., reward_funcs=[scorer], ...)                 # doctest: +SKIP

    TRL calls `scorer(prompts=..., completions=..., **columns)` with strings or message lists and expects one float
    per completion. The reward is R = Σ_t r_t (`normalize="none"`) or its mean per token (`normalize="mean"`, which
    does not favour long or short completions). The scoring model is frozen and kept in eval mode. Given a path, the
    reward is read in the run's own value parameterisation (`load_reward_model`), and γ defaults to the run's.
    """

    def __init__(self, model, tokenizer=None, gamma: float | None = None, normalize: str = "none", batch_size: int = 8,
                 max_length: int | None = 1024, bf16: bool = False, form: ValueForm = LOGITS, reference_model=None):
        if normalize not in ("none", "mean"):
            raise ValueError(f"normalize must be 'none' or 'mean', got {normalize!r}")
        if isinstance(model, str):
            loaded = load_reward_model(model)
            model, tokenizer, form, reference_model = loaded.model, loaded.tokenizer, loaded.form, loaded.reference
            gamma = loaded.gamma if gamma is None else gamma
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with a model object")
        gamma = 0.99 if gamma is None else gamma
        self.form, self.reference_model = form, reference_model
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.gamma, self.normalize, self.batch_size, self.max_length, self.bf16 = gamma, normalize, batch_size, max_length, bf16
        self.__name__ = "tirl_reward"  # TRL logs each reward function under its __name__

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[Prompt], **_) -> list[float]:
        scored = score(self.model, self.tokenizer, list(zip(prompts, completions, strict=True)), gamma=self.gamma,
                       batch_size=self.batch_size, max_length=self.max_length, bf16=self.bf16, progress=False,
                       form=self.form, reference_model=self.reference_model)
        if self.normalize == "mean":
            return [s.reward / max(s.num_tokens, 1) for s in scored]
        return [s.reward for s in scored]
