"""Sampling K completions per prompt with a tiny model built in code."""

import math
from dataclasses import replace

import pytest
import torch

from tirl.data import to_trl
from tirl.evaluation.sampling import Sample, SamplingSettings, batch_seed, encode_prompt, iter_samples, sample
from tirl.models import char_tokenizer, tiny_model

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Count to three."]


def test_k_samples_per_prompt_with_their_fields(tiny):
    model, tok = tiny
    out = sample(model, tok, PROMPTS, SamplingSettings(k=3, max_new_tokens=12, batch_size=4, seed=0, progress=False))
    assert len(out) == len(PROMPTS) and all(len(s) == 3 for s in out)
    for samples in out:
        for s in samples:
            assert isinstance(s, Sample)
            assert s.num_tokens == len(s.token_ids) <= 12
            assert s.finished == (tok.eos_token_id in s.token_ids)
            assert 0 < s.entropy <= math.log(len(tok)) + 1e-4  # a random model is close to uniform
            assert s.text == tok.decode(s.token_ids, skip_special_tokens=True).strip()
    # sampling: the K samples of a prompt differ
    assert len({tuple(s.token_ids) for s in out[0]}) > 1


def test_seeds_reproducible_and_rng_untouched(tiny):
    model, tok = tiny
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = sample(model, tok, PROMPTS, SamplingSettings(k=2, max_new_tokens=10, batch_size=4, seed=7, progress=False))
    assert torch.rand(1) == before  # the caller's random stream is not consumed
    b = sample(model, tok, PROMPTS, SamplingSettings(k=2, max_new_tokens=10, batch_size=4, seed=7, progress=False))
    c = sample(model, tok, PROMPTS, SamplingSettings(k=2, max_new_tokens=10, batch_size=4, seed=8, progress=False))
    assert a == b
    assert a != c
    assert batch_seed(0, 0) != batch_seed(0, 1) != batch_seed(1, 0)


def test_skipping_prompts_reproduces_the_same_batches(tiny):
    """What resuming relies on: with the same batch size, skipping finished batches leaves later ones unchanged."""
    model, tok = tiny
    settings = SamplingSettings(k=2, max_new_tokens=8, batch_size=4, seed=3, progress=False)
    full = sample(model, tok, PROMPTS * 2, settings)
    # batch_size 4, K 2 → 2 prompts per call: batches start at prompts 0, 2, 4
    rest = dict(
        (i, s)
        for idx, batch in iter_samples(model, tok, PROMPTS * 2, settings, skip={0, 1})
        for i, s in zip(idx, batch, strict=True)
    )
    assert sorted(rest) == [2, 3, 4, 5]
    assert all(rest[i] == full[i] for i in rest)


def test_greedy_is_deterministic_and_equal_across_k(tiny):
    model, tok = tiny
    a = sample(model, tok, PROMPTS, SamplingSettings(k=3, max_new_tokens=10, greedy=True, seed=0, progress=False))
    b = sample(model, tok, PROMPTS, SamplingSettings(k=3, max_new_tokens=10, greedy=True, seed=99, progress=False))
    assert a == b
    for samples in a:
        assert all(s == samples[0] for s in samples)
    # greedy = the argmax continuation: the first token is the argmax of the model's next-token logits
    ids = torch.tensor([encode_prompt(PROMPTS[0], tok)])
    assert a[0][0].token_ids[0] == model(ids).logits[0, -1].argmax().item()


def test_generation_stops_at_eos_and_is_cut_there():
    model, tok = tiny_model("tiny-llama", seed=0)
    # a bias on the output layer makes EOS by far the most likely token: generation stops at once
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 1e4
    model.lm_head.bias = torch.nn.Parameter(bias)
    out = sample(model, tok, PROMPTS, SamplingSettings(k=2, max_new_tokens=20, greedy=True, progress=False))
    for samples in out:
        s = samples[0]
        assert s.finished and s.token_ids == [tok.eos_token_id] and s.num_tokens == 1 and s.text == ""
        assert s.entropy == pytest.approx(0.0, abs=1e-3)


