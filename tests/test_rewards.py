"""Reward extraction: telescoping, masks, batching invariance, preference accuracy, scorer, pictures, CLI."""

import html.parser
import json
import math
import os
import shutil
import subprocess

import pytest

from conftest import run_cli
from tirl.data import load_rows, to_trl
from tirl.rewards import RewardModel, RewardScorer, ScoreSettings, pairwise_accuracy, preference_accuracy, score

QUIET = ScoreSettings(progress=False)


def pairs(tok, n=4, limit_len=None):
    rows = to_trl(load_rows("arithmetic", split="test", limit=n), tok)
    return [(r["prompt"], r["completion"]) for r in rows]


def test_rewards_telescope_for_gamma_one(tiny):
    """γ = 1: Σ r_t over the episode = log π(y|x) + V(s_0) (docs/method.md §4), for completions ending in EOS."""
    model, tok = tiny
    for s in score(RewardModel(model, tok).with_gamma(1.0), pairs(tok), QUIET):
        assert s.terminated
        eos_at = s.token_ids.index(tok.eos_token_id)
        episode_logprob = sum(s.logprobs[: eos_at + 1])
        assert abs(s.reward - (episode_logprob + s.value0)) < 1e-3 * max(1.0, abs(s.reward))
        # the template's "\n" after EOS is outside the episode: no reward, but its log π is reported
        assert all(math.isnan(r) for r in s.rewards[eos_at + 1 :]) and not math.isnan(s.rewards[eos_at])
        # Σ log π runs over the same tokens as R, so at γ = 1 the two differ by V(s_0) alone
        assert s.num_tokens > eos_at + 1
        assert abs(s.logprob - episode_logprob) < 1e-4 * max(1.0, abs(s.logprob))


def test_gamma_below_one_is_not_a_likelihood(tiny):
    model, tok = tiny
    a = score(RewardModel(model, tok).with_gamma(1.0), pairs(tok), QUIET)
    b = score(RewardModel(model, tok).with_gamma(0.9), pairs(tok), QUIET)
    assert all(abs(x.reward - y.reward) > 1e-3 for x, y in zip(a, b, strict=True))
    assert all(abs(x.logprob - y.logprob) < 1e-5 for x, y in zip(a, b, strict=True))


def test_masks_and_batching_do_not_change_rewards(tiny):
    """Only completion tokens are scored, and padding in a batch changes nothing."""
    model, tok = tiny
    ps = pairs(tok, n=5)
    together = score(RewardModel(model, tok), ps, ScoreSettings(batch_size=5, progress=False))
    alone = [score(RewardModel(model, tok), [p], ScoreSettings(batch_size=1, progress=False))[0] for p in ps]
    # batched by length, returned in input order
    in_twos = score(RewardModel(model, tok), ps, ScoreSettings(batch_size=2, progress=False))
    assert len({len(a.token_ids) for a in alone}) > 1
    for a, b, c in zip(together, alone, in_twos, strict=True):
        assert a.token_ids == b.token_ids == c.token_ids
        assert abs(a.reward - b.reward) < 1e-4 and abs(a.logprob - b.logprob) < 1e-4
        assert abs(c.reward - b.reward) < 1e-4
    completion = ps[0][1][0]["content"]
    assert "".join(together[0].tokens).startswith(completion)  # completion tokens only, prompt excluded
    assert together[0].num_tokens == len(completion) + 2  # + "<|im_end|>" + "\n" (char tokenizer)


def test_pairwise_accuracy_by_hand():
    assert pairwise_accuracy([3.0, 1.0, 2.0], [1.0, 1.0, 5.0]) == pytest.approx(0.5)  # win, tie (½), loss
    assert pairwise_accuracy([2.0, 2.0], [1.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="chosen and rejected must have the same length"):
        pairwise_accuracy([1.0], [])


def test_preference_accuracy_on_a_hand_made_case(tiny):
    model, tok = tiny
    prompt = [{"role": "user", "content": "Say hi"}]
    same = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "hi"}], "rejected": [{"role": "assistant", "content": "hi"}]}
    res = preference_accuracy(RewardModel(model, tok), [same, same], QUIET)
    assert res["accuracy"] == 0.5 and res["accuracy_logprob"] == 0.5 and res["n"] == 2  # ties count one half
    # a chosen completion that equals the rejected one plus extra text differs in R; the accuracy follows the sign
    long = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "hi"}], "rejected": [{"role": "assistant", "content": "hi there friend"}]}
    res = preference_accuracy(RewardModel(model, tok), [long], QUIET)
    s_c, s_r = score(RewardModel(model, tok), [(prompt, long["chosen"]), (prompt, long["rejected"])], QUIET)
    assert res["accuracy"] == (1.0 if s_c.reward > s_r.reward else 0.0)


