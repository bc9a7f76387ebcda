"""Task scores and diversity measures: small pure functions on strings and numbers (no model, no files).

Scales follow the tools users know: accuracies and distinct-n are fractions in [0, 1]; ROUGE, BLEU, chrF and
Self-BLEU are on sacreBLEU's 0–100 scale; entropies are in nats.

- GSM8k: `gsm8k_extract`, `gsm8k_accuracy`, `gsm8k_pass_at_k` — lm-evaluation-harness's `strict-match` and
  `flexible-extract` filters and its `exact_match` normalisation, verbatim (see the constants below).
- Summaries: `rouge`, `sentence_rouge` — Google's `rouge-score`, stemming on, reference first, `rougeLsum` on
  newline-split sentences.
- Translation: `bleu`, `chrf` — sacreBLEU corpus scores with its defaults (13a tokenizer, chrF with β = 2, n = 6);
  `sentence_bleu`, `sentence_chrf` for one pair.
- Diversity: `self_bleu` (per prompt over its K samples, never a sample against itself), `distinct_n`,
  `mean_token_entropy` (with `token_entropy` to compute per-token entropies from logits).
- Many-answer tasks (`tirl.data.many_answer`, a known valid set per prompt): `pass_at_k` (the unbiased estimator),
  `valid_set_scores` (precision, coverage, pass@k for k = 1…K), `expert_nll_scores` (held-out expert NLL = forward
  KL + log|valid|).

Which of them `tirl eval` computes for a task is its metric family's choice (`tirl.evaluation.families`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

# lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml (version 3.0): the two filters and the exact_match options
GSM8K_STRICT_REGEX = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE_REGEX = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORE_REGEXES = (",", r"\$", r"(?s).*#### ", r"\.$")
GSM8K_FALLBACK = "[invalid]"


# --------------------------------------------------------------------------------------------------------------------
# GSM8k
# --------------------------------------------------------------------------------------------------------------------


def gsm8k_extract(text: str) -> tuple[str | None, str | None]:
    """The `(strict, flexible)` answers lm-evaluation-harness reads from a generation; `None` where there is none.

    strict: the first match of `#### (-?[0-9.,]+)` (the GSM8k answer line), group 1.
    flexible: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` anywhere in the text (its first non-empty group), so
    "... is $1,234." gives "$1,234." and "so 5 apples" gives "5". Both are returned raw, stripped of whitespace;
    `gsm8k_normalize` makes them comparable.
    """
    strict = GSM8K_STRICT_REGEX.search(text)
    flexible = GSM8K_FLEXIBLE_REGEX.findall(text)
    flex = None
    if flexible:
        groups = [g for g in flexible[-1] if g]
        flex = groups[0].strip() if groups else None
    return (strict.group(1).strip() if strict else None), flex


def gsm8k_normalize(answer: str) -> str:
    """lm-eval's `exact_match` normalisation: delete `,`, `$`, everything up to `#### `, and one trailing `.`; lowercase."""
    for pattern in GSM8K_IGNORE_REGEXES:
        answer = re.sub(pattern, "", answer)
    return answer.strip().lower()


def gsm8k_correct(text: str, reference: str) -> tuple[bool, bool]:
    """Whether the generation's (strict, flexible) answer equals the reference after `gsm8k_normalize`.

    A generation with no answer counts as wrong (lm-eval's "[invalid]" fallback never matches a number).
    """
    ref = gsm8k_normalize(reference)
    return tuple(a is not None and gsm8k_normalize(a) == ref for a in gsm8k_extract(text))  # type: ignore[return-value]


