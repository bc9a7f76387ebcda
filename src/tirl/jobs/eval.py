"""The `tirl eval` job: rows → greedy and sampled generations → scores → files. `tirl eval` parses into `run_eval`.

The output directory holds
- `eval_config.json`: the settings that determine the generations (checked on resume);
- `generations.jsonl`: one line per prompt × sample, appended batch by batch as they are produced (so an interrupted
  run resumes where it stopped), each with its prompt, reference, text, token ids, EOS flag, entropy and own scores;
- `metrics.json`: scores per pass (`greedy`, `sampled`), all settings, model/dataset/run info, versions, timing;
- `report.md`: the table and a few example generations;
- `expert_nll.json` (many-answer tasks): the held-out expert NLL, the model's log-likelihood of every valid answer.

Before anything is generated the output directory is checked (`tirl.jobs.rundir`): a file, an unwritable path or a
symbolic link inside it is refused, so nothing is appended or written through a link; a new directory is removed
again if the job fails before its first generation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data import DataError, is_builtin, load_rows, task_metric
from ..evaluation.families import MetricFamily, metric_family, sample_scores, task_scores
from ..evaluation.metrics import diversity_scores, mean_token_entropy, memorisation_scores
from ..files import safe_path, write_json_atomic, write_text_atomic
from .rundir import RunDirError, check_no_links, check_writable, output_lock
from .runinfo import rows_checksum, run_record

METRICS_KIND = "tirl.eval"
GENERATIONS_FILE = "generations.jsonl"
CONFIG_FILE = "eval_config.json"
EXPERT_FILE = "expert_nll.json"  # many-answer tasks: the held-out expert NLL (needs the model, so it is cached)


@dataclass
class EvalSettings:
    """Everything `tirl eval` needs; the fields are the CLI options (see `tirl eval --help`)."""

    model: str = "smollm2-135m"
    dataset: str = "gsm8k"
    split: str = "test"
    num_examples: int | None = 100
    data_seed: int = 0
    samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = True
    max_new_tokens: int = 256
    batch_size: int = 32
    seed: int = 0
    bf16: bool | None = None  # None: where the hardware computes bf16 natively (tirl.hardware.fast_bf16)
    metric: str = "auto"
    self_bleu_n: int = 4
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    reference_field: str | None = None
    skip_bad_rows: bool = False
    output_dir: str | None = None
    overwrite: bool = False
    num_report_examples: int = 3
    expert_nll: bool = True
    wrap_in_chat_template: bool | None = None  # a user's plain prompts as a conversation; None: as the run trained
    trust_remote_code: bool = False
    progress: bool = True
    sampler: str = "packed"  # the decoding loop (`tirl.generation.SAMPLERS`): "packed" or "generate"

    def __post_init__(self) -> None:
        from ..generation import check_sampler

        check_sampler(self.sampler)
        if self.bf16 is None:
            from ..hardware import fast_bf16

            self.bf16 = fast_bf16()

    def metric_family(self) -> MetricFamily:
        """The family the task is scored with: `metric`, or the dataset's own (`task_metric`) for "auto"."""
        return metric_family(task_metric(self.dataset) if self.metric == "auto" else self.metric)

    def chat(self) -> bool | None:
        """How plain-string prompts are rendered (`encode_prompt`): a built-in task's rule (None), else the run's
        `--wrap_in_chat_template` when the model is a tirl run and this option is unset, else this option (off)."""
        if is_builtin(self.dataset):
            return None
        if self.wrap_in_chat_template is not None:
            return self.wrap_in_chat_template
        return bool(find_run_info(self.model).get("wrap_in_chat_template"))

    def split_label(self) -> str:
        """The split recorded for the rows: a local file has none (every row of it is evaluated)."""
        return "file" if os.path.isfile(self.dataset) else self.split

    def generation_key(self) -> dict:
        """The settings that change what is generated; a resumed run must match them (batch size may differ).
        `sampler`: every other generation option of each pass, as sampled (temperature and top_p are the fields of
        the same name; `tirl.evaluation.sampling.generation_settings`), so the file says what a score sampled from.
        `sampler_implementation`: the decoding loop (`--sampler`); same distribution, another random stream."""
        from ..evaluation.sampling import generation_settings

        keys = ("model", "dataset", "split", "num_examples", "data_seed", "samples", "temperature", "top_p", "greedy",
                "max_new_tokens", "seed", "bf16", "prompt_field", "completion_field", "reference_field",
                "wrap_in_chat_template")
        passes = {"greedy": self.greedy, "sampled": self.samples > 0}
        sampler = {name: {k: v for k, v in generation_settings(self.temperature, self.top_p, name == "greedy").items()
                          if k not in keys} for name, run in passes.items() if run}
        return {**{k: getattr(self, k) for k in keys}, "prompt_chat": self.chat(), "sampler": sampler,
                "sampler_implementation": self.sampler}


