"""The starting model's logsumexp per token, for `iq_value="reference"` (V = LSE_θ − LSE_θ0, docs/method.md §1).

Offline training needs LSE_θ0(s_t) only at the dataset's own states, and those never change: it is computed once,
before training, by the model the trainer starts from (with LoRA: the base, adapters disabled), with the trainer's
own collator and forward, and stored as a dataset column (`tirl_reference_lse`, one float per input position: the value at
position t belongs to the logits that predict token t + 1). No second model is held during training. The values are
cached in the run directory under a key of the model's weights and the tokenised rows, so a resumed run reads the
exact values it started with. `ReferenceValueCollator` lays the column out like TRL's collator lays out `input_ids`.

Online samples are new states; the online trainers compute their values with the frozen reference they hold, when
the samples are drawn.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import write_atomic
from ..progress import progress_bar

COLUMN = "tirl_reference_lse"
CACHE_DIR = "_tirl_reference_values"  # "_*": what Trainer.push_to_hub leaves out of an upload


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's parameters (names, shapes, dtypes, bytes): which starting model the values belong to."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(p.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def rows_fingerprint(rows: Sequence[dict], settings: str = "") -> str:
    """sha256 of the tokenised rows (`input_ids`, `labels`/`completion_mask`, `seq_lengths`) and of `settings`."""
    h = hashlib.sha256(settings.encode())
    for r in rows:
        for key in ("input_ids", "labels", "completion_mask", "assistant_masks", "seq_lengths"):
            if key in r and r[key] is not None:
                h.update(key.encode())
                h.update(repr(r[key]).encode())
    return h.hexdigest()


def per_row_values(v: torch.Tensor, mask: torch.Tensor, lengths: Sequence[int], padding_free: bool) -> list[list[float]]:
    """Split a collated batch's per-position values v [B, T−1] (0 where `mask` is False) back into rows of input
    length, in input-position layout (the last position of each row predicts nothing and holds 0)."""
    full = torch.nn.functional.pad((v * mask).float(), (0, 1)).cpu()  # [B, T]
    if padding_free:
        flat = full.reshape(-1)
        out, start = [], 0
        for n in lengths:
            out.append(flat[start : start + n].tolist())
            start += n
        return out
    return [full[i, :n].tolist() for i, n in enumerate(lengths)]


@torch.no_grad()
def compute_reference_values(
    rows: Sequence[dict],
    collate: Callable[[list[dict]], dict],
    qv_fn: Callable[[dict], Any],
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "reference values",
) -> list[list[float]]:
    """LSE_θ0 at every input position of every row, through `collate` and `qv_fn` (batch → logits-form `QV`)."""
    out: list[list[float]] = []
    bar = progress_bar(len(rows), desc, "row", progress)
    for start in range(0, len(rows), batch_size):
        chunk = [{k: v for k, v in dict(r).items() if k != COLUMN} for r in rows[start : start + batch_size]]
        batch = collate(chunk)
        qv = qv_fn(batch)
        lengths = [len(r["input_ids"]) for r in chunk]
        padding_free = "attention_mask" not in batch and batch["input_ids"].shape[0] == 1 and len(chunk) > 1
        out += per_row_values(qv.lse.detach(), qv.mask, lengths, padding_free)
        bar.update(len(chunk))
    bar.close()
    return out


def save_values(path: str | os.PathLike, values: list[list[float]], key: str) -> None:
    """Write per-row values as one flat float32 tensor plus row offsets (safetensors, atomically)."""
    lengths = torch.tensor([len(v) for v in values], dtype=torch.int64)
    flat = torch.tensor([x for v in values for x in v], dtype=torch.float32)
    write_atomic(path, lambda tmp: save_file({"values": flat, "lengths": lengths}, tmp, metadata={"key": key}))


def load_values(path: str | os.PathLike, key: str) -> list[list[float]] | None:
    """The values `save_values` wrote under `key`, or None when the file is absent or belongs to another key."""
    if not os.path.isfile(path):
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("key") != key:
            return None
        flat, lengths = f.get_tensor("values"), f.get_tensor("lengths")
    return [chunk.tolist() for chunk in torch.split(flat, lengths.tolist())]


@dataclass
class ReferenceValueCollator:
    """Wraps a collator: pads each example's `tirl_reference_lse` exactly as the wrapped collator pads `input_ids`
    (right padding, or one concatenated row for padding-free batches) and adds it to the batch as float32 [B, T]."""

    collator: Callable[[list[dict]], dict]

    def __call__(self, examples: list[dict]) -> dict:
        if not examples or COLUMN not in examples[0]:
            return self.collator(examples)
        refs = [ex[COLUMN] for ex in examples]
        batch = self.collator([{k: v for k, v in ex.items() if k != COLUMN} for ex in examples])
        ids = batch["input_ids"]
        values = torch.zeros(ids.shape, dtype=torch.float32)
        if "attention_mask" not in batch and ids.shape[0] == 1 and len(examples) > 1:  # padding-free: one row
            flat = torch.tensor([x for r in refs for x in r], dtype=torch.float32)
            values[0, : len(flat)] = flat
        else:
            for i, r in enumerate(refs):
                values[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
        batch[COLUMN] = values.to(ids.device)
        return batch


__all__ = ["CACHE_DIR", "COLUMN", "ReferenceValueCollator", "compute_reference_values", "load_values",
           "model_fingerprint", "per_row_values", "rows_fingerprint", "save_values"]
