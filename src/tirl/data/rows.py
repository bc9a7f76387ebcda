"""Rows of any dataset `tirl` takes (a built-in task, a user's file or directory, a hub dataset), and their TRL format.

`load_rows(name)` dispatches: a built-in task (`tirl.data.tasks`), a local path or a hub id (`tirl.data.user_data`);
`limit` takes a seeded random subset. `to_trl` writes rows in TRL's dataset formats: a built-in task's plain-string
prompt/completion rows become a user/assistant conversation when the tokenizer has a chat template (else the prompt
followed by a newline), as the built-in tasks are defined; a user's plain-string rows stay plain text, as `trl sft`
trains them, unless `chat` asks for the conversation (`--wrap_in_chat_template`); `messages`, conversational
prompt/completion and `text` rows pass through.
"""

from __future__ import annotations

import inspect
import os
import random

from .tasks import TASKS
from .user_data import load_hub, load_local


def load_rows(
    name_or_path: str,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    skip_bad_rows: bool = False,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    reference_field: str | None = None,
    config: str | None = None,
    streaming: bool = False,
    text_field: str = "text",
) -> list[dict]:
    """Rows of a built-in task, a local file or directory, or a hub dataset (`config`, `streaming`: its
    `datasets.load_dataset` options); `limit` takes a seeded random subset (with `streaming`, the stream's first
    rows). `text_field`: the column of a user's language-modelling rows (TRL's `dataset_text_field`)."""
    if name_or_path in TASKS:
        loader = TASKS[name_or_path]
        # each loader takes the subset of these it understands (a generated task makes exactly `n` rows)
        offered = {"split": split, "seed": seed, "skip_bad_rows": skip_bad_rows, "n": limit}
        accepted = inspect.signature(loader).parameters
        rows = loader(**{k: v for k, v in offered.items() if k in accepted and not (k == "n" and v is None)})
    elif os.path.exists(name_or_path):
        rows, report = load_local(name_or_path, prompt_field, completion_field, reference_field, skip_bad_rows, split,
                                  text_field)
        if report.skipped:
            print(f"[tirl] {report.summary()}")
    else:
        rows = load_hub(name_or_path, split, config, streaming, limit, prompt_field, completion_field,
                        reference_field, skip_bad_rows, text_field)
    if limit is not None and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    return rows


def is_builtin(name_or_path: str) -> bool:
    return name_or_path in TASKS


def to_trl(rows: list[dict], tokenizer, chat: bool | None = None, text_field: str = "text") -> list[dict]:
    """Rows in TRL's formats (module docstring). `chat`: render plain-string prompt/completion rows as a user/assistant
    conversation; None (the built-in tasks' rule): whenever the tokenizer has a chat template, else the prompt plus a
    newline. `chat=False` leaves them as they are (`trl sft`'s plain text). `text_field`: the column TRL reads
    language-modelling rows from (the config's `dataset_text_field`)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    out = []
    for r in rows:
        if "messages" in r:
            out.append({"messages": r["messages"]})
        elif "text" in r:
            out.append({text_field: r["text"]})
        elif isinstance(r["prompt"], list):
            out.append({"prompt": r["prompt"], "completion": r["completion"]})
        elif (has_template if chat is None else chat and has_template):
            out.append({"prompt": [{"role": "user", "content": r["prompt"]}],
                        "completion": [{"role": "assistant", "content": r["completion"]}]})
        elif chat is None:
            out.append({"prompt": r["prompt"] + "\n", "completion": r["completion"]})
        else:
            out.append({"prompt": r["prompt"], "completion": r["completion"]})
    return out


__all__ = ["is_builtin", "load_rows", "to_trl"]
