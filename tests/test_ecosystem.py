"""tirl where a TRL user runs it: TRL's argument classes and dataset kinds in the Python API, `trl sft`'s data formats
on the command line, the hub upload, the model card, and LoRA runs that load back for evaluation and rewards."""

import json
import re

import pytest
from datasets import Dataset, IterableDataset
from transformers import TrainingArguments
from trl import SFTConfig

from conftest import common_args, trl_rows
from conftest import tirl_in_process as tirl
from tirl.cli import main as cli_main
from tirl.trainers import IQLearnConfig, IQLearnTrainer

TINY = ["--model", "tiny-llama", "--learning_rate", "3e-3", "--logging_steps", "1", "--bf16", "false",
        "--disable_tqdm", "true", "--report_to", "none", "--seed", "0", "--per_device_train_batch_size", "4"]


# --------------------------------------------------------------------------------------------------------------------
# The Python API


@pytest.mark.parametrize("config_class", [SFTConfig, TrainingArguments])
def test_trainer_takes_trls_and_transformers_argument_classes_as_sfttrainer_does(tiny, tmp_path, config_class):
    model, tok = tiny
    args = config_class(**common_args(tmp_path, learning_rate=1e-3, max_steps=1))
    trainer = IQLearnTrainer(model, args=args, train_dataset=trl_rows(tok, n=8), processing_class=tok)
    assert isinstance(trainer.args, IQLearnConfig)
    assert trainer.args.learning_rate == 1e-3 and trainer.args.max_steps == 1  # what was given is kept
    assert trainer.args.iq_lambda == IQLearnConfig.iq_lambda  # tirl's own options at their defaults
    trainer.train()


def _streamed(rows: Dataset) -> IterableDataset:
    return IterableDataset.from_generator(lambda: iter(rows.to_list()))


def test_streaming_data_with_reference_values_is_one_line_naming_the_way_out(tiny, tmp_path):
    model, tok = tiny
    rows = _streamed(trl_rows(tok, n=8))
    with pytest.raises(ValueError, match=r"^iq_value='reference' .* not a IterableDataset: for streaming data use "
                                         r"iq_value='logits' \(--iq_value logits\)"):
        IQLearnTrainer(model, args=IQLearnConfig(**common_args(tmp_path)), train_dataset=rows, processing_class=tok)
    trainer = IQLearnTrainer(model, args=IQLearnConfig(**common_args(tmp_path, iq_value="logits")),
                             train_dataset=rows, processing_class=tok)
    assert trainer.train().global_step == 2


# --------------------------------------------------------------------------------------------------------------------
# A run directory on the hub, and its model card


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    assert cli_main(["train", *TINY, "--dataset", "arithmetic", "--num_train_examples", "16", "--max_steps", "2",
                     "--save_steps", "2", "--eval_strategy", "no", "--iq_lambda", "0.3", "--output_dir", str(run)]) == 0
    return run


def test_push_to_hub_leaves_tirls_caches_and_lock_behind(run_dir):
    import inspect

    from huggingface_hub.utils import filter_repo_objects
    from transformers import Trainer

    # what Trainer.push_to_hub uploads: the output directory less these patterns
    patterns = re.search(r"ignore_patterns=(\[[^\]]*\])", inspect.getsource(Trainer.push_to_hub)).group(1)
    assert patterns == '["_*", f"{PREFIX_CHECKPOINT_DIR}-*"]'
    files = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()]
    assert any(f.startswith("_tirl_reference_values/") for f in files) and "_tirl.lock" in files
    uploaded = list(filter_repo_objects(files, ignore_patterns=["_*", "checkpoint-*"]))
    assert "model.safetensors" in uploaded and "README.md" in uploaded
    assert not [f for f in uploaded if "tirl_reference_values" in f or "lock" in f]


def test_model_card_names_the_method_and_its_settings(run_dir):
    card = (run_dir / "README.md").read_text()
    assert "## Training objective" in card and "IQLearnTrainer" in card
    for setting, value in (("iq_lambda", "0.3"), ("iq_gamma", "0.99"), ("iq_value", "reference"), ("loss_type", "nll")):
        assert f"| `{setting}` | `{value}` |" in card
    assert "Does IQLearn beat MLE?" in card


# --------------------------------------------------------------------------------------------------------------------
# LoRA


