"""`tirl eval` and `tirl compare` end to end with tiny models on the generated arithmetic task."""

import json

import pytest

from tirl.cli import main

BASE = ["--dataset", "arithmetic", "--num_examples", "6", "--samples", "2", "--max_new_tokens", "8",
        "--batch_size", "4", "--no_progress"]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def save_run(path, method, iq_lambda, seed):
    """A stand-in for a `tirl train` run directory: a tiny model + tokenizer and its run.json."""
    from tirl.models import tiny_model

    model, tok = tiny_model("tiny-llama", seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "run.json").write_text(json.dumps({"method": method, "model": "tiny-llama",
                                               "config": {"iq_lambda": iq_lambda, "iq_gamma": 0.99}}))
    return path


@pytest.mark.slow
def test_eval_writes_files_and_resumes_without_recomputing(tmp_path, monkeypatch, capsys):
    import tirl.evaluation.sampling as sampling

    out = tmp_path / "ev"
    args = ["eval", "--model", "tiny-llama", *BASE, "--output_dir", str(out)]

    # reference: an uninterrupted run
    assert main([*args[:-1], str(tmp_path / "full")]) == 0
    full = read_lines(tmp_path / "full" / "generations.jsonl")
    assert len(full) == 6 * 1 + 6 * 2  # greedy: one per prompt; sampled: K per prompt

    # an interrupted run: the sampled pass dies after its first batch (2 prompts of K=2 at batch size 4)
    real_iter = sampling.iter_samples
    generated: list[tuple[str, list[int]]] = []

    def dying_iter(*a, **kw):
        for n, (idx, batch) in enumerate(real_iter(*a, **kw)):
            generated.append((kw["desc"], idx))
            if kw["desc"].startswith("sampled") and n == 1 and not kw.get("skip"):
                raise KeyboardInterrupt
            yield idx, batch

    monkeypatch.setattr(sampling, "iter_samples", dying_iter)
    assert main(args) == 130  # Ctrl-C: one line saying what was kept, as training does
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("tirl eval: interrupted; ")
    partial = read_lines(out / "generations.jsonl")
    assert len(partial) == 6 + 2 * 2 and not (out / "metrics.json").exists()
    with open(out / "generations.jsonl", "a") as f:
        f.write('{"pass": "sampled", "prompt_in')  # a line torn by the crash

    # resuming generates only the 4 unfinished prompts of the sampled pass, and gives the uninterrupted result
    generated.clear()
    assert main(args) == 0
    assert [(d.split()[0], idx) for d, idx in generated] == [("sampled", [2, 3]), ("sampled", [4, 5])]
    resumed = read_lines(out / "generations.jsonl")
    key = lambda r: (r["pass"], r["prompt_index"], r["sample_index"])  # noqa: E731
    assert sorted(resumed, key=key) == sorted(full, key=key)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "tirl.eval" and metrics["metric_family"] == "gsm8k"
    assert metrics["timing"]["resumed_prompts"] == {"greedy": 6, "sampled": 2}
    for name, k in (("greedy", 1), ("sampled", 2)):
        m = metrics[name]
        assert m["k"] == k and 0 <= m["accuracy_flexible"] <= 1 and 0 < m["mean_tokens"] <= 8
        assert 0 <= m["distinct_1"] <= 1 and m["entropy"] > 0
    assert "self_bleu" in metrics["sampled"] and "self_bleu" not in metrics["greedy"]
    settings = metrics["settings"]
    assert (settings["samples"], settings["temperature"], settings["seed"], settings["max_new_tokens"]) == (2, 1.0, 0, 8)
    assert settings["self_bleu"]["n"] == 4 and metrics["versions"]["torch"]
    report = (out / "report.md").read_text()
    assert "| greedy |" in report and "Self-BLEU" in report and "### arith-test-" in report

    # a finished evaluation is not recomputed at all: the model is not even loaded
    import tirl.models

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded although every generation exists")

    monkeypatch.setattr(tirl.models, "load", no_load)
    assert main(args) == 0
    assert read_lines(out / "generations.jsonl") == resumed


