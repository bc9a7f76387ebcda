"""Reward extraction: the implicit per-token reward r_t of any causal LM checkpoint (docs/method.md §4).

    r_t = Q(s_t, a_t) − γ·V(s_{t+1}),   Q = log π + V, V after EOS = 0,
    R   = Σ_t r_t   (over the completion tokens whose reward is defined; see `tirl.losses`).

A checkpoint is read with the objective it trained with (`Objective.from_run`, from its run.json; `load_reward_model`
finds it): V in its value form (logits: V = logsumexp(logits); reference: V = LSE_θ − LSE_θ0, with the starting model
loaded beside it; head: the saved `value_head.safetensors`) and its γ. A model that is not a tirl run is read as plain
MLE (`Objective.mle()`: the logits form, the default γ).

No extra network: the reward is read off the LM head. With γ = 1, R telescopes to log π(y|x) + V(s_0) (the sequence
log-likelihood plus a prompt-dependent offset), so rankings for one prompt equal log-likelihood rankings; use γ < 1
(the default of `tirl.losses.Objective`) for a reward that is more than a likelihood. IQLearn trains the logits to
make r meaningful (its TD term pins the free per-state offset of the logits); for an MLE model the offset is
arbitrary, which is why MLE "rewards" correlate poorly with quality.

`score(reward_model, pairs, settings)` returns per-token and per-sequence rewards (`RewardModel`: what the rewards
are; `ScoreSettings`: how they are computed; `tirl.rewards.analysis.preference_accuracy` scores chosen/rejected pairs
with it); `RewardScorer` wraps a checkpoint as a reward function for TRL's online trainers
(`GRPOTrainer(reward_funcs=[RewardScorer(path)])`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import models
from ..data.tokenize import Prompt, encode_prompt_completion
from ..losses import IGNORE_INDEX, MLE, Objective, token_rewards
from ..models import eos_token_ids
from ..progress import progress_bar
from ..qv.head import model_qv
from ..qv.inputs import value_input_of


@dataclass
class RewardModel:
    """A model whose rewards are read with `objective`'s value form and γ: a checkpoint and what its value form
    needs (`reference`, the starting model, for the reference form)."""

    model: Any
    tokenizer: Any
    objective: Objective = MLE  # the run's (`Objective.from_run`); a model that is not a tirl run: plain MLE
    reference: Any = None
    source: str = ""

    def with_gamma(self, gamma: float | None) -> RewardModel:
        """This model with its rewards read at γ = `gamma` (None: the run's own)."""
        return self if gamma is None else replace(self, objective=replace(self.objective, iq_gamma=gamma))


@dataclass(frozen=True)
class ScoreSettings:
    """How `score` computes rewards (never what they are: that is the `RewardModel`'s)."""

    batch_size: int = 8  # sequences per forward pass (sorted by length, so a batch pads little)
    max_length: int | None = 1024  # tokens kept per sequence (prompt + completion); None: all
    chunk_size: int = 1024  # rows per chunk through the LM head (no [batch, seq, vocab] logits)
    bf16: bool = False  # bf16 autocast for the forward pass
    progress: bool = True  # a progress bar


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
    """Load a checkpoint with the objective it trained with (`Objective.from_run`) and what its value form reads:
    the value head saved beside it, or the starting model (named in run.json; tiny models are rebuilt from the run's
    seed)."""
    model, tokenizer = models.load(name_or_path, trust_remote_code=trust_remote_code)
    run = training_run(name_or_path)
    objective = Objective.from_run(run)
    kind = value_input_of(objective.iq_value)
    kind.load(model, name_or_path)
    reference = None
    if kind.reads_starting_model:
        base = run.get("model")
        if not base:
            raise ValueError(f"{name_or_path}: trained with iq_value={objective.iq_value.name!r} but run.json names no "
                             "starting model")
        seed = int((run.get("config") or {}).get("seed", 0))
        reference, _ = models.load(base, seed=seed, trust_remote_code=trust_remote_code)
        reference.eval().requires_grad_(False)
    return RewardModel(model.eval(), tokenizer, objective=objective, reference=reference, source=name_or_path)


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


def score(reward: RewardModel, pairs: Sequence[tuple[Prompt, Prompt]],
          settings: ScoreSettings | None = None) -> list[SequenceRewards]:
    """Per-token and per-sequence rewards of `(prompt, completion)` pairs (strings or message lists) under
    `reward`: its model, in its objective's value form and γ.

    Pairs are tokenised exactly as training tokenises them (`encode_prompt_completion`), batched with right padding,
    and pushed through the model's LM head in chunks (no [B, T, V] logits).
    """
    encoded = [encode_prompt_completion(reward.tokenizer, p, c) for p, c in pairs]
    return score_encoded(reward, encoded, settings)


def encode_generated(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> dict[str, list[int]]:
    """A sampled completion as the model produced it (token ids, EOS included only if it was reached), so a
    completion cut by `max_new_tokens` is scored as truncated rather than given an EOS it never emitted."""
    return {"input_ids": list(prompt_ids) + list(completion_ids), "labels": [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)}


@torch.no_grad()
def score_encoded(reward: RewardModel, encoded: Sequence[dict[str, list[int]]],
                  settings: ScoreSettings | None = None) -> list[SequenceRewards]:
    """`score` for sequences already tokenised: dicts with `input_ids` and `labels` (−100 outside the completion)."""
    s = settings or ScoreSettings()
    model, tokenizer, form = reward.model, reward.tokenizer, reward.objective.iq_value
    kind = value_input_of(form)
    if kind.reads_starting_model and reward.reference is None:
        raise ValueError(f"rewards in the {form.name} form need the starting model (RewardModel.reference)")
    was_training = model.training
    model.eval()
    eos = eos_token_ids(tokenizer, model.get_base_model() if hasattr(model, "get_base_model") else model)
    if s.max_length is not None:
        encoded = [{k: v[: s.max_length] for k, v in e.items()} for e in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _device(model)
    bar = progress_bar(len(encoded), "scoring rewards", "seq", s.progress)
    # sequences of similar length share a batch (less padding: preference dialogues vary from 50 to 1,000 tokens);
    # results go back in input order
    order = sorted(range(len(encoded)), key=lambda j: len(encoded[j]["input_ids"]))
    results: list[SequenceRewards | None] = [None] * len(encoded)
    for start in range(0, len(order), s.batch_size):
        index = order[start : start + s.batch_size]
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
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.bf16):
            column = None
            if kind.reads_starting_model:
                ref_device = _device(reward.reference)
                column = kind.of_starting_model(model_qv(reward.reference, ids.to(ref_device), attn.to(ref_device),
                                                         labels.to(ref_device), chunk_size=s.chunk_size)).to(device)
            qv = model_qv(model, ids.to(device), attn.to(device), labels.to(device), chunk_size=s.chunk_size, form=form,
                          value_column=column)
        rw = token_rewards(qv, iq_gamma=reward.objective.iq_gamma, eos_token_ids=eos)
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
    does not favour long or short completions). `model` is a run directory or model name (read with the objective
    of its run, `load_reward_model`), a `RewardModel`, or a model object with its `tokenizer` (read as plain MLE);
    `gamma` replaces the objective's γ. The scoring model is frozen and kept in eval mode; no progress bar is shown.
    """

    def __init__(self, model, tokenizer=None, gamma: float | None = None, normalize: str = "none",
                 settings: ScoreSettings | None = None):
        if normalize not in ("none", "mean"):
            raise ValueError(f"normalize must be 'none' or 'mean', got {normalize!r}")
        if isinstance(model, str):
            model = load_reward_model(model)
        elif not isinstance(model, RewardModel):
            if tokenizer is None:
                raise ValueError("pass the tokenizer together with a model object")
            model = RewardModel(model, tokenizer)
        self.reward = model.with_gamma(gamma)
        self.reward.model.eval().requires_grad_(False)
        self.normalize = normalize
        self.settings = replace(settings or ScoreSettings(), progress=False)
        self.__name__ = "tirl_reward"  # TRL logs each reward function under its __name__

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[Prompt], **_) -> list[float]:
        scored = score(self.reward, list(zip(prompts, completions, strict=True)), self.settings)
        if self.normalize == "mean":
            return [s.reward / max(s.num_tokens, 1) for s in scored]
        return [s.reward for s in scored]
