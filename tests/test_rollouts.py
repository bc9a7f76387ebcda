"""tirl.trainers.rollouts: policy samples laid out like a collated batch (prompts, masks after EOS, padding by
position), mixed into a batch, and kept in a checkpointed buffer."""

import json

import pytest
import torch

from reference import EOS
from tirl import losses as L
from tirl.trainers.rollouts import (
    Rollout,
    SampleBuffer,
    build_rollout,
    choose_prompt_rows,
    mix_batch,
    policy_rows_to_batch,
    prompts_from_batch,
)


def test_prompts_from_batch_takes_tokens_before_first_label():
    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, -100], [-100, -100, -100, 8, -100, -100]])
    assert prompts_from_batch(ids, mask, labels) == [[5, 6], [5, 6, 7]]


def test_build_rollout_masks_prompt_and_everything_after_first_eos():
    pad = 0
    prompts = [[5, 6, 7], [5, 6], [9]]
    completions = [[10, 11, EOS, pad, pad], [12, EOS, 13, EOS, 14], [15, 16, pad, 17, 18]]  # row 2: no EOS, a pad id
    r = build_rollout(prompts, completions, [EOS], pad)
    assert r.input_ids.tolist() == [[5, 6, 7, 10, 11, EOS], [5, 6, 12, EOS, 0, 0], [9, 15, 16, 0, 17, 18]]
    assert r.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0], [1] * 6]
    assert r.labels.tolist() == [[-100, -100, -100, 10, 11, EOS], [-100, -100, 12, EOS, -100, -100],
                                 [-100, 15, 16, 0, 17, 18]]
    assert r.ended.tolist() == [True, True, False]
    assert r.completion_lengths().tolist() == [3, 2, 5]
    # the truncated row drops its last TD term, the EOS rows keep all of theirs (conventions of tirl.losses)
    qv = L.qv_from_logits(torch.randn(3, 6, 20), r.labels)
    _, td_mask = L.next_values(qv, EOS)
    assert td_mask.sum(-1).tolist() == [3, 2, 4]


def test_mix_batch_appends_flagged_policy_rows_with_common_padding():
    expert = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.tensor([[1, 1, 1, 1]]),
              "labels": torch.tensor([[-100, 6, 7, 8]])}
    r = build_rollout([[5], [5, 6]], [[9, 10, 11, EOS], [EOS]], [EOS], 0)
    out = mix_batch(expert, r, pad_token_id=0)
    assert out["is_expert"].tolist() == [True, False, False]
    assert out["input_ids"].shape == (3, 5)
    assert out["input_ids"][0].tolist() == [5, 6, 7, 8, 0] and out["labels"][0].tolist() == [-100, 6, 7, 8, -100]
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 0]
    assert out["labels"][1].tolist() == [-100, 9, 10, 11, EOS]
    assert out["labels"][2].tolist() == [-100, -100, EOS, -100, -100]
    with pytest.raises(ValueError, match="padding_free"):
        mix_batch({k: v for k, v in expert.items() if k != "attention_mask"}, r, 0)


def test_choose_prompt_rows_draws_rows_with_a_completion():
    labels = torch.tensor([[-100, 1], [-100, -100], [-100, 2]])  # row 1 has nothing to learn: never chosen
    rows = choose_prompt_rows(labels, 5, torch.Generator().manual_seed(0))
    assert len(rows) == 5 and set(rows) == {0, 2}
    assert sorted(choose_prompt_rows(labels, 2, torch.Generator().manual_seed(0))) == [0, 2]


def test_sample_buffer_refresh_and_round_trip(tmp_path):
    buf = SampleBuffer(generate_every=3)
    r = build_rollout([[5, 6]], [[7, EOS]], [EOS], 0)
    assert buf.needs_refresh(0, step=0)
    entry = buf.put(0, r, step=0)
    entry.extras["old_logprob"] = torch.tensor([[0.0, -1.5, -0.25]])
    assert not buf.needs_refresh(0, 2) and buf.needs_refresh(0, 3) and buf.needs_refresh(1, 0)
    buf.save(tmp_path, rank=1)
    other = SampleBuffer(generate_every=3)
    assert not other.load(tmp_path, rank=0)
    assert other.load(tmp_path, rank=1)
    e = other.get(0)
    assert e.step == 0 and torch.equal(e.rollout.input_ids, r.input_ids) and torch.equal(e.rollout.ended, r.ended)
    assert torch.equal(e.extras["old_logprob"], entry.extras["old_logprob"])
    assert json.loads((tmp_path / "tirl_sample_buffer" / "rank-1.json").read_text())["entries"]["0"]["step"] == 0
    assert not list((tmp_path / "tirl_sample_buffer").glob(".*"))  # no temporary file left behind


def test_rollout_to_and_tensors_round_trip():
    r = build_rollout([[1]], [[2, 3]], [3], 0)
    again = Rollout(**{k: v for k, v in r.tensors().items()})
    assert torch.equal(again.labels, r.labels) and again.num_rows == 1


def test_policy_rows_go_last_in_the_mixed_batch_layout():
    batch = {"input_ids": torch.zeros(3, 6, dtype=torch.long)}  # 1 expert row, then 2 policy rows
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # the rollout was 3 tokens wide
    out = policy_rows_to_batch(values, batch)
    assert out.tolist() == [[0.0] * 5, [1.0, 2.0, 0, 0, 0], [3.0, 4.0, 0, 0, 0]]