def test_reward_scorer_is_a_trl_reward_function(tiny):
    model, tok = tiny
    scorer = RewardScorer(model, tok, gamma=0.99)
    assert scorer.__name__ == "tirl_reward"
    prompts = ["What is 2 + 2?", "Name a colour."]
    completions = ["4", "Blue"]
    out = scorer(prompts=prompts, completions=completions, extra_column=[1, 2])
    assert len(out) == 2 and all(isinstance(x, float) for x in out)
    ref = score(RewardModel(model, tok), list(zip(prompts, completions, strict=True)), QUIET)
    assert out == [s.reward for s in ref]
    # like TRL: strings are plain text, message lists go through the chat template
    conv_prompts = [[{"role": "user", "content": p}] for p in prompts]
    conv_completions = [[{"role": "assistant", "content": c}] for c in completions]
    conv = scorer(prompts=conv_prompts, completions=conv_completions)
    conv_pairs = list(zip(conv_prompts, conv_completions, strict=True))
    assert conv == [s.reward for s in score(RewardModel(model, tok), conv_pairs, QUIET)]
    assert conv != out
    mean = RewardScorer(model, tok, normalize="mean")(prompts=prompts, completions=completions)
    assert mean == [s.reward / s.num_tokens for s in ref]


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_and_png_render(tiny, tmp_path):
    from tirl.rewards import render_html, render_png, reward_histogram

    model, tok = tiny
    scored = score(RewardModel(model, tok), pairs(tok, n=3), QUIET)
    page = render_html(scored, tmp_path / "r.html", labels=[{"prompt": "p<&>", "correct": True}] * 3)
    parser = _Collect()
    parser.feed(page.read_text())
    assert "script" not in parser.tags and parser.tags.count("section") == 3
    assert "p<&>" in "".join(parser.text)  # escaped in the page, intact once parsed
    assert render_png(scored, tmp_path / "r.png").stat().st_size > 5000
    assert reward_histogram({"correct": [1.0, 2.0], "wrong": [0.0]}, tmp_path / "h.png").stat().st_size > 5000

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        # CI (.ci/run) installs Chromium and sets TIRL_REQUIRE_CHROMIUM=1: there the page must be rendered, never skipped
        if os.environ.get("TIRL_REQUIRE_CHROMIUM") == "1" or os.environ.get("CI"):
            pytest.fail("headless Chromium is required here (TIRL_REQUIRE_CHROMIUM=1 or CI) but not installed: "
                        "apt-get install -y chromium")
        pytest.skip("headless Chromium not installed (apt install chromium): the page was checked by parsing only")
    shot = tmp_path / "shot.png"
    # as root Chromium needs --no-sandbox; a fresh profile and no background services keep it off the network
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'u'}", f"--screenshot={shot}", "--window-size=1000,800",
                           page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).astype(int)  # [800, 1000, 3]
    assert pixels.shape == (800, 1000, 3)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # the legend's and the tokens' backgrounds: red (lower reward) and blue (higher reward) were painted
    assert ((r > g + 80) & (r > b + 80)).sum() > 50 and ((b > r + 80) & (b > g + 40)).sum() > 50


