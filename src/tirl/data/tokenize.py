"""Tokenising a (prompt, completion) pair exactly as TRL's SFTTrainer does for training.

Reward extraction and scoring must see the same tokens, chat template and completion mask the model was trained on;
`tests/test_tokenize.py` checks this function against TRL's own dataset preparation.
"""

from __future__ import annotations

from ..losses.mdp import IGNORE_INDEX

Prompt = str | list[dict]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share: where a completion starts after its prompt (TRL's rule, written here
    so that tokenisation does not depend on a helper outside TRL's documented API)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def messages_to_text(messages: list[dict]) -> str:
    """A plain-text rendering of messages for tokenizers without a chat template ("Role: content" blocks)."""
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)


def encode_prompt_completion(tokenizer, prompt: Prompt, completion: Prompt) -> dict[str, list[int]]:
    """`input_ids` and `labels` (−100 on the prompt) for one pair, as TRL tokenises prompt/completion rows.

    Conversational pairs (message lists) go through the chat template: the prompt with the generation prompt, then
    prompt + completion, and the completion starts where the two diverge. Plain strings get EOS appended to the
    completion when missing. Message lists given to a tokenizer without a chat template are flattened to text.
    """
    conversational = isinstance(prompt, list) or isinstance(completion, list)
    if conversational and getattr(tokenizer, "chat_template", None) is None:
        prompt = prompt if isinstance(prompt, str) else messages_to_text(prompt)
        completion = completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
        conversational = False
    if conversational:
        prompt_msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        completion_msgs = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        prompt_ids = tokenizer.apply_chat_template(prompt_msgs, tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"]
        full_ids = tokenizer.apply_chat_template(prompt_msgs + completion_msgs, tokenize=True, return_dict=True)["input_ids"]
    else:
        eos = tokenizer.eos_token or ""
        if not completion.endswith(eos):
            completion = completion + eos
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + completion)["input_ids"]
    n = common_prefix_length(prompt_ids, full_ids)
    return {"input_ids": list(full_ids), "labels": [IGNORE_INDEX] * n + list(full_ids[n:])}
