"""Token-level rollouts: sample completions for the prompts of a collated batch and lay them out like that batch.

The online trainers (online IQLearn, GAIL) learn from the model's own samples next to the expert rows. Everything
here works on token ids, never on text, so a policy sample is scored on exactly the tokens that were sampled:

    batch (TRL collator, right-padded)      prompts_from_batch      tirl.generation.sample_completions     build_rollout
    [prompt | expert completion | pad]  ->  [prompt] (list of ids)  ->  model.generate / vLLM  ->  [prompt | sample | pad]

A `Rollout` uses the batch's own conventions (`tirl.losses.mdp`): unshifted `labels` with −100 on the prompt and padding,
the completion kept up to and including its first EOS and masked after it (nothing after an EOS is an action), and
right padding, so position ids start at 0 on every row exactly as when the expert rows were collated. A completion
that reaches `max_new_tokens` without EOS is kept whole and is *truncated* in the MDP sense (its last TD term is
dropped by `tirl.losses.next_values`). `mix_batch` appends rollout rows to a batch and flags them (`is_expert`).

`SampleBuffer` keeps the latest rollouts between regenerations (`generate_every`), with what was recorded about
them when they were drawn (`BufferEntry.extras`), and writes them to and reads them from a checkpoint (safetensors +
JSON, no pickle), so an interrupted run resumes with the same samples. `tirl.trainers.sampler` fills it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from ..files import write_atomic, write_text_atomic
from ..generation import truncate_at_eos
from ..losses.mdp import IGNORE_INDEX
from ..qv.inputs import VALUE_COLUMNS

BUFFER_DIR = "tirl_sample_buffer"
_BATCH_KEYS = ("input_ids", "attention_mask", "labels", "position_ids")


@dataclass
class Rollout:
    """Policy samples laid out like a collated batch; all [N, L] except `ended` [N]."""

    input_ids: torch.Tensor  # prompt, then the sampled completion, then padding
    attention_mask: torch.Tensor  # 1 on the prompt and on the kept completion tokens
    labels: torch.Tensor  # completion tokens up to and including the first EOS; −100 elsewhere (unshifted)
    ended: torch.Tensor  # bool: the completion ended with EOS (False: cut at max_new_tokens)

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def completion_lengths(self) -> torch.Tensor:
        """Kept completion tokens per row (EOS included): [N]."""
        return (self.labels != IGNORE_INDEX).sum(-1)

    def to(self, device: torch.device | str) -> Rollout:
        return Rollout(*(getattr(self, f).to(device) for f in ("input_ids", "attention_mask", "labels", "ended")))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels,
                "ended": self.ended}


# --------------------------------------------------------------------------------------------------------------------
# From a batch to prompts, and from sampled ids back to a batch
# --------------------------------------------------------------------------------------------------------------------


def prompts_from_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor) -> list[list[int]]:
    """The prompt of each row of a collated batch: its attended tokens before the first label that is not −100.

    With TRL's prompt/completion data this is the prompt as the model saw it, chat template and generation prompt
    included (e.g. `...<|im_start|>assistant\\n`). Rows without any completion token give their whole sequence.
    """
    if input_ids.shape != labels.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} differ in shape")
    attended = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_label = labels != IGNORE_INDEX
    T = labels.shape[1]
    positions = torch.arange(T, device=labels.device).expand_as(labels)
    first_label = torch.where(is_label, positions, T).amin(-1)  # [B]; T when the row has no label
    keep = attended & (positions < first_label[:, None])
    return [row[k].tolist() for row, k in zip(input_ids, keep, strict=True)]


def build_rollout(
    prompts: list[list[int]],
    completions: list[list[int]],
    eos_token_ids: list[int] | set[int],
    pad_token_id: int,
    device: torch.device | str = "cpu",
) -> Rollout:
    """Lay out (prompt, sampled completion) pairs like a collated batch (right padding, labels −100 on the prompt).

    Each completion is cut after its first EOS (EOS kept, as TRL's GKD trainer does); tokens a sampler produced after
    it (padding, a second turn) are not actions. Pad ids inside the sampled tokens are kept: whether a position is
    padding is decided by position, never by id (a pad id can be a real token, and often equals EOS).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        raise ValueError("build_rollout needs at least one row")
    rows, ended = [], []
    for p, c in zip(prompts, completions, strict=True):
        kept, has_eos = truncate_at_eos(list(c), eos_token_ids)
        rows.append((list(p), kept))
        ended.append(has_eos)
    L = max(len(p) + len(c) for p, c in rows)
    n = len(rows)
    input_ids = torch.full((n, L), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, L), dtype=torch.long)
    labels = torch.full((n, L), IGNORE_INDEX, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        seq = torch.tensor(p + c, dtype=torch.long)
        input_ids[i, : len(seq)] = seq
        attention_mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = seq[len(p) :]
    return Rollout(input_ids, attention_mask, labels, torch.tensor(ended, dtype=torch.bool)).to(device)


def mix_batch(expert: dict, rollout: Rollout, pad_token_id: int, policy_values: dict[str, torch.Tensor] | None = None) -> dict:
    """Expert rows of a collated batch followed by rollout rows, padded to one length, with `is_expert` [B + N].

    Keys: input_ids, attention_mask, labels (and position_ids when the batch has them), and per-position float
    columns (`VALUE_COLUMNS`, e.g. the reference values of iq_value="reference"), whose policy rows come from
    `policy_values` ([N, L_rollout] each). Padding-free or packed batches (no attention mask) are refused: their rows
    have no separate prompts to sample from.
    """
    policy_values = policy_values or {}
    missing = [k for k in VALUE_COLUMNS if k in expert and k not in policy_values]
    if missing:
        raise ValueError(f"the batch has the per-token columns {missing}, but the policy samples do not")
    unknown = [k for k, v in expert.items() if isinstance(v, torch.Tensor) and k not in _BATCH_KEYS + VALUE_COLUMNS]
    if unknown:
        raise ValueError(f"cannot mix policy samples into a batch with the keys {unknown}; expected {list(_BATCH_KEYS)}")
    if "attention_mask" not in expert:
        raise ValueError("policy samples need a padded batch with an attention mask (packing/padding_free are not supported)")
    device = expert["input_ids"].device
    r = rollout.to(device)
    B, Le = expert["input_ids"].shape
    L = max(Le, r.input_ids.shape[1])

    def pad_to(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, L - x.shape[1]), value=value)

    out = {
        "input_ids": torch.cat([pad_to(expert["input_ids"], pad_token_id), pad_to(r.input_ids, pad_token_id)]),
        "attention_mask": torch.cat([pad_to(expert["attention_mask"], 0), pad_to(r.attention_mask, 0)]),
        "labels": torch.cat([pad_to(expert["labels"], IGNORE_INDEX), pad_to(r.labels, IGNORE_INDEX)]),
    }
    for key in VALUE_COLUMNS:
        if key in expert:
            out[key] = torch.cat([pad_to(expert[key], 0), pad_to(policy_values[key].to(device), 0)])
    if "position_ids" in expert:
        policy_positions = (r.attention_mask.cumsum(-1) - 1).clamp(min=0)
        out["position_ids"] = torch.cat([pad_to(expert["position_ids"], 0), pad_to(policy_positions, 0)])
    out["is_expert"] = torch.cat([torch.ones(B, dtype=torch.bool, device=device),
                                  torch.zeros(r.num_rows, dtype=torch.bool, device=device)])
    return out


