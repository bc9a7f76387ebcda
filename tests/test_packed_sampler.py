"""The packed sampler (`tirl.generation.packed_generate`: finished rows leave the batch) draws what `generate` draws:
the same greedy tokens, the same distribution, reproducibly; and `tirl eval --sampler` records and checks the loop."""

import json

import pytest
import torch

from tirl.evaluation.sampling import SamplingSettings, iter_samples, sample
from tirl.generation import (
    generate,
    generate_samples,
    generation_config,
    left_pad,
    packed_generate,
    sample_completions,
)
from tirl.models import tiny_model

PROMPTS = ["12+3=", "7*8=", "100-1= and more", "a"]


def chaotic_model():
    """tiny-llama in float64 with its weights × 10 (norms kept): its greedy continuations vary token by token."""
    model, tok = tiny_model("tiny-llama", seed=0)
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(10.0)
    return model, tok


def prompt_batch(tok):
    return left_pad([tok(p)["input_ids"] for p in PROMPTS], tok.pad_token_id)


def ending_ids(model, tok, ids, mask):
    """EOS ids under which the rows of `ids` end at different steps of their greedy continuation."""
    config = generation_config(max_new_tokens=16, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                               do_sample=False)
    with torch.no_grad():
        free = generate(model, config, input_ids=ids, attention_mask=mask)[:, ids.shape[1]:]
    return sorted({int(free[0, 6]), int(free[1, 2])})


@pytest.mark.parametrize("copies", [1, 3])
@pytest.mark.parametrize("repack_fraction", [0.01, 0.125, 2.0])
def test_greedy_tokens_equal_generate_in_float64(copies, repack_fraction):
    """Greedy decoding: token for token what `generate` returns (same layout, padding after EOS included), whether
    rows leave the batch at every EOS, in groups, or never; K copies share their prompt pass."""
    model, tok = chaotic_model()
    ids, mask = prompt_batch(tok)
    eos = ending_ids(model, tok, ids, mask)
    config = generation_config(max_new_tokens=16, eos_token_id=eos, pad_token_id=tok.pad_token_id, do_sample=False)
    seen = []
    with torch.no_grad():
        expected = generate(model, config, input_ids=ids.repeat_interleave(copies, 0),
                            attention_mask=mask.repeat_interleave(copies, 0))
        got = packed_generate(model, config, ids, mask, copies, repack_fraction=repack_fraction,
                              on_logits=lambda rows, logits: seen.append(len(rows)))
    assert torch.equal(got, expected)
    lengths = [(row == tok.pad_token_id).logical_not().sum().item() for row in got[:, ids.shape[1]:]]
    assert len(set(lengths)) > 1  # rows did end at different steps
    if repack_fraction < 1:
        assert seen[-1] < seen[0]  # and left the batch


def chi_square_p_value(counts: torch.Tensor, p: torch.Tensor) -> float:
    """P-value of Pearson's chi-square test of `counts` against the distribution `p` (over its support)."""
    kept = p > 0
    expected = p[kept] / p[kept].sum() * counts.sum()
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    return float(torch.special.gammaincc(torch.tensor((int(kept.sum()) - 1) / 2), torch.tensor(chi2 / 2)))


def test_draw_tokens_draws_each_token_in_proportion_to_its_weight():
    """`draw_tokens` (inverse CDF, one uniform per row): unnormalised weights over a vocabulary that is not a whole
    number of blocks, tokens spread over several blocks and 1e-4 next to 0.5; a weight of 0 is never drawn."""
    from tirl.generation import draw_tokens

    weights = torch.zeros(1000)
    weights[[0, 3, 255, 256, 700, 999]] = torch.tensor([5.0, 2.0, 0.001, 1.5, 1.0, 0.5])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        drawn = draw_tokens(weights.expand(200_000, -1))
    counts = torch.bincount(drawn, minlength=1000).double()
    assert counts[weights == 0].sum() == 0 and counts[255] > 0
    assert chi_square_p_value(counts, weights.double()) > 1e-3
    with torch.random.fork_rng():
        torch.manual_seed(0)
        assert torch.equal(draw_tokens(weights.expand(200_000, -1)), drawn)  # a seed gives the same draws


