"""Preference pairs (prompt, chosen, rejected) in TRL's DPO format, for reward evaluation.

`load_preferences("hh_rlhf")` reads Anthropic HH-RLHF harmless-base test pairs (the local copy `hh_rlhf/`, else the hub's
`Anthropic/hh-rlhf`, `data_dir="harmless-base"`, test split; `tirl.data.sources`): each
"\\n\\nHuman: … \\n\\nAssistant: …" dialogue becomes a message list; the turns before the final assistant turn are the
prompt, the final assistant turns of the chosen and rejected dialogues are the two completions. Pairs whose two
dialogues do not share that prefix (5 of 2,312) are skipped and counted. Any local JSONL/JSON with `prompt`, `chosen`
and `rejected` (strings or message lists) works too.
"""

from __future__ import annotations

import os
import random
import re

from . import sources
from .io import DataError, read_records

TURN = re.compile(r"\n\n(Human|Assistant): ")


def hh_dialogue_to_messages(text: str) -> list[dict]:
    """"\\n\\nHuman: a\\n\\nAssistant: b" → [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]."""
    parts = TURN.split(text)
    if parts[0].strip():
        raise DataError(f"dialogue does not start with a Human/Assistant turn: {text[:60]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def load_hh_rlhf(limit: int | None = None, seed: int = 0) -> tuple[list[dict], int]:
    """HH-RLHF harmless-base test pairs as (rows, skipped)."""
    local = sources.local_copy("hh_rlhf")
    if local is not None and (local / "harmless-base-test.jsonl.gz").is_file():
        records, _ = read_records(local / "harmless-base-test.jsonl.gz")
    else:
        rows = sources.hub_dataset("hh_rlhf", "hh_rlhf", "Anthropic/hh-rlhf", "test", data_dir="harmless-base")
        records = [(f"Anthropic/hh-rlhf[harmless-base][test][{i}]", r) for i, r in enumerate(rows)]
    rows, skipped = [], 0
    for loc, rec in records:
        chosen, rejected = hh_dialogue_to_messages(rec["chosen"]), hh_dialogue_to_messages(rec["rejected"])
        if (len(chosen) < 2 or chosen[-1]["role"] != "assistant" or chosen[:-1] != rejected[:-1]
                or rejected[-1]["role"] != "assistant"):
            skipped += 1
            continue
        rows.append({"id": loc, "prompt": chosen[:-1], "chosen": [chosen[-1]], "rejected": [rejected[-1]]})
    if limit is not None and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    return rows, skipped


def load_preferences(name_or_path: str, limit: int | None = None, seed: int = 0) -> tuple[list[dict], int]:
    """Preference rows from `hh_rlhf` or a local file with prompt/chosen/rejected fields, as (rows, skipped)."""
    if name_or_path == "hh_rlhf":
        return load_hh_rlhf(limit, seed)
    if not os.path.exists(name_or_path):
        raise DataError(f"{name_or_path!r} is neither 'hh_rlhf' nor a local file")
    records, _ = read_records(name_or_path)
    rows = []
    for loc, rec in records:
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise DataError(f"{loc}: missing field(s) {missing} (preference rows need prompt, chosen, rejected)")
        rows.append({"id": loc, "prompt": rec["prompt"], "chosen": rec["chosen"], "rejected": rec["rejected"]})
    if limit is not None and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    return rows, 0