@dataclass
class EvalResult:
    output_dir: Path
    metrics: dict


class EvalConfigMismatch(DataError):
    """The output directory holds generations made with other settings."""


# --------------------------------------------------------------------------------------------------------------------
# Paths and run information
# --------------------------------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def default_output_dir(s: EvalSettings) -> Path:
    """`<model dir>/eval/<tag>` for a local model directory, else `evals/<model>-<tag>`; tag = dataset-split-n-K-T."""
    data = Path(s.dataset).stem if os.path.exists(s.dataset) else s.dataset
    tag = _slug(f"{data}-{s.split_label()}-n{s.num_examples or 'all'}-k{s.samples}-t{s.temperature:g}")
    if os.path.isdir(s.model):
        return Path(s.model) / "eval" / tag
    return Path("evals") / f"{_slug(s.model)}-{tag}"


def find_run_info(model: str) -> dict:
    """What a training run says about the model: method, λ, γ, base model (from `run.json` in the directory or its
    parent, so a `checkpoint-N` subdirectory works too); empty for built-in names."""
    if not os.path.isdir(model):
        return {}
    for d in (Path(model), Path(model).parent):
        path = d / "run.json"
        if path.is_file():
            try:
                run = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return {}
            config = run.get("config") or {}
            return {"run_dir": str(d), "method": run.get("method"), "base_model": run.get("model"),
                    "wrap_in_chat_template": (run.get("script") or {}).get("wrap_in_chat_template"),
                    "iq_lambda": config.get("iq_lambda"), "iq_gamma": config.get("iq_gamma"),
                    "iq_value": config.get("iq_value"), "entropy_coef": config.get("entropy_coef"),
                    "seed": config.get("seed"),
                    "max_steps": config.get("max_steps"), "learning_rate": config.get("learning_rate")}
    return {}


def run_training_rows(model: str) -> list[dict] | None:
    """The rows the run behind `model` trained on (a run directory or one of its checkpoints), rebuilt from its
    `run.json` and checked against the checksum recorded there; None when the model is not a tirl run, its data cannot
    be rebuilt without a hub (only generated tasks and local files still present are), or the rows no longer match."""
    from dataclasses import fields

    from .train import TrainScriptArguments, load_train_eval_rows

    info = find_run_info(model)
    if not info:
        return None
    try:
        run = json.loads((Path(info["run_dir"]) / "run.json").read_text())
        known = {f.name for f in fields(TrainScriptArguments)}
        script = TrainScriptArguments(**{k: v for k, v in (run.get("script") or {}).items() if k in known})
        recorded = run["data"]["train"]
        name = script.dataset
        if not name or not (is_builtin(name) or os.path.exists(name)):
            return None
        used = recorded["rows"] if recorded["rows"] < recorded.get("rows_available", recorded["rows"]) else None
        rows, _, _ = load_train_eval_rows(script, int(run["config"]["seed"]), used=used)
    except (OSError, KeyError, TypeError, ValueError, DataError):
        return None
    return rows if rows_checksum(rows) == recorded.get("sha256") else None