def fixed_distribution_model(logits: torch.Tensor):
    """tiny-llama whose next-token logits are `logits` whatever the input (output layer: zero weights + bias)."""
    model, tok = tiny_model("tiny-llama", seed=0)
    head = torch.nn.Linear(model.config.hidden_size, len(logits), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(logits)
    model.lm_head = head
    return model.double().eval(), tok


def expected_distribution(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """softmax(logits / T) cut to its top-k, then to the most likely tokens holding top_p of what is left (the
    least likely tokens are dropped while their total stays <= 1 - top_p), renormalised."""
    p = torch.softmax(logits.double() / temperature, -1)
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[p.topk(top_k).indices] = True
    p = torch.where(keep, p, 0.0) / p[keep].sum()
    order = p.argsort()  # ascending
    dropped = p[order].cumsum(0) <= 1 - top_p
    p[order[dropped]] = 0.0
    return p / p.sum()


@pytest.mark.parametrize("sampler", ["packed", "generate"])
def test_sampled_frequencies_pass_a_chi_square_test(sampler):
    """On a model whose next-token distribution is fixed, the tokens drawn at every step by the rows still running
    follow softmax(logits / T) cut to top-k and top-p, while EOS sends rows out of the batch at each step."""
    temperature, top_k, top_p = 0.7, 5, 0.9
    logits = torch.full((101,), -1e4, dtype=torch.float64)
    tokens = torch.tensor([2, 10, 20, 30, 40, 50, 60])  # 2 is EOS
    logits[tokens] = torch.tensor([0.6, 1.2, 1.0, 0.8, 0.3, 0.0, -0.5], dtype=torch.float64)
    model, tok = fixed_distribution_model(logits)
    p = expected_distribution(logits, temperature, top_k, top_p)
    assert 4 <= int((p > 0).sum()) < 7 and p[2] > 0.1  # top-k and top-p both cut, EOS stays likely

    ids, mask = left_pad([tok("1+1=")["input_ids"]], tok.pad_token_id)
    config = generation_config(max_new_tokens=5, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                               temperature=temperature, top_k=top_k, top_p=top_p)
    batch_sizes = []
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        out = generate_samples(model, config, ids, mask, 4000, sampler=sampler,
                               on_logits=lambda rows, logits: batch_sizes.append(len(rows)))
    counts = torch.zeros(101, dtype=torch.float64)
    for row in out[:, ids.shape[1]:].tolist():
        for t in row:
            if t == tok.pad_token_id:
                break
            counts[t] += 1
            if t == tok.eos_token_id:
                break
    assert counts[p == 0].sum() == 0  # nothing outside the top-k / top-p set
    assert chi_square_p_value(counts, p) > 1e-3, (counts[p > 0].tolist(), (p[p > 0] * counts.sum()).tolist())
    if sampler == "packed":
        assert batch_sizes[0] == 4000 and batch_sizes == sorted(batch_sizes, reverse=True) and batch_sizes[-1] < 2500


def test_a_fixed_seed_and_batch_size_reproduce_the_samples():
    model, tok = tiny_model("tiny-llama", seed=0)
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 3.0  # rows end at different steps, so rows leave the batch
    model.lm_head.bias = torch.nn.Parameter(bias)
    kw = dict(k=4, max_new_tokens=12, batch_size=8, progress=False, sampler="packed")
    a = sample(model, tok, PROMPTS, SamplingSettings(seed=5, **kw))
    b = sample(model, tok, PROMPTS, SamplingSettings(seed=5, **kw))
    c = sample(model, tok, PROMPTS, SamplingSettings(seed=6, **kw))
    assert a == b and a != c
    assert len({s.num_tokens for per_prompt in a for s in per_prompt}) > 1


def test_eval_samples_and_entropies_agree_with_generate_when_greedy():
    """`iter_samples` on either loop: the same greedy samples, with the same per-token entropies (their rows leave
    the packed batch at different steps)."""
    model, tok = chaotic_model()
    ids, mask = prompt_batch(tok)
    eos = ending_ids(model, tok, ids, mask)

    def run(sampler):
        import tirl.evaluation.sampling as S

        real = S._eos_ids
        S._eos_ids = lambda *a: eos
        try:
            settings = SamplingSettings(k=2, max_new_tokens=12, greedy=True, sampler=sampler, progress=False)
            return [s for _, batch in iter_samples(model, tok, PROMPTS, settings, chat=False)
                    for per_prompt in batch for s in per_prompt]
        finally:
            S._eos_ids = real

    packed, plain = run("packed"), run("generate")
    assert [s.token_ids for s in packed] == [s.token_ids for s in plain]
    assert len({s.num_tokens for s in packed}) > 1
    for a, b in zip(packed, plain, strict=True):
        assert a.finished == b.finished and a.entropy == pytest.approx(b.entropy, rel=1e-6)


def test_policy_samples_go_through_the_packed_loop_by_default(monkeypatch):
    import tirl.generation as G

    model, tok = tiny_model("tiny-llama", seed=0)
    calls = []
    real = G.packed_generate
    monkeypatch.setattr(G, "packed_generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = sample_completions(model, [tok("1+2=")["input_ids"]], max_new_tokens=4, eos_token_ids=[tok.eos_token_id],
                             pad_token_id=tok.pad_token_id)
    assert calls and len(out) == 1 and 1 <= len(out[0]) <= 4


def test_options_the_packed_loop_does_not_apply_are_refused():
    model, tok = tiny_model("tiny-llama", seed=0)
    ids, mask = left_pad([tok("1+2=")["input_ids"]], tok.pad_token_id)
    for extra in (dict(repetition_penalty=1.2), dict(min_p=0.1), dict(num_return_sequences=2)):
        config = generation_config(max_new_tokens=3, eos_token_id=2, pad_token_id=0, **extra)
        with pytest.raises(ValueError, match="sampler='generate'"):
            packed_generate(model, config, ids, mask)
    with pytest.raises(ValueError, match="sampler must be one of"):
        generate_samples(model, generation_config(max_new_tokens=3, eos_token_id=2, pad_token_id=0), ids, mask,
                         sampler="vllm")


def test_eval_records_its_sampler_and_refuses_to_resume_with_another(tmp_path, capsys):
    from tirl.cli import main

    out = tmp_path / "ev"
    args = ["eval", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", "2", "--samples", "2",
            "--max_new_tokens", "6", "--no_progress", "--output_dir", str(out)]
    assert main([*args, "--sampler", "generate"]) == 0
    config = json.loads((out / "eval_config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["sampler_implementation"] == "generate"
    assert metrics["settings"]["sampler_implementation"] == "generate"
    capsys.readouterr()
    assert main(args) == 2  # the default, packed
    assert "sampler_implementation: 'generate' -> 'packed'" in capsys.readouterr().err
    assert main([*args, "--sampler", "generate"]) == 0  # the same loop resumes

    # an evaluation written before the option existed sampled with generate
    del config["sampler_implementation"]
    (out / "eval_config.json").write_text(json.dumps(config))
    assert main([*args, "--sampler", "generate"]) == 0
    assert main(args) == 2


def test_eval_help_names_the_sampler(capsys):
    from tirl.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--sampler {packed,generate}" in text and "leave the batch" in text


def test_under_bf16_autocast_the_packed_loop_sees_generates_logits_bit_for_bit():
    """With bf16 autocast (tirl eval's default on CPUs with native bf16), the packed loop's cache (keys stored in the
    autocast dtype, in preallocated buffers) gives exactly `generate`'s logits at every step."""
    from transformers import LogitsProcessorList

    from tirl.generation import _LogitsTap

    model, tok = tiny_model("tiny-llama", seed=0)
    model.eval()
    ids, mask = prompt_batch(tok)
    config = generation_config(max_new_tokens=12, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                               do_sample=False)
    plain, packed = [], []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = generate(model, config, input_ids=ids.repeat_interleave(2, 0),
                            attention_mask=mask.repeat_interleave(2, 0),
                            logits_processor=LogitsProcessorList([_LogitsTap(lambda r, x: plain.append(x.clone()))]))
        got = packed_generate(model, config, ids, mask, 2, on_logits=lambda r, x: packed.append(x.clone()))
    assert torch.equal(got, expected)
    assert len(plain) == len(packed) == 12 and all(torch.equal(a, b) for a, b in zip(plain, packed, strict=True))


def test_a_forward_that_enters_autocast_itself_gives_generates_tokens():
    """accelerate's mixed precision wraps `forward` in autocast (and `unwrap_model_for_generation` keeps the wrapper):
    the packed loop keeps autocast's cast weights across its steps, which changes no number."""
    import types

    model, tok = tiny_model("tiny-llama", seed=0)
    model.eval()
    model.forward = types.MethodType(torch.autocast("cpu", dtype=torch.bfloat16)(type(model).forward), model)
    ids, mask = prompt_batch(tok)
    config = generation_config(max_new_tokens=10, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                               do_sample=False)
    with torch.no_grad():
        expected = generate(model, config, input_ids=ids, attention_mask=mask)
        got = packed_generate(model, config, ids, mask)
    assert torch.equal(got, expected)
    assert not torch.is_autocast_enabled("cpu")  # the caller's state is back


def test_the_sampling_benchmark_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "sampling.json"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "sampling.py"
    done = subprocess.run([sys.executable, str(script), "--model", "tiny-llama", "--workloads", "short-t1.3,medium",
                           "--prompts", "2", "--rounds", "1", "--no-continuous-batching", "--output", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for workload in ("short-t1.3", "medium"):
        w = result["workloads"][workload]
        assert w["vs_generate"] > 0 and w["fraction_of_bound"] > 0 and w["bound_tokens_per_s"] > 0
        assert set(w["samplers"]) == {"generate", "tirl_generate", "tirl_packed"}
    assert result["setup"]["precision"] in ("bf16 autocast", "float32")
    assert "packed vs generate" in out.with_suffix(".md").read_text()
