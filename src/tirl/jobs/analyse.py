"""The `tirl rewards analyse` job: do a checkpoint's implicit rewards track task quality? (docs/method.md §4)

1. Sample K completions per prompt (with `tirl.evaluation`, from `samples_from`, by default the first model), or read
   a `generations.jsonl` that `tirl eval` wrote; each completion carries its own task score (GSM8k correctness,
   sentence ROUGE-1, sentence BLEU).
2. Score every completion's sequence reward R = Σ r_t under each model (the same completions for every model, so the
   comparison is about the rewards, not about what each model happened to generate). Completions cut by
   `max_new_tokens` are scored as truncated.
3. Spearman and Pearson correlation of R with the task score over all completions, and Spearman within each prompt's
   K samples (averaged over prompts where both vary), which removes prompt difficulty from the picture; the same for
   the sequence log-likelihood Σ log π as the reference a reward must beat.
4. Preference accuracy on chosen/rejected pairs for each model: HH-RLHF, a local file, or `demonstrations` (the
   task's reference completion against each wrong sample of the same prompt: the reward was fitted to prefer
   demonstrations, so this is the first thing it should get right).
5. Pictures: R for correct vs wrong completions (or R against the score), completions coloured by r_t.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..data.preferences import load_preferences
from ..data.tasks import task_metric
from ..evaluation.families import MetricFamily, metric_family
from ..evaluation.sampling import encode_prompt
from ..files import safe_path, write_json_atomic, write_text_atomic
from ..rewards.analysis import analysis_markdown, correlations, demonstration_pairs, preference_accuracy
from ..rewards.extraction import ScoreSettings, encode_generated, load_reward_model, score_encoded
from ..rewards.pictures import render_html, reward_histogram, reward_scatter
from .eval import EvalSettings, generations_chat, read_generations, read_generations_file, run_eval


@dataclass
class AnalyseSettings:
    models: list[str]
    labels: list[str] = field(default_factory=list)
    dataset: str = "gsm8k"
    split: str = "test"
    # how the completions are sampled; with `generations`, analyse() puts the file's own values here (None: the file
    # does not say; `generations_sampling`)
    num_examples: int | None = 50
    samples: int | None = 4
    temperature: float | None = 1.0
    max_new_tokens: int | None = 256
    batch_size: int = 32
    seed: int = 0
    gamma: float | None = None  # None: each run's own iq_gamma (`Objective.mle()`'s for models that are not tirl runs)
    bf16: bool | None = None  # None: where the hardware computes bf16 natively (tirl.hardware.fast_bf16)
    samples_from: str | None = None
    generations: str | None = None
    preference: str | None = "hh_rlhf"
    num_pairs: int = 200
    num_render: int = 8
    output_dir: str = "reward-analysis"

    def __post_init__(self) -> None:
        if self.bf16 is None:
            from ..hardware import fast_bf16

            self.bf16 = fast_bf16()


# the sampling settings a generations file records, and how AnalyseSettings names them
SAMPLING = {"samples": "samples", "temperature": "temperature", "max_new_tokens": "max_new_tokens",
            "num_examples": "num_examples", "model": "samples_from"}


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def generations_sampling(path: str | Path, records: list[dict]) -> tuple[dict, str]:
    """How the completions of a generations file were sampled (`SAMPLING`'s keys, in AnalyseSettings' names), and
    where that was read: the `eval_config.json` that `tirl eval` wrote beside it, else its `metrics.json`, else the
    records themselves (K, as the samples per prompt; the rest is unknown: None)."""
    path = Path(path)
    for name, section in (("eval_config.json", None), ("metrics.json", "settings")):
        data = _json_object(path.parent / name)
        data = data.get(section) if section else data
        if isinstance(data, dict) and "samples" in data and "temperature" in data:
            return {ours: data.get(theirs) for theirs, ours in SAMPLING.items()}, name
    per_prompt: dict = {}
    for r in records:
        if r.get("pass", "sampled") == "sampled" and isinstance(r.get("sample_index"), int):
            per_prompt[r.get("prompt_index")] = max(per_prompt.get(r.get("prompt_index"), 0), r["sample_index"] + 1)
    return {**dict.fromkeys(SAMPLING.values()), "samples": max(per_prompt.values()) if per_prompt else None,
            "num_examples": len(per_prompt) or None}, "the records (no eval_config.json or metrics.json beside them)"


def _sampled_records(s: AnalyseSettings, out: Path) -> tuple[list[dict], MetricFamily, str, str, int]:
    """The sampled completions with their scores, the metric family, the dataset and the split they came from, and how
    many lines of a `--generations` file were torn (its last, by a `tirl eval` that was stopped mid-write: skipped,
    named and counted, as `tirl rewards` does)."""
    torn = 0
    if s.generations:
        records, torn_line = read_generations_file(s.generations)
        if torn_line is not None:
            torn = 1
            print(f"[tirl] {s.generations}:{torn_line}: a torn last line (cut short while `tirl eval` wrote it) is "
                  "skipped")
        config = _json_object(Path(s.generations).parent / "eval_config.json")
        dataset, split = config.get("dataset", s.dataset), config.get("split", s.split)
    else:
        settings = EvalSettings(model=s.samples_from or s.models[0], dataset=s.dataset, split=s.split,
                                num_examples=s.num_examples, samples=s.samples, temperature=s.temperature,
                                greedy=False, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=s.seed,
                                bf16=s.bf16, output_dir=str(safe_path(out, "samples")))
        run_eval(settings)
        records = read_generations(safe_path(out, "samples") / "generations.jsonl")
        dataset, split = s.dataset, s.split
    records = [r for r in records if r.get("pass") == "sampled"] or records
    if not records:
        raise ValueError("no sampled completions to analyse")
    return records, metric_family(task_metric(dataset)), dataset, split, torn


def _with_tokens(records: list[dict]) -> tuple[list[dict], int]:
    """The completions that have a token to score (a sample without one has no reward), and how many had none."""
    kept = [r for r in records if r.get("token_ids")]
    return kept, len(records) - len(kept)


def _score_value(record: dict, family: MetricFamily) -> float:
    value = record.get("scores", {}).get(family.sample_score or "")
    if value is None:
        raise ValueError(f"the generations carry no per-sample {family.sample_score!r} score")
    return float(value)


def analyse(s: AnalyseSettings) -> dict:
    """Run the whole analysis and write analysis.json, analysis.md and the pictures into `s.output_dir`."""
    out = Path(s.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = s.labels or [Path(m).name or m for m in s.models]
    if len(labels) != len(s.models):
        raise ValueError("give one label per model")
    records, family, dataset, split, torn = _sampled_records(s, out)
    chat = generations_chat(s.generations or safe_path(out, "samples") / "generations.jsonl")
    records, skipped = _with_tokens(records)
    if not records:
        raise ValueError("none of the sampled completions has a token to score")
    s = replace(s, dataset=dataset, split=split)  # read from the generations' eval_config.json when given a file
    sampled_as = "sampled here"
    if s.generations:  # how the file's completions were sampled, not this command's sampling options
        sampling, sampled_as = generations_sampling(s.generations, records)
        s = replace(s, **sampling)
    score = [_score_value(r, family) for r in records]
    pref_rows = None
    if s.preference and s.preference != "demonstrations":
        pref_rows = load_preferences(s.preference, limit=s.num_pairs, seed=s.seed)[0]

    result: dict = {"settings": asdict(s), "sampling_read_from": sampled_as, "task_metric": family.name,
                    "sample_score": family.sample_score,
                    "num_completions": len(records), "skipped_without_tokens": skipped, "skipped_torn_lines": torn,
                    "num_prompts": len({r.get("prompt_index") for r in records}),
                    "mean_sample_score": statistics.fmean(score), "models": {}}
    for model_name, label in zip(s.models, labels, strict=True):
        rm = load_reward_model(model_name).with_gamma(s.gamma)
        tok, gamma = rm.tokenizer, rm.objective.iq_gamma
        encoded = [encode_generated(encode_prompt(r["prompt"], tok, chat), r["token_ids"]) for r in records]
        scored = score_encoded(rm, encoded, ScoreSettings(batch_size=8, bf16=s.bf16, max_length=None))
        R = [x.reward for x in scored]
        entry = {
            "model": model_name,
            "reward": correlations(records, score, R),
            "reward_per_token": correlations(records, score, [x.reward / x.num_tokens for x in scored]),
            "logprob": correlations(records, score, [x.logprob for x in scored]),
            "logprob_per_token": correlations(records, score, [x.logprob / x.num_tokens for x in scored]),
            "mean_R": statistics.fmean(R),
            "iq_value": rm.objective.iq_value.name,
            "gamma": gamma,
        }
        if family.right_or_wrong:
            right = [r for r, y in zip(R, score, strict=True) if y > 0.5]
            wrong = [r for r, y in zip(R, score, strict=True) if y <= 0.5]
            entry["mean_R_correct"] = statistics.fmean(right) if right else None
            entry["mean_R_wrong"] = statistics.fmean(wrong) if wrong else None
            reward_histogram({"correct": right, "wrong": wrong}, safe_path(out, f"reward_hist_{label}.png"),
                             title=f"R = Σ r_t under {label} (γ = {gamma})")
        else:
            reward_scatter(R, score, safe_path(out, f"reward_scatter_{label}.png"), ylabel=result["sample_score"],
                           title=f"R under {label} vs {result['sample_score']}")
        shown = scored[: s.num_render]
        render_html(shown, safe_path(out, f"rewards_{label}.html"), title=f"r_t under {label} (γ = {gamma})",
                    labels=[{"prompt": r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"]),
                             result["sample_score"]: r["scores"].get(result["sample_score"])} for r in records[: s.num_render]])
        rows = pref_rows
        if s.preference == "demonstrations":
            rows = demonstration_pairs(records, score, family, dataset, split, tok)
            rows = random.Random(s.seed).sample(rows, s.num_pairs) if len(rows) > s.num_pairs else rows
        if rows:
            entry["preference"] = preference_accuracy(rm, rows, ScoreSettings(batch_size=8))
        result["models"][label] = entry
        del rm
    write_json_atomic(safe_path(out, "analysis.json"), result)
    write_text_atomic(safe_path(out, "analysis.md"), analysis_markdown(result))
    return result


