"""`tirl rewards analyse`: correlation of a checkpoint's rewards with task scores, and preference accuracy."""

from __future__ import annotations

import argparse

from . import errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tirl rewards analyse",
        description="Do the implicit rewards R = Σ r_t of one or more checkpoints track task quality? Samples K "
        "completions per prompt (or reads a tirl-eval generations.jsonl), scores every completion under each model, "
        "and reports Spearman/Pearson correlation of R with the per-completion task score (overall and within "
        "prompt), the same for the log-likelihood as a reference, and preference accuracy on chosen/rejected pairs. "
        "Typical use: --models IQLEARN_RUN MLE_RUN --labels iqlearn mle.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", required=True, help="checkpoints to analyse (run directories or model names)")
    p.add_argument("--labels", nargs="*", default=[], help="a short name per model for tables and file names")
    p.add_argument("--dataset", default="gsm8k", help="task whose test prompts are sampled (gsm8k, xsum, wmt22-de-en, ...)")
    p.add_argument("--split", default="test", help="split of the task")
    p.add_argument("--num_examples", type=int, default=50, help="prompts to sample")
    p.add_argument("--samples", type=int, default=4, help="completions per prompt (K)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max_new_tokens", type=int, default=256, help="longest completion")
    p.add_argument("--batch_size", type=int, default=32, help="sequences per generation batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt subset, the sampling and the preference subset")
    p.add_argument("--gamma", type=float, default=None, help="discount γ of the reward; default: each run's own "
                   "iq_gamma (for other models, the --iq_gamma default of `tirl train`). Keep < 1: with γ = 1, R is the "
                   "log-likelihood plus V(s_0). V is read in each run's own iq_value form")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for generation and scoring; default: where the hardware computes bf16 natively "
                   "(a GPU with bf16, a CPU with AVX512-BF16 or AMX), float32 elsewhere")
    p.add_argument("--samples_from", default=None, help="model that generates the completions (default: the first)")
    p.add_argument("--generations", default=None, help="use this generations.jsonl (from `tirl eval`) instead of sampling")
    p.add_argument("--preference", default="hh_rlhf", help="preference pairs: 'hh_rlhf', 'demonstrations' (the task's "
                   "reference completion vs each wrong sample of the same prompt), a local prompt/chosen/rejected "
                   "file, or 'none'")
    p.add_argument("--num_pairs", type=int, default=200, help="preference pairs used (seeded subset)")
    p.add_argument("--num_render", type=int, default=8, help="completions drawn in rewards_<label>.html")
    p.add_argument("--output_dir", required=True, help="where analysis.json, analysis.md and the pictures go")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tirl.data import DataError
    from tirl.jobs.analyse import AnalyseSettings, analyse
    from tirl.jobs.rundir import check_no_links, check_writable, output_lock
    from tirl.models import ModelNotAvailableError

    if args.gamma is not None and not 0.0 <= args.gamma <= 1.0:
        return errors.fail("rewards analyse", f"--gamma must be in [0, 1], got {args.gamma}")
    settings = AnalyseSettings(**{k: v for k, v in vars(args).items()})
    if settings.preference == "none":
        settings.preference = None
    try:
        # before any work: nothing is written through a link, nor into a path that cannot be written
        if check_writable(settings.output_dir):
            check_no_links(settings.output_dir)
        with output_lock(settings.output_dir, "rewards analyse"):
            result = analyse(settings)
    except (DataError, ValueError, ModelNotAvailableError) as e:  # RunDirError is a ValueError
        return errors.fail("rewards analyse", e)
    except KeyboardInterrupt:
        return errors.interrupted("rewards analyse", f"its samples so far are kept in {settings.output_dir}/samples; "
                                  "the same command continues them")
    from tirl.rewards import analysis_markdown

    print(analysis_markdown(result))
    print(f"written to {settings.output_dir}/ (analysis.json, analysis.md, pictures)")
    return 0