def gsm8k_accuracy(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy of `preds` against the gold numbers `refs`, for both filters.

    Returns `{"accuracy_strict", "accuracy_flexible", "answer_rate_strict", "n"}`: accuracy = (1/n)·Σ 1[answer_i = ref_i];
    `answer_rate_strict` is the fraction of generations that contain a `#### n` line at all (a format check).
    """
    _same_length(preds, refs)
    if not preds:
        raise ValueError("gsm8k_accuracy needs at least one prediction")
    strict = flexible = answered = 0
    for p, r in zip(preds, refs, strict=True):
        s, f = gsm8k_correct(p, r)
        strict += s
        flexible += f
        answered += gsm8k_extract(p)[0] is not None
    n = len(preds)
    return {"accuracy_strict": strict / n, "accuracy_flexible": flexible / n, "answer_rate_strict": answered / n, "n": n}


def gsm8k_pass_at_k(samples_per_prompt: Sequence[Sequence[str]], refs: Sequence[str]) -> dict[str, float]:
    """Fraction of prompts where ANY of their K samples is correct ("pass@K" with exactly K samples), per filter.

    With K samples drawn per prompt this is the plain estimator 1[∃ i: sample_i correct] averaged over prompts; it is
    not the unbiased pass@k of Chen et al. for k < K.
    """
    _same_length(samples_per_prompt, refs)
    strict = flexible = 0
    for samples, ref in zip(samples_per_prompt, refs, strict=True):
        marks = [gsm8k_correct(s, ref) for s in samples]
        strict += any(m[0] for m in marks)
        flexible += any(m[1] for m in marks)
    n = len(refs)
    return {"pass_at_k_strict": strict / n, "pass_at_k_flexible": flexible / n}


# --------------------------------------------------------------------------------------------------------------------
# Many-answer tasks: diversity with a right answer
# --------------------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of Chen et al. (2021): the chance that k of n samples, drawn without replacement, hold at
    least one of the c right ones: 1 − C(n − c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def valid_set_scores(answers_per_prompt: Sequence[Sequence[str | None]], valid_sizes: Sequence[int]) -> dict:
    """Scores of K samples per prompt on a task with a known valid set; each sample is its valid answer, written
    canonically, or None when it is not valid.

        precision  = the fraction of samples that are valid
        coverage   = mean over prompts of |distinct valid answers among the K| / min(K, |valid set|)
        pass_at_k  = [pass@1, …, pass@K], each the mean over prompts of `pass_at_k(K, #valid samples, k)`
    """
    _same_length(answers_per_prompt, valid_sizes)
    if not answers_per_prompt:
        raise ValueError("valid_set_scores needs at least one prompt")
    k = min(len(a) for a in answers_per_prompt)
    flat = [a for answers in answers_per_prompt for a in answers]
    coverage = [len({a for a in answers if a is not None}) / min(len(answers), size)
                for answers, size in zip(answers_per_prompt, valid_sizes, strict=True)]
    curve = [sum(pass_at_k(len(a), sum(x is not None for x in a), j) for a in answers_per_prompt) / len(valid_sizes)
             for j in range(1, k + 1)]
    return {"precision": sum(a is not None for a in flat) / len(flat), "coverage": sum(coverage) / len(coverage),
            "pass_at_k": curve}


def memorisation_scores(answers_per_prompt: Sequence[Sequence[str | None]],
                        demonstrated: Sequence[set[str] | frozenset[str] | None]) -> dict:
    """How much of what a model samples on its own training prompts repeats that prompt's demonstrations. Each sample
    is its valid answer written canonically, or None; `demonstrated[i]` is the set of answers prompt i was trained on
    (None or empty: not a training prompt, left out).

        demonstrated  = the fraction of samples that repeat one of the prompt's demonstrations
        novel_valid   = the fraction of samples that are valid answers never demonstrated for the prompt
        prompts       = how many prompts had demonstrations

    A uniform expert over |V| valid answers with d distinct demonstrations puts d/|V| of its samples on them; a model
    that memorises its training set puts all of them there. Both fractions are None when no prompt had any."""
    _same_length(answers_per_prompt, demonstrated)
    pairs = [(answers, demos) for answers, demos in zip(answers_per_prompt, demonstrated, strict=True) if demos]
    flat = [(a, demos) for answers, demos in pairs for a in answers]
    if not flat:
        return {"demonstrated": None, "novel_valid": None, "prompts": 0}
    repeated = sum(a is not None and a in demos for a, demos in flat)
    novel = sum(a is not None and a not in demos for a, demos in flat)
    return {"demonstrated": repeated / len(flat), "novel_valid": novel / len(flat), "prompts": len(pairs)}


def expert_nll_scores(logprobs_per_prompt: Sequence[Sequence[float]]) -> dict[str, float]:
    """The held-out NLL of a uniform expert from log q(y|x) of every valid answer y of each prompt:

        expert_nll = mean over prompts of −(1/|V|)·Σ_{y∈V} log q(y|x)
                   = mean over prompts of KL(uniform(V) ‖ q(·|x)) + log|V|       (exactly)

    so `forward_kl` = expert_nll − mean log|V|, and 0 only for a model that is the expert."""
    if not logprobs_per_prompt or any(not lp for lp in logprobs_per_prompt):
        raise ValueError("expert_nll_scores needs every prompt's valid answers scored")
    nll = [-sum(lp) / len(lp) for lp in logprobs_per_prompt]
    log_v = [math.log(len(lp)) for lp in logprobs_per_prompt]
    n = len(nll)
    return {"expert_nll": sum(nll) / n, "forward_kl": sum(a - b for a, b in zip(nll, log_v, strict=True)) / n,
            "mean_log_valid": sum(log_v) / n}


# --------------------------------------------------------------------------------------------------------------------
# ROUGE, BLEU, chrF
# --------------------------------------------------------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)


def rouge(preds: Sequence[str], refs: Sequence[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE F1 (×100) over pairs: `rouge1`, `rouge2`, `rougeL` and `rougeLsum`, with Google's `rouge-score`.

    Each pair is scored as `RougeScorer.score(target=ref, prediction=pred)` (the target comes first in that API), with
    the Porter stemmer by default, and the per-pair F-measures are averaged (no bootstrap). `rougeLsum` treats the
    lines of each text as its sentences (union-LCS over them), rouge-score's convention; a text without newlines is
    one sentence, and then `rougeLsum == rougeL`. Tokens are lowercase ASCII letters and digits only, so the score
    is meaningful for English text. Checked against the XSum paper's published scores (tests/test_metrics.py).
    """
    _same_length(preds, refs)
    if not preds:
        raise ValueError("rouge needs at least one prediction")
    scorer = _rouge_scorer(use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for p, r in zip(preds, refs, strict=True):
        scores = scorer.score(r, p)
        for k in ROUGE_TYPES:
            totals[k] += scores[k].fmeasure
    return {k: 100.0 * v / len(preds) for k, v in totals.items()}


def sentence_rouge(pred: str, ref: str) -> dict[str, float]:
    """ROUGE F1 (×100) of one pair, as `rouge` scores each pair: `rouge1`, `rouge2` and `rougeLsum`."""
    scores = _rouge_scorer(True).score(ref, pred)
    return {k: 100.0 * scores[k].fmeasure for k in ("rouge1", "rouge2", "rougeLsum")}


def _as_reference_streams(refs: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """sacreBLEU wants one list per reference *set*; accept one reference per prediction or a list per prediction."""
    if refs and not isinstance(refs[0], str):
        counts = {len(r) for r in refs}
        if len(counts) != 1:
            raise ValueError("every prediction needs the same number of references")
        return [list(stream) for stream in zip(*refs, strict=True)]
    return [list(refs)]  # type: ignore[arg-type]


def bleu(preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], tokenize: str = "13a") -> float:
    """Corpus BLEU (0–100) with sacreBLEU's defaults: 4-grams, brevity penalty, no smoothing, `13a` tokenizer.

    BLEU = BP · exp(¼ Σ_{n=1..4} log p_n), with p_n the clipped n-gram precision over the whole corpus and
    BP = min(1, exp(1 − r/c)). `refs[i]` is one reference string, or a list of references for prediction i.
    """
    import sacrebleu

    _same_length(preds, refs)
    return float(sacrebleu.corpus_bleu(list(preds), _as_reference_streams(refs), tokenize=tokenize).score)


def chrf(preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Corpus chrF (0–100) with sacreBLEU's defaults: character 6-grams, β = 2 (recall weighted twice), no word n-grams."""
    import sacrebleu

    _same_length(preds, refs)
    return float(sacrebleu.corpus_chrf(list(preds), _as_reference_streams(refs)).score)


def sentence_bleu(pred: str, ref: str) -> float:
    """sacreBLEU's sentence BLEU (0–100) of one pair: its defaults, exp smoothing and effective order."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(pred, [ref]).score)


def sentence_chrf(pred: str, ref: str) -> float:
    """sacreBLEU's sentence chrF (0–100) of one pair, with `chrf`'s settings."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(pred, [ref]).score)


# --------------------------------------------------------------------------------------------------------------------
# Diversity
# --------------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _sentence_bleu_metric(n: int):
    from sacrebleu.metrics import BLEU

    return BLEU(max_ngram_order=n, smooth_method="exp", effective_order=True, tokenize="13a")


def self_bleu(samples_per_prompt: Sequence[Sequence[str]], n: int = 4) -> float:
    """Self-BLEU-n (0–100; lower = more diverse): how alike the K samples of one prompt are, averaged over prompts.

    Self-BLEU = mean over prompts p of [ (1/K_p) Σ_i BLEU(s_{p,i}; references = {s_{p,j} : j ≠ i}) ].
    Each sample is scored against the OTHER samples of its prompt only — never against itself (Texygen's known
    pitfall) and never across prompts. BLEU is sacreBLEU's sentence BLEU with n-gram order `n`, its `13a`
    tokenizer, 'exp' smoothing (NIST: the k-th n-gram order with no match gets precision 1/(2^k · total)) and
    effective order (short samples use only the n-gram orders they have); a sample sharing no word with the others
    scores exactly 0, and K identical non-empty samples score 100. Prompts with fewer than two samples are ignored;
    if no prompt has two, the result is NaN.
    """
    metric = _sentence_bleu_metric(n)
    per_prompt = []
    for samples in samples_per_prompt:
        if len(samples) < 2:
            continue
        scores = [metric.sentence_score(s, [o for j, o in enumerate(samples) if j != i]).score for i, s in enumerate(samples)]
        per_prompt.append(sum(scores) / len(scores))
    return sum(per_prompt) / len(per_prompt) if per_prompt else math.nan


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n (Li et al., 2016): |unique n-grams| / |n-grams| over all `texts` pooled, in [0, 1].

    Tokens are whitespace-separated words, case kept; n-grams never cross from one text into the next. Returns 0.0
    when the texts have no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        words = text.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def token_entropy(logits):
    """Entropy H(π(·|s_t)) = −Σ_a π(a|s_t) log π(a|s_t) in nats of softmax(logits) over the last axis.

    `logits` [..., V] (any float dtype; computed in float32) → [...]. −inf logits (masked actions) contribute 0.
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


def mean_token_entropy(sample_entropies: Sequence[float], sample_lengths: Sequence[int]) -> float:
    """Token-weighted mean entropy (nats) over samples: Σ_i H̄_i·T_i / Σ_i T_i, with H̄_i sample i's mean per-token
    entropy and T_i its number of tokens (so every generated token counts once). NaN when there are no tokens."""
    _same_length(sample_entropies, sample_lengths)
    tokens = sum(sample_lengths)
    if tokens == 0:
        return math.nan
    return sum(h * t for h, t in zip(sample_entropies, sample_lengths, strict=True) if t) / tokens


def diversity_scores(samples_per_prompt: Sequence[Sequence[str]], self_bleu_n: int = 4) -> dict[str, float]:
    """`self_bleu` (per prompt, NaN when K < 2) and pooled `distinct_1`, `distinct_2` over all the texts of a pass."""
    flat = [s for samples in samples_per_prompt for s in samples]
    return {"self_bleu": self_bleu(samples_per_prompt, n=self_bleu_n),
            "distinct_1": distinct_n(flat, 1), "distinct_2": distinct_n(flat, 2)}


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} predictions but {len(b)} references")
