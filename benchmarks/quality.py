"""Quality: does IQLearn give something MLE does not? One section per claim of the paper, each judged against MLE
and against entropy-regularised MLE (the paper's other baseline), mean ± s.e.m. over seeds.

Variants (every section trains the same ones; the preset fixes λ, β and the value forms):
    mle            --method mle                        plain SFT
    ent-mle        --method mle --entropy_coef β        entropy-regularised MLE
    gem            --method gem (β = 0.7, logsigmoid)   GEM (Li et al. 2025), the authors' defaults
    dft            --method dft                        DFT (Wu et al. 2025), TRL's loss_type="dft"
    iq-logits      --iq_value logits    --iq_lambda λ   V = logsumexp(logits) (the first implementation)
    iq-reference   --iq_value reference --iq_lambda λ   V = LSE_θ − LSE_θ0 (V ≡ 0 at the start)
    iq-head        --iq_value head      --iq_lambda λ   V = a zero-initialised value head
    iq-online      --method iqlearn-online, α = 0.1     (arithmetic and many-answer: online IQLearn on real tasks)

Sections:
    arithmetic   SmolLM2-135M on the generated GSM8k-style task, where a 135M model's accuracy moves. A small
                 subset, several epochs, a checkpoint per epoch: held-out −log π and greedy accuracy per epoch
                 (overfitting / data efficiency, paper Fig. 7). The checkpoint with the best held-out −log π (early
                 stopping, as a user would) is then sampled at T ∈ {0.5, 0.7, 1.0} with K samples, plus greedy:
                 accuracy against Self-BLEU along each method's temperature frontier (paper Fig. 4).
    xsum         SmolLM2 on XSum (articles cut to their lead, `xsum-lead`, so it fits a CPU): the same frontier with
                 ROUGE-1, then reward quality on a continuous metric: Spearman of each model's R = Σ r_t against
                 sentence ROUGE-1 over one shared pool of samples, within prompt and overall, with Σ log π as the bar
                 a reward must clear (paper: TL;DR ρ(R, ROUGE-1) 0.64 for IQLearn vs −0.05 for MLE).
    gsm8k        the paper-comparable row. Floor-bound at 135M: every method, untrained included, scores 2–10%.
    many         many-answer tasks with a known, uniform expert (`tirl.data.many_answer`: pick-two, between): per
                 epoch, precision and coverage of K = 32 samples along T, pass@k for k up to 32, the held-out expert NLL
                 (= forward KL + log|valid|); paired Δ against MLE, entropy-MLE, GEM and DFT; and the paper's reward
                 protocol on pick-two: Spearman of R with validity across prompts, online IQLearn (α = 0.1) included.
    grammar      a known expert (`tirl.data.grammar`): small Llama from scratch, offline variants plus online
                 IQLearn and GAIL; exact forward KL, P(valid), and compounding error (validity after t symbols).

    python benchmarks/quality.py                          # CPU preset, every section (see README for its time)
    python benchmarks/quality.py --section grammar        # one section
    python benchmarks/quality.py --preset screen          # the λ / β screen that chose the CPU preset's values
    python benchmarks/quality.py --preset smoke           # tiny models, a few minutes (checks the script)
    bash benchmarks/gpu.sh quality                        # full scale on a GPU (preset "gpu")

Writes benchmarks/results/quality.json (or quality_<preset>.json), quality_*.png and quality.md (the tables).
Runs are cached under benchmarks/runs/quality/<preset>/ (git-ignored): an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# This file holds the presets and the command line. Each section is a module beside it (quality_tasks.py: arithmetic,
# xsum, gsm8k; quality_many.py; quality_grammar.py; quality_overtraining.py), quality_tables.py writes quality.md from
# their tables, and quality_runner.py holds what they share (the `tirl` commands, the run cache, mean ± s.e.m.).
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sections' modules beside this file
import quality_grammar  # noqa: E402
import quality_many  # noqa: E402
import quality_overtraining  # noqa: E402
import quality_tasks  # noqa: E402
from quality_runner import (  # noqa: E402
    CACHED_ONLY,
    PRECISION,
    PRESET,
    RESULTS,
    RUNS,
    SKIP_REWARDS,
    THREADS,
    result_path,
)
from quality_tables import tables  # noqa: E402


def variants(lam_logits: float, lam_reference: float, lam_head: float, beta: float, online_alpha: float = 0.1,
             online_form: str = "reference", online_lambda: float | None = None, extra: dict | None = None) -> dict:
    """The variants every section trains: name -> `tirl train` arguments (plus `extra` ones, for screens)."""
    out = {
        "mle": ["--method", "mle"],
        "ent-mle": ["--method", "mle", "--entropy_coef", f"{beta:g}"],
        "gem": ["--method", "gem", "--gem_beta", "0.7", "--gem_h", "logsigmoid"],
        "dft": ["--method", "dft"],
        "iq-logits": ["--method", "iqlearn", "--iq_value", "logits", "--iq_lambda", f"{lam_logits:g}"],
        "iq-reference": ["--method", "iqlearn", "--iq_value", "reference", "--iq_lambda", f"{lam_reference:g}"],
        "iq-head": ["--method", "iqlearn", "--iq_value", "head", "--iq_lambda", f"{lam_head:g}"],
        "iq-online": ["--method", "iqlearn-online", "--iq_alpha", f"{online_alpha:g}", "--iq_value", online_form,
                      "--iq_lambda", f"{online_lambda if online_lambda is not None else lam_reference:g}",
                      "--max_new_tokens", "64"],
    }
    out.update(extra or {})
    return out


# λ per value form and β from the screen below (seed 0, arithmetic): the largest value whose held-out −log π did not
# rise above MLE's. λ = 0.1 already costs accuracy there for both logits and reference (see README, "Does IQLearn beat
# MLE?"); the head form starts from the same r_t = log π_θ0 as reference, so it takes reference's λ.
CPU_VARIANTS = variants(lam_logits=0.01, lam_reference=0.01, lam_head=0.01, beta=0.1)

# The many-answer section: SmolLM2-135M on generated tasks with a known, uniform expert (`tirl.data.many_answer`),
# 32 prompts x 4 uniform draws, 3 epochs, every epoch evaluated on 16 test prompts: greedy, K = 32 samples at each
# temperature, the held-out expert NLL. pick-two (copying two different words of a list) is the main task; between
# (a number between two bounds) repeats the comparison for a few variants. Arithmetic-constrained tasks (sum-pairs,
# countdown) stay at the floor at this size (3% valid samples at T = 1 after 48 MLE steps), like GSM8k.
# λ per value form from the screen's many section (pick-two, seed 0): the λ with the lowest held-out expert NLL,
# logits 0.001, reference 0.01, head 0.1 (results/quality_screen.md).
MANY_CPU = {"model": "smollm2-135m", "seeds": [1, 2], "train_examples": 128, "epochs": 3, "batch": 8, "lr": 5e-5,
            "eval_rows": 32, "prompts": 16, "samples": 32, "temperatures": [0.5, 0.7, 1.0, 1.3], "max_new_tokens": 16,
            "eval_batch": 128, "references": ["mle", "ent-mle", "gem", "dft"],
            "variants": ["mle", "ent-mle", "gem", "dft", "iq-reference", "iq-logits", "iq-head", "iq-online"],
            "variant_args": variants(lam_logits=0.001, lam_reference=0.01, lam_head=0.1, beta=0.1),
            "tasks": {"pick-two": {"rewards": True},
                      "between": {"variants": ["mle", "gem", "iq-reference"], "extra_task": True}}}

PRESETS: dict[str, dict] = {
    "cpu": {
        "variants": CPU_VARIANTS,
        "arithmetic": {"model": "smollm2-135m", "dataset": "arithmetic", "seeds": [1, 2], "train_examples": 64,
                       "epochs": 5, "batch": 8, "lr": 5e-5, "eval_rows": 64, "prompts": 32, "samples": 4,
                       "temperatures": [0.5, 0.7, 1.0, 1.5], "max_new_tokens": 64, "eval_batch": 128,
                       "variants": ["mle", "ent-mle", "gem", "dft", "iq-logits", "iq-reference", "iq-head",
                                    "iq-online"],
                       "extra": ["iq-logits", "iq-head", "iq-online"]},
        "xsum": {"model": "smollm2-135m", "dataset": "xsum-lead", "seeds": [1], "train_examples": 160, "epochs": 1,
                 "batch": 4, "lr": 5e-5, "eval_rows": 32, "prompts": 32, "samples": 4, "temperatures": [0.5, 0.7, 1.0],
                 "max_new_tokens": 64, "eval_batch": 64, "reward_prompts": 48, "reward_samples": 4,
                 "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head", "iq-online"],
                 "extra": ["ent-mle", "iq-logits", "iq-head"]},
        "gsm8k": {"model": "smollm2-135m", "dataset": "gsm8k", "seeds": [1], "train_examples": 320, "max_steps": 40,
                  "batch": 4, "lr": 5e-5, "eval_rows": 16, "prompts": 40, "samples": 4, "temperatures": [1.0],
                  "max_new_tokens": 160, "eval_batch": 64,
                  "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head"], "extra_section": True},
        "grammar": {"model": "small-llama", "seeds": [0, 1, 2], "train_examples": 2000, "max_steps": 200, "batch": 32,
                    "lr": 2e-3, "num_samples": 400, "online_alpha": 0.1, "gail_steps": 200,
                    "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head", "iq-online", "gail"]},
        "many": MANY_CPU,
        "overtraining": {**quality_overtraining.OVERTRAINING_CPU, "extra_section": True},
    },
    # the λ / β screen behind the CPU preset's choice: one seed, a grid per value form, arithmetic only
    "screen": {
        "variants": variants(lam_logits=0.01, lam_reference=0.1, lam_head=0.1, beta=0.1, extra={
            "ent-mle-0.03": ["--method", "mle", "--entropy_coef", "0.03"],
            "ent-mle-0.3": ["--method", "mle", "--entropy_coef", "0.3"],
            "iq-logits-0.1": ["--method", "iqlearn", "--iq_value", "logits", "--iq_lambda", "0.1"],
            "iq-reference-1": ["--method", "iqlearn", "--iq_value", "reference", "--iq_lambda", "1"],
            "iq-reference-0.01": ["--method", "iqlearn", "--iq_value", "reference", "--iq_lambda", "0.01"],
            "iq-head-1": ["--method", "iqlearn", "--iq_value", "head", "--iq_lambda", "1"],
            "iq-reference-1-warmup": ["--method", "iqlearn", "--iq_value", "reference", "--iq_lambda", "1",
                                      "--iq_lambda_warmup_steps", "16"],
            "iq-logits-0.001": ["--method", "iqlearn", "--iq_value", "logits", "--iq_lambda", "0.001"],
            "iq-head-0.01": ["--method", "iqlearn", "--iq_value", "head", "--iq_lambda", "0.01"],
        }),
        "arithmetic": {"model": "smollm2-135m", "dataset": "arithmetic", "seeds": [0], "train_examples": 64,
                       "epochs": 5, "batch": 8, "lr": 5e-5, "eval_rows": 64, "prompts": 32, "samples": 4,
                       "temperatures": [0.7, 1.0], "max_new_tokens": 64, "eval_batch": 128,
                       "variants": ["mle", "ent-mle-0.03", "ent-mle", "ent-mle-0.3", "iq-logits", "iq-logits-0.1",
                                    "iq-reference-0.01", "iq-reference", "iq-reference-1", "iq-reference-1-warmup",
                                    "iq-head", "iq-head-1"]},
        # λ per value form on the many-answer task, seed 0 (the reported seeds are 1-5), the final epoch at T = 1 and
        # the held-out expert NLL; the screen's λ are 0.01 (logits), 0.1 (reference, head) unless named
        "many": {**MANY_CPU, "seeds": [0], "temperatures": [1.0], "tasks": {"pick-two": {}}, "variant_args": {},
                 "variants": ["mle", "iq-reference-0.01", "iq-reference", "iq-reference-1", "iq-logits-0.001",
                              "iq-logits", "iq-logits-0.1", "iq-head-0.01", "iq-head", "iq-head-1"]},
    },
    # full scale, for one GPU (`benchmarks/gpu.sh quality`)
    "gpu": {
        "variants": CPU_VARIANTS,
        "arithmetic": {"model": "smollm2-135m", "dataset": "arithmetic", "seeds": [0, 1, 2], "train_examples": 256,
                       "epochs": 8, "batch": 16, "lr": 5e-5, "eval_rows": 256, "prompts": 200, "samples": 4,
                       "temperatures": [0.5, 0.7, 1.0], "max_new_tokens": 64, "eval_batch": 256,
                       "variants": ["mle", "ent-mle", "gem", "dft", "iq-logits", "iq-reference", "iq-head",
                                    "iq-online"]},
        "xsum": {"model": "smollm2-135m", "dataset": "xsum", "seeds": [0, 1, 2], "train_examples": 800, "epochs": 2,
                 "batch": 16, "lr": 5e-5, "eval_rows": 200, "prompts": 200, "samples": 4,
                 "temperatures": [0.5, 0.7, 1.0], "max_new_tokens": 64, "eval_batch": 128, "reward_prompts": 200,
                 "reward_samples": 8, "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head"]},
        "gsm8k": {"model": "smollm2-135m", "dataset": "gsm8k", "seeds": [0, 1, 2], "train_examples": None,
                  "epochs": 1, "batch": 16, "lr": 5e-5, "eval_rows": 256, "prompts": None, "samples": 4,
                  "temperatures": [1.0], "max_new_tokens": 256, "eval_batch": 256,
                  "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head"]},
        "grammar": {"model": "llama-10m", "seeds": [0, 1, 2], "train_examples": 5000, "max_steps": 500, "batch": 64,
                    "lr": 1e-3, "num_samples": 1000, "online_alpha": 0.1, "gail_steps": 500,
                    "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head", "iq-online", "gail"]},
        # SmolLM2-360M (a hub id, or a local directory with --model), 5 seeds of every variant, both tasks
        "many": {**MANY_CPU, "model": "HuggingFaceTB/SmolLM2-360M-Instruct", "seeds": [1, 2, 3, 4, 5],
                 "train_examples": 256, "prompts": 50, "eval_batch": 256,
                 "tasks": {"pick-two": {}, "between": {}, "sum-pairs": {}}},
    },
    "smoke": {
        "variants": variants(lam_logits=0.01, lam_reference=0.1, lam_head=0.1, beta=0.1),
        "arithmetic": {"model": "tiny-llama", "dataset": "arithmetic", "seeds": [0, 1], "train_examples": 16,
                       "epochs": 2, "batch": 8, "lr": 3e-3, "eval_rows": 8, "prompts": 4, "samples": 2,
                       "temperatures": [0.7, 1.0], "max_new_tokens": 8, "eval_batch": 16,
                       "variants": ["mle", "ent-mle", "iq-reference", "iq-head", "iq-online"]},
        "xsum": {"model": "tiny-llama", "dataset": "arithmetic", "seeds": [0], "train_examples": 16, "epochs": 1,
                 "batch": 8, "lr": 3e-3, "eval_rows": 8, "prompts": 4, "samples": 2, "temperatures": [1.0],
                 "max_new_tokens": 8, "eval_batch": 16, "reward_prompts": 4, "reward_samples": 2,
                 "variants": ["mle", "iq-reference", "iq-head"]},
        "grammar": {"model": "tiny-llama", "seeds": [0], "train_examples": 200, "max_steps": 6, "batch": 16,
                    "lr": 3e-3, "num_samples": 40, "online_alpha": 0.25, "gail_steps": 3,
                    "variants": ["mle", "ent-mle", "iq-reference", "iq-head", "iq-online", "gail"]},
        "many": {**MANY_CPU, "model": "tiny-llama", "seeds": [0, 1], "train_examples": 16, "epochs": 2, "lr": 3e-3,
                 "eval_rows": 8, "prompts": 3, "samples": 4, "temperatures": [0.7, 1.0], "max_new_tokens": 8,
                 "eval_batch": 16, "variants": ["mle", "gem", "dft", "iq-reference"],
                 "tasks": {"pick-two": {}, "between": {"variants": ["mle", "iq-reference"], "seeds": [0]}}},
        "overtraining": quality_overtraining.OVERTRAINING_SMOKE,
    },
}
SECTIONS = ("arithmetic", "xsum", "gsm8k", "grammar", "many", "overtraining")


def task_variants(task: dict, cfg: dict) -> list[str]:
    """A task's own variants (the section's when it names none), restricted to the section's (`--variants`)."""
    return [v for v in task.get("variants", cfg["variants"]) if v in cfg["variants"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", choices=[*SECTIONS, "all"], default="all", help="which section to run")
    p.add_argument("--preset", choices=list(PRESETS), default="cpu", help="sizes and variants (see the docstring)")
    p.add_argument("--output", default=None, help="JSON results (default: results/quality.json for the cpu preset, "
                   "results/quality_<preset>.json for the others)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds instead of the preset's, e.g. one process per "
                   "seed on separate cores; rerun without it afterwards to summarise every seed from the cache")
    p.add_argument("--variants", default=None, help="comma-separated variants instead of the section's, e.g. more "
                   "seeds for some of them (with --seeds); a later run without either summarises every cached seed")
    p.add_argument("--tasks", default=None, help="many-answer section: comma-separated tasks instead of the preset's, "
                   "e.g. more seeds for pick-two alone; the other tasks' recorded results are kept")
    p.add_argument("--cached_only", action="store_true", help="summarise the recorded runs and the finished trainings and "
                   "reward analyses in the cache; train and analyse nothing (e.g. while other processes still run). "
                   "The grammar section, which has no cache, is skipped")
    p.add_argument("--skip_rewards", action="store_true", help="summarise XSum and the many-answer tasks without their reward analysis (the slowest "
                   "part: every model scores the sample pool and the demonstration pairs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each `tirl` command it starts (default: "
                   "torch's, one per core); 1 when running one process per core, or the processes' threads contend "
                   "for the cores and every run is slower")
    p.add_argument("--bf16", choices=["auto", "true", "false"], default="auto", help="precision of every `tirl` "
                   "command: auto = tirl's default (bf16 autocast only where the hardware computes bf16 natively, "
                   "float32 on an AVX2 CPU); the recorded cpu results trained under bf16 autocast, so `true` matches "
                   "them (at a large cost on an AVX2 CPU, see docs/benchmarks.md)")
    p.add_argument("--model", default=None, help="the model every section trains instead of the preset's: a built-in "
                   "name, a hub id or a local directory (e.g. SmolLM2-360M for the gpu preset)")
    args = p.parse_args()
    CACHED_ONLY[:] = [True] if args.cached_only else []
    SKIP_REWARDS[:] = [True] if args.skip_rewards else []
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads: {args.threads} is not a number of threads (1 or more)")
    if args.tasks and args.section not in ("many", "overtraining", "all"):
        p.error(f"--tasks picks many-answer tasks; --section {args.section} has none")
    THREADS[:] = [str(args.threads)] if args.threads else []
    PRECISION[:] = [] if args.bf16 == "auto" else [args.bf16]
    RESULTS.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[args.preset]
    PRESET[0] = args.preset
    runs = RUNS / args.preset
    output = Path(args.output or RESULTS / ("quality.json" if args.preset == "cpu" else f"quality_{args.preset}.json"))
    result: dict = {"benchmark": "quality", "preset": args.preset, "variants": preset["variants"], "seconds": {}}
    if output.is_file():  # keep the other sections' results when one is rerun
        previous = json.loads(output.read_text())
        if previous.get("preset") == args.preset:
            result.update({k: v for k, v in previous.items() if k in SECTIONS})
            seconds = previous.get("seconds", {})
            result["seconds"] = seconds if isinstance(seconds, dict) else {}  # older files kept one total

    done: set[str] = set()

    def save() -> None:
        """After each section, so a killed run keeps what it finished. Sections may run in parallel processes
        (`--section`, e.g. one per core): the file is re-read under a lock and only this process's sections replaced."""
        import fcntl

        with open(output.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = dict(result)
            if output.is_file():
                on_disk = json.loads(output.read_text())
                if on_disk.get("preset") == args.preset:
                    merged.update({k: v for k, v in on_disk.items() if k in SECTIONS and k not in done})
                    merged["seconds"] = {**(on_disk.get("seconds") if isinstance(on_disk.get("seconds"), dict) else {}), **{k: result["seconds"][k] for k in done}}
            output.write_text(json.dumps(merged, indent=1) + "\n")
            output.with_suffix(".md").write_text(f"# Quality benchmark ({args.preset} preset)\n" + tables(merged, preset))

    for name in SECTIONS:
        if args.section not in (name, "all") or name not in preset:
            continue
        if args.section == "all" and preset[name].get("extra_section"):  # its own command; its record is kept
            continue
        t0 = time.time()
        cfg = preset[name]
        if args.seeds:
            cfg = {**cfg, "seeds": [int(x) for x in args.seeds.split(",")], "seeds_given": True}
        if args.model:
            cfg = {**cfg, "model": args.model}
        if args.variants:
            given = args.variants.split(",")
            screened = ([] if name != "overtraining" else ["mle", *[quality_overtraining.screen_variant(lam)
                                                                   for lam in cfg["screen"]["lambdas"]]])
            unknown = set(given) - set(cfg.get("variants", [])) - set(screened)
            if unknown:
                p.error(f"--variants: {', '.join(sorted(unknown))} not in the {name} section of the preset")
            cfg = {**cfg, "variants": [v for v in cfg["variants"] if v in given], "extra": [],
                   **({"screen_variants": [v for v in screened if v in given]} if screened else {})}
        recorded = result.get(name) or {}
        if name == "grammar":
            if CACHED_ONLY:  # no cache to summarise: its recorded result stays
                continue
            result[name] = quality_grammar.section(cfg, preset["variants"])
        elif name == "many":
            # a task's own variants, restricted to --variants when given
            chosen = args.tasks.split(",") if args.tasks else list(cfg["tasks"])
            if set(chosen) - set(cfg["tasks"]):
                p.error(f"--tasks: {', '.join(sorted(set(chosen) - set(cfg['tasks'])))} not in the many section of the "
                        f"preset ({', '.join(cfg['tasks'])})")
            tasks = {t: {**o, "variants": task_variants(o, cfg),
                         "extra_task": bool(o.get("extra_task")) and not (args.tasks and t in chosen)}
                     for t, o in cfg["tasks"].items() if t in chosen}
            kept = {t: v for t, v in recorded.items() if t in cfg["tasks"] and t not in chosen}
            result[name] = {**kept, **quality_many.section({**cfg, "tasks": tasks}, preset["variants"], runs / name,
                                                           recorded)}
        elif name == "overtraining":
            chosen = args.tasks.split(",") if args.tasks else list(cfg["tasks"])
            if set(chosen) - set(cfg["tasks"]):
                p.error(f"--tasks: {', '.join(sorted(set(chosen) - set(cfg['tasks'])))} not in the overtraining "
                        f"section of the preset ({', '.join(cfg['tasks'])})")
            kept = {t: v for t, v in recorded.items() if t in cfg["tasks"] and t not in chosen}
            tasks = {t: {**o, "variants": task_variants(o, cfg)} for t, o in cfg["tasks"].items() if t in chosen}
            ran = quality_overtraining.section({**cfg, "tasks": tasks},
                                               preset["variants"], runs / name, recorded, result_path,
                                               seeds_given=bool(args.seeds))
            result[name] = {**kept, **ran}
        else:
            score = {"arithmetic": "accuracy_flexible", "gsm8k": "accuracy_flexible"}.get(name, "rouge1")
            if cfg["dataset"] == "arithmetic" and name == "xsum":
                score = "accuracy_flexible"  # the smoke preset stands arithmetic in for XSum
            result[name] = quality_tasks.section(name, cfg, preset["variants"], runs / name, score,
                                                 per_epoch=name == "arithmetic",
                                                 rewards=name == "xsum" and not args.skip_rewards,
                                                 recorded=recorded.get("runs"), recorded_rewards=recorded.get("rewards"),
                                                 recorded_untrained=recorded.get("untrained"))
        result["seconds"][name] = time.time() - t0
        done.add(name)
        save()
        print(f"section {name}: {result['seconds'][name] / 60:.1f} min", flush=True)
    print(tables(result, preset))
    print(f"wrote {output} ({sum(result['seconds'].values()) / 60:.1f} min in all)")


if __name__ == "__main__":
    main()