def test_sequences_in_a_batch_finish_independently(tiny):
    """A row that ends early keeps only its own tokens (up to EOS), while the others run to max_new_tokens."""
    from tirl.evaluation.sampling import _to_sample

    _, tok = tiny
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ids = torch.tensor([10, 11, eos, pad, pad])
    ent = torch.tensor([1.0, 2.0, 3.0, 9.0, 9.0])
    s = _to_sample(ids, ent, [eos], tok)
    assert s.token_ids == [10, 11, eos] and s.finished and s.entropy == pytest.approx(2.0)
    s = _to_sample(torch.tensor([10, 11, 12]), torch.tensor([1.0, 1.0, 4.0]), [eos], tok)
    assert not s.finished and s.num_tokens == 3 and s.entropy == pytest.approx(2.0)


def test_prompts_are_encoded_as_trl_encodes_training_prompts(tiny):
    from trl.data_utils import _tokenize

    _, tok = tiny
    row = {"id": "0", "prompt": "What is 2 + 3?", "completion": "5", "reference": "5"}
    trl_prompt = to_trl([row], tok)[0]["prompt"]
    expected = _tokenize(tok, trl_prompt, add_generation_prompt=True)["input_ids"]
    assert encode_prompt(row["prompt"], tok) == list(expected)
    assert tok.decode(encode_prompt(row["prompt"], tok)).endswith("<|im_start|>assistant\n")

    plain = char_tokenizer()
    plain.chat_template = None
    trl_plain = to_trl([row], plain)[0]["prompt"]
    assert encode_prompt(row["prompt"], plain) == list(_tokenize(plain, trl_plain)["input_ids"])


def test_left_padding_does_not_change_greedy_outputs(tiny):
    model, tok = tiny
    greedy = SamplingSettings(k=1, max_new_tokens=8, greedy=True, progress=False)
    alone = [sample(model, tok, [p], greedy)[0][0] for p in PROMPTS]
    batched = sample(model, tok, PROMPTS, replace(greedy, batch_size=8))
    assert [b[0].token_ids for b in batched] == [a.token_ids for a in alone]


def test_bad_settings_are_refused_when_built():
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=0.0)
    with pytest.raises(ValueError, match="k must be"):
        SamplingSettings(k=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=1.5)
    with pytest.raises(ValueError, match="sampler"):
        SamplingSettings(sampler="beam")
    assert SamplingSettings(temperature=0.0, greedy=True).greedy  # greedy decoding has no temperature


def test_k_copies_read_the_prompt_once_and_draw_what_num_return_sequences_draws(tiny):
    """`generate_copies` (the prompt's cache computed once, repeated K times) gives exactly `generate` with
    num_return_sequences=K, same seed: the same distribution and the same draws."""
    from tirl.generation import generate, generate_copies, generation_config, left_pad

    model, tok = tiny
    model.eval()
    ids, mask = left_pad([tok("12+3=")["input_ids"], tok("4+40=44 and")["input_ids"]], tok.pad_token_id)
    common = dict(max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, temperature=0.8)
    with torch.no_grad():
        torch.manual_seed(3)
        plain = generate(model, generation_config(**common, num_return_sequences=4), input_ids=ids, attention_mask=mask)
        torch.manual_seed(3)
        cached = generate_copies(model, generation_config(**common), ids, mask, 4)
    assert torch.equal(plain, cached)


def test_completion_logprobs_read_the_prompt_once_and_equal_the_reward_scores(tiny):
    """log q(y|x) up to EOS, from the shared prompt cache, equals the per-token log-probabilities that
    `tirl.rewards.score` reads for the same pairs (rendered as training renders them)."""
    from tirl.data import to_trl
    from tirl.evaluation.likelihood import completion_logprobs
    from tirl.models import eos_token_ids
    from tirl.rewards import RewardModel, ScoreSettings, score

    model, tok = tiny
    model = model.double()
    prompt, ys = "Name two words: a, b, c.", ["a, b", "c, a", "b, c, a"]
    ours = completion_logprobs(model, tok, prompt, ys, eos_token_ids(tok, model))
    rows = to_trl([{"prompt": prompt, "completion": y} for y in ys], tok)
    eos = set(eos_token_ids(tok, model))
    scored = score(RewardModel(model, tok), [(r["prompt"], r["completion"]) for r in rows], ScoreSettings(progress=False))
    for got, s in zip(ours, scored, strict=True):
        end = next(i + 1 for i, t in enumerate(s.token_ids) if t in eos)
        assert got == pytest.approx(sum(s.logprobs[:end]), abs=1e-5)