@pytest.mark.slow
def test_a_lora_run_on_a_built_in_model_loads_back_for_eval_and_rewards(tmp_path, capsys):
    from tirl import models

    run = tmp_path / "lora"
    rc, _, err = tirl(capsys, "train", *TINY, "--dataset", "arithmetic", "--num_train_examples", 16,
                      "--num_eval_examples", 8, "--max_steps", 4, "--save_steps", 4, "--use_peft", "--lora_r", 4,
                      "--lora_target_modules", "q_proj", "v_proj", "--output_dir", run)
    assert rc == 0, err[-2000:]
    # the run directory holds the merged model (transformers loads it too), the adapter is beside it
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"
    assert not (run / "adapter_config.json").exists()

    # the adapter on its base (rebuilt from the run's seed) is the trained model: its eval loss is the run's
    model, tok = models.load(str(run))
    from tirl.data import load_rows, to_trl

    rows = Dataset.from_list(to_trl(load_rows("arithmetic", split="test", limit=8, seed=0), tok))
    trainer = IQLearnTrainer(model, args=IQLearnConfig(**common_args(tmp_path / "check", max_steps=1)),
                             train_dataset=rows, eval_dataset=rows, processing_class=tok)
    recorded = json.loads((run / "metrics.json").read_text())["eval_after"]["eval_mle_loss"]
    assert trainer.evaluate()["eval_mle_loss"] == pytest.approx(recorded, rel=1e-4)

    for command in (["eval", "--model", run, "--dataset", "arithmetic", "--num_examples", 2, "--samples", 1,
                     "--max_new_tokens", 4, "--no_progress", "--output_dir", tmp_path / "ev"],
                    ["rewards", "--model", run, "--dataset", "arithmetic", "--num_examples", 2, "--output_dir",
                     tmp_path / "rw"]):
        rc, _, err = tirl(capsys, *command)
        assert rc == 0, err[-2000:]


# --------------------------------------------------------------------------------------------------------------------
# `trl sft`'s data formats on the command line


def _train_on(capsys, tmp_path, data, *extra):
    run = tmp_path / "run"
    rc, out, err = tirl(capsys, "train", *TINY, "--dataset", data, "--max_steps", 1, "--eval_strategy", "no",
                        "--save_strategy", "no", "--output_dir", run, *extra)
    return rc, out, err, run


def test_text_rows_train_as_language_modelling(tmp_path, capsys):
    data = tmp_path / "lm.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i} plus one is {i + 1}."}) + "\n" for i in range(30)))
    rc, out, err, run = _train_on(capsys, tmp_path, data)
    assert rc == 0, err[-2000:]
    assert json.loads((run / "run.json").read_text())["data"]["train"]["rows_available"] == 28  # 2 held out


def test_parquet_files_go_through_datasets(tmp_path, capsys):
    data = tmp_path / "rows.parquet"
    Dataset.from_list([{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(30)]).to_parquet(str(data))
    rc, out, err, run = _train_on(capsys, tmp_path, data)
    assert rc == 0, err[-2000:]
    assert json.loads((run / "run.json").read_text())["data"]["train"]["rows_available"] == 28


def test_a_file_mixing_formats_names_the_first_row_that_differs(tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    chat = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]
    data.write_text(json.dumps({"messages": chat}) + "\n" + json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
    rc, out, err, run = _train_on(capsys, tmp_path, data)
    assert rc == 2 and err.strip().splitlines()[-1].startswith(f"tirl train: error: --dataset: {data}:2: ")
    assert not run.exists()


def test_plain_rows_train_as_plain_text_unless_wrapped_in_the_chat_template(tmp_path, capsys):
    from tirl.data import load_rows, to_trl
    from tirl.models import load

    _, tok = load("tiny-llama")
    rows = [{"prompt": "1+1=", "completion": "2"}]
    assert to_trl(rows, tok, chat=False) == [{"prompt": "1+1=", "completion": "2"}]  # trl sft's default
    assert to_trl(rows, tok, chat=True)[0]["prompt"] == [{"role": "user", "content": "1+1="}]
    # a built-in task keeps its own rule: the chat template whenever the tokenizer has one
    assert isinstance(to_trl(load_rows("arithmetic", limit=1), tok)[0]["prompt"], list)

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(30)))
    for extra, wrapped in (((), False), (("--wrap_in_chat_template",), True)):
        rc, out, err, run = _train_on(capsys, tmp_path, data, "--overwrite", *extra)
        assert rc == 0, err[-2000:]
        assert json.loads((run / "run.json").read_text())["script"]["wrap_in_chat_template"] is wrapped
    rc, out, err = tirl(capsys, "train", "--help")
    assert "--wrap_in_chat_template" in out


def test_the_eval_help_says_prompts_are_zero_shot_and_gives_the_lm_eval_recipe(capsys):
    rc, out, _ = tirl(capsys, "eval", "--help")
    text = " ".join(out.split())
    assert "0-shot" in text and "lm_eval --model hf --model_args pretrained=" in text

