"""log q(y|x) of given completions of one prompt, as training renders them, with the prompt read once.

A many-answer task's held-out expert NLL scores every valid answer of each prompt (`tirl.evaluation.metrics.
expert_nll_scores`): a few short completions behind one long prompt. The prompt's key/value cache is computed once and
repeated for the completions, so the cost is one prompt pass plus the completions' own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from ..data import to_trl
from ..data.tokenize import encode_prompt_completion
from ..generation import eval_mode
from ..losses import IGNORE_INDEX


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompt: str | list[dict], completions: Sequence[str],
                        eos_token_ids: Sequence[int], autocast_bf16: bool = False) -> list[float]:
    """Σ_t log π(y_t | x, y_<t) for each completion y of `prompt`, over its tokens up to and including the first EOS
    (what a sample that stops at EOS consists of), rendered and tokenised as training renders them (`to_trl`,
    `encode_prompt_completion`)."""
    if not completions:
        return []
    rows = to_trl([{"prompt": prompt, "completion": c} for c in completions], tokenizer)
    encoded = [encode_prompt_completion(tokenizer, r["prompt"], r["completion"]) for r in rows]
    n_prompt = min(next(i for i, x in enumerate(e["labels"]) if x != IGNORE_INDEX) for e in encoded)
    if n_prompt < 2 or any(e["input_ids"][:n_prompt] != encoded[0]["input_ids"][:n_prompt] for e in encoded):
        raise ValueError("the completions do not share their prompt's tokens")
    eos = set(eos_token_ids)
    device = next(model.parameters()).device
    # the cache holds the prompt but its last token, which is read with the completions (its logits predict y_1)
    rest = [e["input_ids"][n_prompt - 1 :] for e in encoded]
    width = max(len(r) for r in rest)
    ids = torch.zeros((len(rest), width), dtype=torch.long)
    mask = torch.zeros((len(rest), n_prompt - 1 + width), dtype=torch.long)
    mask[:, : n_prompt - 1] = 1
    for i, r in enumerate(rest):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, n_prompt - 1 : n_prompt - 1 + len(r)] = 1
    positions = torch.arange(n_prompt - 1, n_prompt - 1 + width).expand(len(rest), -1)
    from transformers import DynamicCache

    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast_bf16 else nullcontext()
    with eval_mode(model), amp:
        cache = DynamicCache(config=getattr(model, "config", None))
        prefix = torch.tensor([encoded[0]["input_ids"][: n_prompt - 1]], device=device)
        model(input_ids=prefix, cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(rest))
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       cache=cache, use_cache=True).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1).cpu()
    out = []
    for i, r in enumerate(rest):
        total = 0.0
        for j, token in enumerate(r[1:]):
            total += float(logp[i, j])
            if token in eos:
                break
        out.append(total)
    return out


__all__ = ["completion_logprobs"]
