"""Nothing is dropped silently: which rows TRL's dataset preparation skipped, and which completions it cut.

TRL drops examples whose completion is entirely cut by `max_length` (e.g. a prompt longer than `max_length`) and
does so quietly. Before the trainer hands its datasets to TRL, `track_rows` numbers their rows (a column that survives
TRL's preparation); after, `report_rows` names the dropped rows in a warning (by their `SOURCE_COLUMN` entry, e.g.
`FILE:LINE`, when the dataset has one, else by row index), makes a dataset left with no trainable token an error, and
counts the completions that lose their EOS to truncation, with the EOS ids the loss uses (their last TD term is
dropped, see `tirl.losses.mdp`). Both run outside TRL: no hook of TRL's is overridden.

A prompt so long that it alone fills `max_length` (`overlong_prompts`) is dropped by `track_rows` before TRL
tokenises it: the tokens of a 20 MB prompt would take gigabytes before TRL dropped the row. Only a bounded prefix of it
is tokenised, and it is reported with the rows TRL drops, so the count stays exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

from ..losses import IGNORE_INDEX

ROW_COLUMN = "_tirl_row"
# optional column: where each row came from (`FILE:LINE`), so a dropped row is named by its place in the user's file
SOURCE_COLUMN = "_tirl_source"


class NoTrainableTokensError(ValueError):
    """No example of a dataset has a completion token left to learn from."""


@dataclass
class TrackedRows:
    """A dataset's rows before TRL prepared it: how many, and where each came from (None: by index)."""

    size: int
    sources: list[str] | None


def track_rows(dataset, packing: bool, tokenizer=None, prompt_limit: int | None = None, name: str = "train"):
    """`dataset` without its `SOURCE_COLUMN` and with each row's index in `ROW_COLUMN`, and what `report_rows` needs;
    (dataset, None) where rows cannot be followed through preparation (not a `Dataset`, pre-tokenised, packed).
    `prompt_limit` (where a prompt that fills `max_length` leaves its row nothing to train on, `prompt_limit_of`):
    the rows whose prompt alone is longer (`overlong_prompts`, with `tokenizer`) are left out already."""
    if not isinstance(dataset, Dataset):
        return dataset, None
    sources = None
    if SOURCE_COLUMN in dataset.column_names:
        sources = dataset[SOURCE_COLUMN]
        dataset = dataset.remove_columns(SOURCE_COLUMN)
    if "input_ids" in dataset.column_names or packing:
        return dataset, None
    size = len(dataset)
    dataset = dataset.add_column(ROW_COLUMN, list(range(size)))
    if tokenizer is not None and prompt_limit is not None and "prompt" in dataset.column_names:
        overlong = set(overlong_prompts(dataset["prompt"], tokenizer, prompt_limit))
        if len(overlong) == size:
            raise _nothing_left(size, name, prompt_limit)
        if overlong:
            dataset = dataset.select([i for i in range(size) if i not in overlong])
    return dataset, TrackedRows(size, sources)


def prompt_limit_of(args) -> int | None:
    """`max_length` where TRL drops a row whose prompt fills it (keeping the start, and training on completions only),
    else None."""
    if args.max_length is None or args.truncation_mode != "keep_start" or args.completion_only_loss is False:
        return None
    return args.max_length


# No tokenizer turns more than this many characters into one token on average: a prompt longer than
# max_length × this is tokenised only that far, to see whether it fills max_length already
CHARS_PER_TOKEN = 32
# a prefix may end mid-word, where it tokenises differently from the whole prompt: its count must clear max_length by
# this much
PREFIX_MARGIN = 16


def overlong_prompts(prompts: Sequence, tokenizer, max_length: int) -> list[int]:
    """The indices of the prompts (strings, or conversations whose contents are strings) whose tokens alone exceed
    `max_length`, found by tokenising at most `max_length × CHARS_PER_TOKEN` characters of each; a prompt shorter
    than that is left for TRL to tokenise and judge."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor's text tokenizer
    chars = max_length * CHARS_PER_TOKEN
    found = []
    for i, prompt in enumerate(prompts):
        text = prompt if isinstance(prompt, str) else "".join(
            m["content"] for m in prompt or () if isinstance(m, dict) and isinstance(m.get("content"), str))
        if len(text) > chars:
            ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
            if len(ids) >= max_length + PREFIX_MARGIN:
                found.append(i)
    return found


def _nothing_left(size: int, name: str, max_length: int | None) -> NoTrainableTokensError:
    return NoTrainableTokensError(
        f"none of the {size} {name} examples has a completion token to learn from after tokenization "
        f"and truncation to max_length={max_length} (prompt longer than max_length, an empty completion, or "
        "a chat template that masks every token). Raise --max_length or check the data."
    )


def ends_with_eos(labels: Sequence[int], eos: set[int]) -> bool:
    """Whether the last completion segment of a label row contains EOS (template tokens may follow it)."""
    seen = False
    for tok in reversed(labels):
        if tok == IGNORE_INDEX:
            if seen:
                break
            continue
        seen = True
        if tok in eos:
            return True
    return False


def report_rows(prepared: Dataset, tracked: TrackedRows, name: str, max_length: int | None,
                eos_token_ids: Sequence[int]) -> tuple[Dataset, list[int]]:
    """Warn about the rows TRL dropped and the completions it cut (see the module docstring); raise
    `NoTrainableTokensError` when no row is left. Returns the dataset without `ROW_COLUMN` and the dropped rows."""
    kept = prepared[ROW_COLUMN]
    dropped = sorted(set(range(tracked.size)) - set(kept))
    if not kept:
        raise _nothing_left(tracked.size, name, max_length)
    if dropped:
        sources = tracked.sources
        shown = ", ".join(sources[i] if sources else str(i) for i in dropped[:10]) + (" ..." if len(dropped) > 10 else "")
        warnings.warn(
            f"{len(dropped)} of {tracked.size} {name} examples were skipped because truncation to "
            f"max_length={max_length} left them no completion token ({'' if sources else 'rows '}{shown}); "
            "raise --max_length to keep them.",
            stacklevel=3,
        )
    eos = set(eos_token_ids)
    if eos:
        cut = sum(1 for labels in prepared["labels"] if not ends_with_eos(labels, eos))
        if cut:
            warnings.warn(
                f"{cut} of {len(kept)} {name} completions do not end with EOS (cut by max_length={max_length}, or "
                "a chat template that does not end the turn with EOS); they are treated as truncated: their last TD "
                "term is dropped.",
                stacklevel=3,
            )
    return prepared.remove_columns(ROW_COLUMN), dropped


__all__ = ["ROW_COLUMN", "SOURCE_COLUMN", "NoTrainableTokensError", "TrackedRows", "ends_with_eos", "overlong_prompts",
           "prompt_limit_of", "report_rows", "track_rows"]
