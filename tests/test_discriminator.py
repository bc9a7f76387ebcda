"""tirl.trainers.discriminator and reference_model: the frozen copy of the initial policy, truncated trunks, and the
discriminator that starts at D = ½ and trains only its head."""

import pytest
import torch

from tirl.trainers.discriminator import TokenDiscriminator, truncated_trunk
from tirl.trainers.reference_model import frozen_copy


def test_frozen_copy_and_truncated_trunk(tiny):
    from tirl.qv.head import add_qv_head

    model, tok = tiny
    add_qv_head(model, chunk_size=16)
    ref = frozen_copy(model)
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # training the policy must not move the copy
    assert not torch.equal(next(model.parameters()), next(ref.parameters()))
    ids = torch.tensor([tok("1+1=2")["input_ids"]])
    assert ref(input_ids=ids).logits.shape[-1] == len(tok)  # its own forward, not the policy's patched one
    short = truncated_trunk(ref.base_model, 1)
    assert len(short.layers) == 1 and len(ref.base_model.layers) == 2
    assert short.layers[0] is ref.base_model.layers[0]  # shared, not copied
    h_short = short(input_ids=ids).last_hidden_state
    h_full = ref.base_model(input_ids=ids).last_hidden_state
    assert h_short.shape == h_full.shape and not torch.allclose(h_short, h_full)
    with pytest.raises(ValueError, match="gail_disc_num_layers must be between 1 and 2 for this model, got 3"):
        truncated_trunk(ref.base_model, 3)


def test_discriminator_starts_at_one_half_and_trains_only_its_head(tiny):
    model, tok = tiny
    disc = TokenDiscriminator(frozen_copy(model).base_model, hidden_size=64, head_hidden=16)
    ids = torch.tensor([tok("12+30=42")["input_ids"]])
    x = disc(ids)
    assert x.shape == (1, ids.shape[1] - 1) and torch.count_nonzero(x) == 0  # D = ½, r = 0
    assert {n.split(".")[0] for n in disc.trainable_state_dict()} == {"head"}
    disc.train()
    assert disc.head.training and not disc.trunk.training  # a frozen (possibly shared) trunk never leaves eval mode