def demonstrations(model: str, rows: list[dict]) -> list[frozenset[str]] | None:
    """For each evaluation row of a many-answer task, the answers its prompt was demonstrated with in the training rows
    of the run behind `model` (empty for a prompt it never trained on); None when those rows are unknown."""
    from ..data.many_answer import canonical_answer

    trained = run_training_rows(model)
    if trained is None:
        return None
    shown: dict[str, set[str]] = {}
    for r in trained:
        if not isinstance(r.get("reference"), str):
            continue
        try:
            answer = canonical_answer(r["completion"], r["reference"])
        except ValueError:  # not a many-answer row
            continue
        if answer is not None:
            shown.setdefault(r["reference"], set()).add(answer)
    return [frozenset(shown.get(r["reference"], ())) for r in rows]


# --------------------------------------------------------------------------------------------------------------------
# The generations file
# --------------------------------------------------------------------------------------------------------------------


def read_generations(path: Path) -> list[dict]:
    """The complete lines of a generations file. A torn last line (a crash mid-write) is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    records = []
    for lineno, line in enumerate(data[:end].splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}); delete the file or use --overwrite") from e
    return records


def torn_last_line(path: str | Path) -> int | None:
    """The number of the last line of a file when a crash tore it (no line end, and not JSON), else None."""
    data = Path(path).read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    try:
        json.loads(data[data.rfind(b"\n") + 1:])
        return None
    except ValueError:
        return data.count(b"\n") + 1


def read_generations_file(path: str | Path) -> tuple[list[dict], int | None]:
    """The lines of a generations file that another command reads (`tirl rewards analyse --generations`), and the
    number of a torn last line (`torn_last_line`), which is left out, else None. The file is never changed (unlike
    `read_generations`, whose file is the job's own); any other line that is not JSON is a `DataError` naming it."""
    path = Path(path)
    torn = torn_last_line(path)
    records = []
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if line.strip() and lineno != torn:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return records, torn


def generations_chat(path: str | Path) -> bool | None:
    """How the prompts of a generations file were rendered (`encode_prompt`'s `chat`), from the `eval_config.json`
    beside it; None (the built-in tasks' rule) when there is none."""
    config = Path(path).parent / CONFIG_FILE
    try:
        return json.loads(config.read_text()).get("prompt_chat")
    except (OSError, ValueError):
        return None


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _done_prompts(records: list[dict], pass_name: str, k: int, rows: list[dict]) -> set[int]:
    """Prompt indices whose K samples of `pass_name` are all in the file (and belong to the same rows)."""
    counts: dict[int, int] = {}
    for r in records:
        if r["pass"] == pass_name:
            i = r["prompt_index"]
            if i >= len(rows) or r["id"] != rows[i]["id"]:
                raise EvalConfigMismatch(f"{GENERATIONS_FILE} line for prompt {i} has id {r['id']!r}, which is not "
                                         "that prompt's row; use --overwrite or another --output_dir")
            counts[i] = counts.get(i, 0) + 1
    return {i for i, c in counts.items() if c >= k}


# --------------------------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------------------------


def load_eval_rows(s: EvalSettings) -> list[dict]:
    rows = load_rows(s.dataset, split=s.split, limit=s.num_examples, seed=s.data_seed, skip_bad_rows=s.skip_bad_rows,
                     prompt_field=s.prompt_field, completion_field=s.completion_field, reference_field=s.reference_field)
    out = []
    for r in rows:
        if "messages" in r:  # a conversation: everything before the last assistant turn is the prompt
            msgs = r["messages"]
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            out.append({"id": r["id"], "prompt": msgs[:last], "completion": msgs[last]["content"],
                        "reference": msgs[last]["content"]})
        elif isinstance(r["completion"], list):  # conversational prompt/completion
            text = "".join(str(m.get("content", "")) for m in r["completion"] if isinstance(m, dict))
            out.append({**r, "completion": text, "reference": r.get("reference") or text})
        else:
            out.append(r)
    if not out:
        raise DataError(f"{s.dataset!r} ({s.split}) has no rows to evaluate")
    if s.metric_family().many_answer:
        # a many-answer row's reference is its prompt's specification: the training split draws each prompt several
        # times, and it is evaluated once
        seen: set = set()
        out = [r for r in out if not (r["reference"] in seen or seen.add(r["reference"]))]
    return out


def _check_config(out_dir: Path, s: EvalSettings, rows: list[dict]) -> None:
    key = {**s.generation_key(), "rows_sha256": rows_checksum(rows)}
    path = out_dir / CONFIG_FILE
    gen_path = out_dir / GENERATIONS_FILE
    if s.overwrite:
        for name in (GENERATIONS_FILE, "metrics.json", "report.md", EXPERT_FILE):
            (out_dir / name).unlink(missing_ok=True)
    elif path.is_file():
        old = json.loads(path.read_text())
        old.setdefault("sampler_implementation", "generate")  # the only loop before `--sampler` existed
        diff = {k: (old.get(k), v) for k, v in key.items() if old.get(k) != v}
        if diff and gen_path.is_file():
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise EvalConfigMismatch(f"{out_dir} holds generations made with other settings ({shown}); pass "
                                     "--overwrite to start again there, or choose another --output_dir")
    write_json_atomic(safe_path(out_dir, CONFIG_FILE), key)


def check_output_dir(s: EvalSettings, out_dir: Path) -> bool:
    """Refuse an output directory that cannot be written or holds a symbolic link (the default one inside a model
    directory included: `eval/` there must not lead elsewhere). Returns whether it exists. Writes nothing."""
    if not s.output_dir and os.path.isdir(s.model):
        for p in (Path(s.model) / "eval", out_dir):
            if p.is_symlink():
                raise RunDirError(f"{p} is a symbolic link (to {os.readlink(p)}): tirl writes nothing through links; "
                                  "remove it or give --output_dir")
    existed = check_writable(out_dir)
    if existed:
        check_no_links(out_dir)
    return existed


def run_eval(s: EvalSettings) -> EvalResult:
    """Generate (resuming what is already in the output directory), score, and write the four files."""
    if s.samples < 0 or (s.samples == 0 and not s.greedy):
        raise ValueError("nothing to do: --samples 0 with --no-greedy")
    family = s.metric_family()
    out_dir = Path(s.output_dir) if s.output_dir else default_output_dir(s)
    existed = check_output_dir(s, out_dir)
    # the directories this job creates (out_dir and those above it that are missing, e.g. MODEL/eval/)
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
    rows = load_eval_rows(s)
    try:
        # creates out_dir once no live run encloses it
        with output_lock(out_dir, "eval"):
            return _run_eval(s, family, out_dir, rows)
    except BaseException:
        gen_path = out_dir / GENERATIONS_FILE
        if not existed and not (gen_path.is_file() and gen_path.stat().st_size):
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)  # nothing generated: leave no directory behind
            for d in created[1:]:
                with contextlib.suppress(OSError):  # one that another job has written into since stays
                    d.rmdir()
        raise