def test_changed_settings_are_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "ev"
    small = ["eval", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", "2", "--samples", "2",
             "--max_new_tokens", "4", "--no-greedy", "--no_progress", "--output_dir", str(out)]
    assert main(small) == 0
    assert main([*small, "--temperature", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "other settings (temperature: 1.0 -> 0.5)" in err and "--overwrite" in err
    assert main([*small, "--temperature", "0.5", "--overwrite"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["temperature"] == 0.5 and "greedy" not in metrics
    assert len(read_lines(out / "generations.jsonl")) == 4


def test_eval_argument_errors(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--samples", "0", "--no-greedy"])
    assert "nothing to generate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--temperature", "0"])
    assert main(["eval", "--model", "tiny-llama", "--dataset", "no-such-dataset-xyz", "--no_progress"]) == 2
    assert "not a built-in task" in capsys.readouterr().err


def test_eval_and_compare_help_explain_every_option(capsys):
    from tirl.cli import compare as compare_cli
    from tirl.cli import eval as eval_cli

    for command, module in (("eval", eval_cli), ("compare", compare_cli)):
        for action in module.build_parser()._actions:
            assert action.help and len(action.help) > 10, (command, action.dest)
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "Examples:" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_two_runs_writes_png_and_table(tmp_path, capsys):
    runs = [save_run(tmp_path / "mle-run", "mle", 0.0, seed=0), save_run(tmp_path / "iq-run", "iqlearn", 0.1, seed=1)]
    for run in runs:
        assert main(["eval", "--model", str(run), *BASE]) == 0
        assert len(list((run / "eval").glob("*/metrics.json"))) == 1  # the default output: RUN/eval/<tag>
    png = tmp_path / "out" / "compare.png"
    assert main(["compare", *map(str, runs), "--output", str(png)]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "![task score vs Self-BLEU](compare.png)" in table
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert "Self-BLEU" in lines[0] and "accuracy (flexible, last number) (sampled)" in lines[0]
    assert lines[1].startswith("| mle | arithmetic | 6 | 2 | 1 |")
    assert lines[2].startswith("| iqlearn λ=0.1 | arithmetic | 6 | 2 | 1 |")
    printed = capsys.readouterr().out
    assert "iqlearn λ=0.1" in printed and str(png) in printed

    # an eval directory given directly works too, and explicit labels replace the run names
    eval_dir = next((runs[0] / "eval").glob("*"))
    assert main(["compare", str(eval_dir), str(runs[1]), "--labels", "A,B", "--output", str(png)]) == 0
    assert "| A |" in (tmp_path / "out" / "compare.md").read_text()


def test_compare_errors(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)  # the default --output is compare.png in the working directory
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "no evaluation found" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # a refused compare leaves nothing, its lock too


def test_eval_on_a_local_file_with_its_own_fields(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) for i in range(3)))
    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny-llama", "--dataset", str(data), "--prompt_field", "question",
                 "--completion_field", "answer", "--reference_field", "answer", "--metric", "gsm8k",
                 "--num_examples", "0", "--samples", "2", "--no-greedy", "--max_new_tokens", "4", "--no_progress",
                 "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_prompts"] == 3 and metrics["metric_family"] == "gsm8k"
    lines = read_lines(out / "generations.jsonl")
    assert {line["prompt"] for line in lines} == {f"What is {i} + 1?" for i in range(3)}
    # gsm8k's scores; 4 characters cannot hold a `#### n` line (a random model may still end on the right number)
    assert all(set(line["scores"]) == {"correct_strict", "correct_flexible"} and not line["scores"]["correct_strict"]
               for line in lines)


def test_conversations_are_evaluated_on_their_last_assistant_turn(tmp_path):
    from tirl.jobs.eval import EvalSettings, load_eval_rows

    data = tmp_path / "chat.jsonl"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."}]
    data.write_text(json.dumps({"messages": msgs}) + "\n")
    (row,) = load_eval_rows(EvalSettings(dataset=str(data), num_examples=None))
    assert row["prompt"] == msgs[:2] and row["reference"] == "Hello."


def test_frontier_averages_seeds_per_label_and_temperature(tmp_path):
    from tirl.evaluation.report import Evaluation, compare_table, frontier, label_evaluations, plot_compare

    def ev(model, temp, acc, sb, greedy_acc, method="mle", lam=0.0):
        m = {"kind": "tirl.eval", "model": model, "dataset": "arithmetic", "split": "test", "num_prompts": 8,
             "metric_family": "gsm8k", "run": {"method": method, "iq_lambda": lam, "iq_value": "reference"},
             "settings": {"temperature": temp, "samples": 4},
             "sampled": {"accuracy_flexible": acc, "self_bleu": sb}, "greedy": {"accuracy_flexible": greedy_acc}}
        return Evaluation(tmp_path / f"{model}-{temp}", m)

    evals = [ev("mle-s0", 0.7, 0.4, 30.0, 0.5), ev("mle-s0", 1.0, 0.3, 20.0, 0.5),
             ev("mle-s1", 0.7, 0.6, 40.0, 0.7), ev("mle-s1", 1.0, 0.5, 10.0, 0.7),
             ev("iq-s0", 1.0, 0.45, 15.0, 0.6, method="iqlearn", lam=0.1)]
    label_evaluations(evals)
    assert [e.label for e in evals[-2:]] == ["mle", "iqlearn λ=0.1 (reference V)"]
    series = frontier(evals, "accuracy_flexible")
    mle = {p.temperature: p for p in series["mle"]}
    assert [p.temperature for p in series["mle"]] == [None, 0.7, 1.0]  # greedy end first
    assert mle[None].n == 2 and mle[None].score == pytest.approx(60.0) and mle[None].self_bleu == 100.0  # greedy once per model
    assert mle[0.7].score == pytest.approx(50.0) and mle[0.7].score_sem == pytest.approx(10.0)
    assert mle[1.0].self_bleu == pytest.approx(15.0) and mle[1.0].self_bleu_sem == pytest.approx(5.0)
    assert series["iqlearn λ=0.1 (reference V)"][1].score_sem is None  # one run: no error bar
    table = compare_table(evals, "accuracy_flexible")
    assert "| mle | 0.7 | 2 | 50.0% ± 10.0% | 35.0 ± 5.0 |" in table
    png = plot_compare(evals, "accuracy_flexible", tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one label per RUN_DIR
    label_evaluations(evals, ["A", "B", "C"], groups=[0, 0, 1, 1, 2])
    assert [e.label for e in evals] == ["A", "A", "B", "B", "C"]
    with pytest.raises(ValueError, match="labels"):
        label_evaluations(evals, ["A", "B"], groups=[0, 0, 1, 1, 2])


def test_memorisation_on_the_runs_own_training_prompts(tmp_path):
    """A run's training rows are rebuilt from its run.json (and checked against its checksum): evaluated on its
    training prompts, each prompt once, every pass says how often it repeats that prompt's demonstrations; on prompts
    it never trained on there is nothing to say."""
    from conftest import run_cli
    from tirl.data import load_rows
    from tirl.data.many_answer import canonical_answer
    from tirl.jobs.eval import demonstrations, run_training_rows

    run = tmp_path / "run"
    run_cli("train", "--method", "mle", "--model", "tiny-llama", "--dataset", "pick-two", "--num_train_examples", "16",
            "--num_train_epochs", "1", "--seed", "3", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
            "--output_dir", run)
    trained = load_rows("pick-two", split="train", limit=16, seed=3)
    assert run_training_rows(str(run)) == trained
    rows = trained[::4]
    assert demonstrations(str(run), rows) == [
        frozenset(canonical_answer(r["completion"], r["reference"]) for r in trained if r["prompt"] == row["prompt"])
        for row in rows]

    out = tmp_path / "on-train"
    run_cli("eval", "--model", run, "--dataset", "pick-two", "--split", "train", "--num_examples", "16",
            "--data_seed", "3", "--samples", "3", "--temperature", "1", "--max_new_tokens", "6", "--no_progress",
            "--output_dir", out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_prompts"] == 4  # 16 rows are 4 prompts drawn 4 times each
    for name in ("greedy", "sampled"):
        mem = m[name]["memorisation"]
        assert mem["prompts"] == 4 and 0 <= mem["demonstrated"] + mem["novel_valid"] <= m[name]["precision"] + 1e-9
    assert "repeat a demonstration" in (out / "report.md").read_text()

    test = tmp_path / "on-test"
    run_cli("eval", "--model", run, "--dataset", "pick-two", "--num_examples", "3", "--samples", "2",
            "--max_new_tokens", "6", "--no_progress", "--output_dir", test)
    assert "memorisation" not in json.loads((test / "metrics.json").read_text())["sampled"]