def policy_rows_to_batch(policy_tokens: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per-token values of a mixed batch's policy rows ([N, Lr − 1], in the rollout's own width) placed in the mixed
    batch's layout ([B + N, L − 1], zero on the expert rows and past each rollout's width); the policy rows are last."""
    total, L = batch["input_ids"].shape
    out = torch.zeros(total, L - 1, dtype=policy_tokens.dtype, device=batch["input_ids"].device)
    n, lr = policy_tokens.shape
    out[total - n :, :lr] = policy_tokens.to(out.device)
    return out


def choose_prompt_rows(labels: torch.Tensor, n: int, generator: torch.Generator | None = None) -> list[int]:
    """`n` row indices of a batch to sample for, drawn without replacement among rows that have a completion token
    (cycling through them again when `n` exceeds their number)."""
    candidates = torch.nonzero((labels != IGNORE_INDEX).any(-1)).flatten().tolist()
    if not candidates or n <= 0:
        return []
    order: list[int] = []
    while len(order) < n:
        perm = torch.randperm(len(candidates), generator=generator).tolist()
        order += [candidates[i] for i in perm]
    return order[:n]


# --------------------------------------------------------------------------------------------------------------------
# The sample buffer and its checkpoint format
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class BufferEntry:
    rollout: Rollout
    step: int  # the optimizer step (global_step) at which it was generated
    uses: int = 0  # micro-batches that trained on it so far
    # per-token data recorded when the samples were drawn (π_old, reference values), saved and restored with them
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class SampleBuffer:
    """The latest policy samples, one rollout per micro-batch slot of an optimizer step.

    Slot k holds the samples of the k-th micro-batch of the step that generated them (with gradient accumulation a
    step has several micro-batches; each samples from its own prompts). A slot is refreshed when it is empty or was
    generated `generate_every` or more optimizer steps ago; in between, its samples are reused as they are (like
    IQ-Learn's replay buffer, they are data, a few steps old).
    """

    FORMAT = 1

    def __init__(self, generate_every: int = 1):
        if generate_every < 1:
            raise ValueError(f"generate_every must be >= 1, got {generate_every}")
        self.generate_every = generate_every
        self.entries: dict[int, BufferEntry] = {}

    def needs_refresh(self, slot: int, step: int) -> bool:
        entry = self.entries.get(slot)
        return entry is None or step - entry.step >= self.generate_every or step < entry.step

    def put(self, slot: int, rollout: Rollout, step: int) -> BufferEntry:
        self.entries[slot] = BufferEntry(rollout=rollout, step=step)
        return self.entries[slot]

    def get(self, slot: int) -> BufferEntry:
        return self.entries[slot]

    def __len__(self) -> int:
        return len(self.entries)

    # ---------------------------------------------------------------------------------------------------------------

    @staticmethod
    def paths(checkpoint_dir: str | os.PathLike, rank: int) -> tuple[str, str]:
        d = os.path.join(checkpoint_dir, BUFFER_DIR)
        return os.path.join(d, f"rank-{rank}.safetensors"), os.path.join(d, f"rank-{rank}.json")

    def save(self, checkpoint_dir: str | os.PathLike, rank: int = 0) -> None:
        """Write this process's buffer into `checkpoint_dir/tirl_sample_buffer/rank-<rank>.{safetensors,json}`.

        Both files are written to temporary names and renamed; the JSON index is renamed last, so a reader that finds
        it also finds complete tensors.
        """
        from safetensors.torch import save_file

        tensors_path, index_path = self.paths(checkpoint_dir, rank)
        os.makedirs(os.path.dirname(tensors_path), exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        index = {"format": self.FORMAT, "generate_every": self.generate_every, "entries": {}}
        for slot, e in self.entries.items():
            names = []
            for name, t in {**e.rollout.tensors(), **{f"extra.{k}": v for k, v in e.extras.items()}}.items():
                tensors[f"{slot}.{name}"] = t.detach().contiguous().cpu()
                names.append(name)
            index["entries"][str(slot)] = {"step": e.step, "uses": e.uses, "tensors": names}
        write_atomic(tensors_path, lambda tmp: save_file(tensors, tmp, metadata={"format": str(self.FORMAT)}))
        write_text_atomic(index_path, json.dumps(index, indent=1) + "\n")

    def load(self, checkpoint_dir: str | os.PathLike, rank: int = 0) -> bool:
        """Replace the buffer with the one saved in `checkpoint_dir` for `rank`; False (buffer unchanged) if absent."""
        from safetensors.torch import load_file

        tensors_path, index_path = self.paths(checkpoint_dir, rank)
        if not (os.path.isfile(index_path) and os.path.isfile(tensors_path)):
            return False
        with open(index_path) as f:
            index = json.load(f)
        if index.get("format") != self.FORMAT:
            raise ValueError(f"{index_path}: sample buffer format {index.get('format')!r}, expected {self.FORMAT}")
        tensors = load_file(tensors_path)
        entries = {}
        for slot, meta in index["entries"].items():
            t = {name: tensors[f"{slot}.{name}"] for name in meta["tensors"]}
            rollout = Rollout(t["input_ids"], t["attention_mask"], t["labels"], t["ended"].bool())
            extras = {k.removeprefix("extra."): v for k, v in t.items() if k.startswith("extra.")}
            entries[int(slot)] = BufferEntry(rollout=rollout, step=int(meta["step"]), uses=int(meta["uses"]), extras=extras)
        self.entries = entries
        return True