def _run_eval(s: EvalSettings, family: MetricFamily, out_dir: Path, rows: list[dict]) -> EvalResult:
    start = time.time()
    _check_config(out_dir, s, rows)
    gen_path = safe_path(out_dir, GENERATIONS_FILE)
    records = read_generations(gen_path)

    passes = ([("greedy", 1)] if s.greedy else []) + ([("sampled", s.samples)] if s.samples > 0 else [])
    todo = {name: set(range(len(rows))) - _done_prompts(records, name, k, rows) for name, k in passes}
    timing: dict = {"resumed_prompts": {name: len(rows) - len(t) for name, t in todo.items()}}
    expert_path = safe_path(out_dir, EXPERT_FILE)
    wants_expert = family.many_answer and s.expert_nll
    expert = _read_expert_nll(expert_path, rows) if wants_expert else None
    loaded = None
    if any(todo.values()) or (wants_expert and expert is None):
        loaded = _load_model(s, timing)
    if any(todo.values()):
        timing.update(_generate(s, loaded, rows, passes, todo, family, gen_path))
        records = read_generations(gen_path)
    if wants_expert and expert is None:
        expert = _expert_nll(s, loaded, rows, expert_path)
    timing["total_seconds"] = time.time() - start

    demos = demonstrations(s.model, rows) if family.many_answer else None
    metrics = compute_metrics(records, rows, passes, family, s.self_bleu_n, demos)
    if expert is not None:
        metrics["expert"] = {k: v for k, v in expert.items() if k != "rows_sha256"}
    metrics = {
        "kind": METRICS_KIND,
        "model": s.model,
        "run": find_run_info(s.model),
        "dataset": s.dataset,
        "split": s.split_label(),
        "num_prompts": len(rows),
        "metric_family": family.name,
        "primary_score": family.primary_score,
        **metrics,
        "settings": {**asdict(s), "output_dir": str(out_dir), "sampler": s.generation_key()["sampler"],
                     "sampler_implementation": s.sampler,
                     "self_bleu": {"n": s.self_bleu_n, "tokenize": "13a", "smooth": "exp", "effective_order": True,
                                   "references": "the other K-1 samples of the same prompt"}},
        "data": {"rows": len(rows), "sha256": rows_checksum(rows), "first_ids": [r["id"] for r in rows[:5]]},
        "timing": timing,
        **{k: v for k, v in run_record().items() if k in ("versions", "git_commit", "command", "host")},
    }
    write_json_atomic(safe_path(out_dir, "metrics.json"), _nan_to_none(metrics))
    from ..evaluation.report import report_markdown

    write_text_atomic(safe_path(out_dir, "report.md"), report_markdown(metrics, records, rows, s.num_report_examples))
    return EvalResult(output_dir=out_dir, metrics=metrics)