@pytest.mark.slow
def test_rewards_cli_end_to_end(tmp_path):
    from tirl.models import tiny_model

    model, tok = tiny_model("tiny-llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "out"
    proc = run_cli("rewards", "--model", str(tmp_path / "m"), "--dataset",
                           "arithmetic", "--num_examples", "6", "--output_dir", str(out), check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "rewards.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"rewards", "values", "logprobs", "reward", "prompt"} <= rows[0].keys()
    assert len(rows[0]["rewards"]) == len(rows[0]["tokens"]) == rows[0]["num_tokens"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 6 and summary["gamma"] == 0.99
    assert (out / "rewards.html").is_file() and (out / "rewards.png").is_file()


@pytest.mark.slow
def test_grpo_example_uses_the_reward(tmp_path, capsys):
    """The RLHF reuse example: TRL's GRPOTrainer runs with RewardScorer as its reward function."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "grpo_with_tirl_reward.py"
    spec = importlib.util.spec_from_file_location("grpo_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--reward_model", "tiny-llama", "--policy", "tiny-llama", "--max_steps", "1", "--num_prompts", "8",
                 "--output_dir", str(tmp_path)])
    assert "mean reward per step: [" in capsys.readouterr().out


def test_rank_correlations_by_hand():
    from tirl.rewards import pearson, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 100], [1, 2, 3, 4]) == pytest.approx(1.0)  # ranks, not values
    assert pearson([1, 2, 3, 100], [1, 2, 3, 4]) < 0.9
    # ties take their average rank: x ranks (1.5, 1.5, 3), y ranks (1, 2, 3) → r = 0.866…
    assert spearman([0, 0, 1], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_within_prompt_spearman_ignores_prompts_without_variation():
    from tirl.rewards import within_prompt_spearman

    groups = {0: [(1.0, 0.0), (2.0, 1.0)], 1: [(5.0, 1.0), (3.0, 1.0)], 2: [(1.0, 1.0), (2.0, 0.0)]}
    value, n = within_prompt_spearman(groups)
    assert n == 2 and value == pytest.approx(0.0)  # +1 and −1; prompt 1 has a constant score


@pytest.mark.slow
def test_rewards_analyse_end_to_end(tmp_path):
    from tirl.models import tiny_model

    model, tok = tiny_model("tiny-llama")
    for name in ("a", "b"):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("\n".join(json.dumps({"prompt": "Say hi", "chosen": "hi", "rejected": "bye"}) for _ in range(3)) + "\n")
    out = tmp_path / "analysis"
    proc = run_cli("rewards", "analyse", "--models", str(tmp_path / "a"),
                           str(tmp_path / "b"), "--labels", "a", "b", "--dataset", "arithmetic", "--num_examples", "4",
                           "--samples", "3", "--max_new_tokens", "24", "--preference", str(prefs), "--no-bf16",
                           "--output_dir", str(out), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "analysis.json").read_text())
    assert result["num_completions"] == 12 and set(result["models"]) == {"a", "b"}
    a, b = result["models"]["a"], result["models"]["b"]
    assert a["reward"] == b["reward"] and a["preference"]["n"] == 3  # the same weights give the same rewards
    for name in ("analysis.md", "reward_hist_a.png", "rewards_a.html", "samples/generations.jsonl"):
        assert (out / name).is_file(), name

    # the same completions again, read from the file, against the task's own demonstrations
    out2 = tmp_path / "analysis2"
    proc = run_cli("rewards", "analyse", "--models", str(tmp_path / "a"),
                           "--generations", str(out / "samples" / "generations.jsonl"), "--preference", "demonstrations",
                           "--no-bf16", "--output_dir", str(out2), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result2 = json.loads((out2 / "analysis.json").read_text())
    assert result2["settings"]["dataset"] == "arithmetic"  # the generations' dataset, not the option's default
    again = result2["models"]["a"]
    assert again["reward"] == a["reward"]
    wrong = sum(1 for line in (out / "samples" / "generations.jsonl").read_text().splitlines()
                if not json.loads(line)["scores"]["correct_flexible"])
    assert again["preference"]["n"] == wrong > 0
    assert "demonstrations" in (out2 / "analysis.md").read_text()


def test_demonstration_pairs_put_the_reference_above_each_wrong_sample(tiny):
    from tirl.data import load_rows, to_trl
    from tirl.rewards import demonstration_pairs

    _, tok = tiny
    rows = load_rows("arithmetic", split="test")[:2]
    records = [{"id": r["id"], "prompt": r["prompt"], "text": f"sample {i}"} for r in rows for i in range(2)]
    score = [1.0, 0.0, 0.0, 0.0]  # the first sample of the first prompt is correct: no pair for it
    pairs = demonstration_pairs(records, score, "gsm8k", "arithmetic", "test", tok)
    assert [p["id"] for p in pairs] == [rows[0]["id"], rows[1]["id"], rows[1]["id"]]
    trained_as = to_trl([{"prompt": rows[1]["prompt"], "completion": rows[1]["completion"]}], tok)[0]
    assert pairs[1]["prompt"] == trained_as["prompt"] and pairs[1]["chosen"] == trained_as["completion"]
    assert pairs[1]["rejected"] == to_trl([{"prompt": rows[1]["prompt"], "completion": "sample 0"}], tok)[0]["completion"]
    # other tasks have no "wrong": every sample is a rejected one
    assert len(demonstration_pairs(records, score, "rouge", "arithmetic", "test", tok)) == 4
    with pytest.raises(ValueError, match="no demonstration pairs"):
        demonstration_pairs(records[:1], score[:1], "gsm8k", "arithmetic", "test", tok)