def _load_model(s: EvalSettings, timing: dict):
    """(model, tokenizer) of the evaluation, its load time and settings noted in `timing`."""
    import torch

    from .. import models
    from ..evaluation.sampling import has_chat_template

    t0 = time.time()
    model, tokenizer = models.load(s.model, seed=s.seed, trust_remote_code=s.trust_remote_code)
    timing.update({"model_load_seconds": time.time() - t0, "chat_template": has_chat_template(tokenizer),
                   "torch_threads": torch.get_num_threads()})
    return model, tokenizer


def _read_expert_nll(path: Path, rows: list[dict]) -> dict | None:
    """The held-out expert NLL computed for these rows by an earlier run of the same evaluation, else None."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("rows_sha256") == rows_checksum(rows) else None


def _expert_nll(s: EvalSettings, loaded, rows: list[dict], path: Path) -> dict:
    """Held-out expert NLL of a many-answer task (`tirl.evaluation.metrics.expert_nll_scores`): log q(y|x) of every
    valid answer y of each prompt, up to and including its EOS, rendered as training renders it."""
    from ..data.many_answer import valid_answers
    from ..evaluation.likelihood import completion_logprobs
    from ..evaluation.metrics import expert_nll_scores
    from ..models import eos_token_ids

    model, tokenizer = loaded
    eos = eos_token_ids(tokenizer, model)
    t0 = time.time()
    logprobs = [completion_logprobs(model, tokenizer, r["prompt"], valid_answers(r["reference"]), eos,
                                    autocast_bf16=s.bf16) for r in rows]
    out = {**expert_nll_scores(logprobs), "answers_scored": sum(len(lp) for lp in logprobs),
           "seconds": time.time() - t0, "rows_sha256": rows_checksum(rows)}
    write_json_atomic(path, out)
    return out


def _generate(s: EvalSettings, loaded, rows: list[dict], passes, todo: dict, family: MetricFamily,
              gen_path: Path) -> dict:
    from ..evaluation.sampling import SamplingSettings, iter_samples

    model, tokenizer = loaded
    t0 = time.time()
    timing: dict = {}
    prompts = [r["prompt"] for r in rows]
    for name, k in passes:
        if not todo[name]:
            continue
        t1, tokens = time.time(), 0
        skip = set(range(len(rows))) - todo[name]
        sampling = SamplingSettings(k=k, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                    greedy=name == "greedy", sampler=s.sampler, batch_size=s.batch_size, seed=s.seed,
                                    autocast_bf16=s.bf16, progress=s.progress)
        for idx, batch in iter_samples(model, tokenizer, prompts, sampling, skip=skip, desc=f"{name} (K={k})",
                                       chat=s.chat()):
            lines = []
            for i, samples in zip(idx, batch, strict=True):
                row = rows[i]
                for j, smp in enumerate(samples):
                    lines.append({"pass": name, "prompt_index": i, "sample_index": j, "id": row["id"],
                                  "prompt": row["prompt"], "reference": row["reference"], "text": smp.text,
                                  "num_tokens": smp.num_tokens, "finished": smp.finished, "entropy": smp.entropy,
                                  "scores": sample_scores(family, smp.text, row["reference"]),
                                  "token_ids": smp.token_ids})
                    tokens += smp.num_tokens
            _append(gen_path, lines)
        seconds = time.time() - t1
        timing[name] = {"prompts": len(todo[name]), "seconds": seconds, "generated_tokens": tokens,
                        "tokens_per_second": tokens / seconds if seconds > 0 else None}
    timing["generation_seconds"] = time.time() - t0
    return timing


def compute_metrics(records: list[dict], rows: list[dict], passes, family: str | MetricFamily, self_bleu_n: int = 4,
                    demonstrated: list[frozenset[str]] | None = None) -> dict:
    """Scores of each pass from the generation records (the file's contents, so metrics always match the file).
    `demonstrated` (many-answer tasks, the model a tirl run): each row's answers in the run's training rows; where any
    prompt has some, each pass also reports `memorisation` (`tirl.evaluation.metrics.memorisation_scores`)."""
    out: dict = {}
    refs = [r["reference"] for r in rows]
    for name, k in passes:
        per_prompt: list[list[dict]] = [[] for _ in rows]
        for r in records:
            if r["pass"] == name and r["sample_index"] < k:
                per_prompt[r["prompt_index"]].append(r)
        if any(len(p) != k for p in per_prompt):
            missing = sum(len(p) != k for p in per_prompt)
            raise DataError(f"{missing} prompts lack their {k} '{name}' samples; run `tirl eval` again to finish them")
        for p in per_prompt:
            p.sort(key=lambda r: r["sample_index"])
        texts = [[r["text"] for r in p] for p in per_prompt]
        flat = [r for p in per_prompt for r in p]
        lengths = [r["num_tokens"] for r in flat]
        entropies = [r["entropy"] if r["entropy"] == r["entropy"] else 0.0 for r in flat]  # NaN only when 0 tokens
        diversity = diversity_scores(texts, self_bleu_n)
        if k < 2:
            diversity.pop("self_bleu")  # one sample per prompt: nothing to compare it with
        stats = {
            "k": k,
            **task_scores(family, texts, refs),
            **diversity,
            "entropy": mean_token_entropy(entropies, lengths),
            "mean_tokens": sum(lengths) / len(lengths),
            "eos_rate": sum(r["finished"] for r in flat) / len(flat),
        }
        if demonstrated is not None and any(demonstrated):
            answers = [[(r.get("scores") or {}).get("answer") for r in p] for p in per_prompt]
            stats["memorisation"] = memorisation_scores(answers, demonstrated)
        out[name] = stats
    return out


def _nan_to_none(obj):
    """NaN → null, so metrics.json is strict JSON (a NaN score means "not defined", e.g. Self-BLEU with K < 2)."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
