"""tirl.losses.single_pass_head: the one-pass IQ head against its oracles (the full-logits loss and the two-pass chunked head),
values and gradients in float64, for every case the trainers use."""

import functools

import pytest
import torch
import torch.nn.functional as F

import reference
from reference import PartitionedHead, compile_devices, objective
from tirl import losses as L
from tirl.losses import single_pass_head as SP
from tirl.losses import single_pass_iq_loss

# rows covering every terminal case, multi-segment rows included (reference.make_batch)
make_batch = functools.partial(reference.make_batch, B=4, T=14, two_segments=True)


def form_input(labels, form, dtype=torch.float64, seed=1):
    """The value form's input for a batch: v_ψ (head, requires grad), LSE_θ0 (reference) or None (logits)."""
    g = torch.Generator().manual_seed(seed)
    shape = (labels.shape[0], labels.shape[1] - 1)
    if form == "head":
        return torch.randn(shape, dtype=dtype, generator=g).requires_grad_()
    if form == "reference":
        return 3 + torch.randn(shape, dtype=dtype, generator=g)
    return None


def oracle(h, W, b, labels, o, value_input=None, counts=L.NO_COUNTS):
    """The full-logits loss, `iq_loss(h Wᵀ + b)`, in the objective's value form."""
    return L.iq_loss(h @ W.T + (0 if b is None else b), labels, o, counts, value_input)


def two_pass(h, W, b, labels, chunk_size, o, value_input=None):
    """The two-pass chunked head (recomputes the logits in backward): `chunked_iq_loss`."""
    return L.chunked_iq_loss(h, W, labels, o, value_input=value_input, chunk_size=chunk_size, bias=b)


def grads(loss, params):
    """Gradients of `loss` w.r.t. the given tensors (None skipped); unused ones (v_ψ when λ = 0) as zeros."""
    params = [p for p in params if p is not None]
    out = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(out, params, strict=True)]


def assert_close(a, b, tol, what=""):
    for x, y in zip(a, b, strict=True):
        assert (x - y).abs().max().item() < tol, what


STAT_KEYS = ("loss", "mle_loss", "td_loss", "mean_reward", "mean_value", "num_tokens")

# (γ, stop_grad_next, bias, entropy_coef): the loss settings, crossed below with the forms, λ, reductions and chunks
SETTINGS = [
    (0.9, False, False, 0.0),
    (1.0, False, True, 0.0),
    (0.9, True, False, 0.0),
    (0.5, False, False, 0.2),
    (1.0, True, True, 0.1),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "g{}-sg{}-bias{}-ent{}".format(*s))
@pytest.mark.parametrize("form", ["logits", "reference", "head"])
@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_matches_full_logits_oracle_float64(setting, form, lam, reduction, monkeypatch):
    """Values and gradients (hidden, weight, bias, v_ψ) equal the full-logits loss, for chunks of 1, 3, 7 and 1024
    rows, and eager blocks of the whole chunk or 2 rows. Small chunks and blocks end inside completion segments, so the
    residual carried to the next block, the held last row of a block and the one-hot correction of chunk-last rows
    are exercised (with 1-row chunks, at every row)."""
    gamma, stop_grad_next, bias, entropy_coef = setting
    h, W, b, labels = make_batch(bias=bias)
    value_input = form_input(labels, form)
    o = objective(iq_lambda=lam, iq_gamma=gamma, iq_reduction=reduction, iq_stop_grad_next=stop_grad_next,
                  entropy_coef=entropy_coef, iq_value=form)
    ref = oracle(h, W, b, labels, o, value_input)
    params = (h, W, b, value_input if form == "head" else None)
    g_ref = grads(ref.loss, params)
    for chunk, block_rows in ((1, None), (3, None), (7, None), (1024, None), (7, 2), (1024, 2), (1024, 5)):
        if block_rows is not None:  # float64: one scratch buffer of block_rows + 1 (look-ahead) rows
            monkeypatch.setattr(SP, "SCRATCH_ELEMENTS", (block_rows + 1) * W.shape[0])
        out = single_pass_iq_loss(h, W, labels, o, value_input=value_input, chunk_size=chunk, bias=b)
        for key in STAT_KEYS:
            assert abs(getattr(ref, key).item() - getattr(out, key).item()) < 1e-10, (chunk, key)
        assert set(out.sums) == set(ref.sums)
        for key in ref.sums:
            assert abs(ref.sums[key].item() - out.sums[key].item()) < 1e-9, (chunk, key)
        assert_close(g_ref, grads(out.loss, params), 1e-10, f"gradients, chunk {chunk}")


@pytest.mark.parametrize("form", ["logits", "reference", "head"])
@pytest.mark.parametrize("chunk", [2, 5, 1024])
def test_matches_the_two_pass_head_and_its_statistics(form, chunk):
    """Against `chunked_iq_loss`'s head (qv_from_hidden): loss, gradients, and the q, v, entropy, top-1 the trainer
    logs (`out.qv` plays the role of the two-pass QV in `_record_metrics`)."""
    h, W, b, labels = make_batch(bias=True, seed=3)
    value_input = form_input(labels, form)
    o = objective(iq_lambda=0.2, iq_gamma=0.95, iq_value=form)
    ref = two_pass(h, W, b, labels, chunk, o, value_input)
    out = single_pass_iq_loss(h, W, labels, o, value_input=value_input, chunk_size=chunk, bias=b)
    assert abs(ref.loss.item() - out.loss.item()) < 1e-10
    params = (h, W, b, value_input if form == "head" else None)
    assert_close(grads(ref.loss, params), grads(out.loss, params), 1e-10)
    sp, qv = out.qv, ref.qv
    assert torch.equal(sp.mask, qv.mask) and torch.equal(sp.actions, qv.actions)
    for name in ("logit", "lse", "entropy", "v", "q"):
        assert torch.allclose(getattr(sp, name), getattr(qv, name).detach(), atol=1e-12), name
    assert torch.equal(sp.is_top1, qv.is_top1)
    assert not any(t.requires_grad for t in (sp.logit, sp.lse, sp.entropy, sp.v))


def test_lambda_zero_is_cross_entropy():
    """λ = 0 in the logits form is TRL's SFT loss: F.cross_entropy over the completion tokens, values and gradients."""
    h, W, _, labels = make_batch()
    out = single_pass_iq_loss(h, W, labels, objective(iq_lambda=0.0), chunk_size=5)
    logits = (h @ W.T)[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, W.shape[0]), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert abs(out.loss.item() - ce.item()) < 1e-12
    assert_close(grads(out.loss, (h, W)), grads(ce, (h, W)), 1e-12)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
@pytest.mark.parametrize("form", ["logits", "head"])
def test_gradient_accumulation_with_global_counts(reduction, form):
    """Two micro-batches given the whole batch's num_items_in_batch / num_sequences_in_batch sum to the one-batch
    loss and gradients (Trainer's contract when it passes num_items_in_batch)."""
    h, W, _, labels = make_batch(seed=4)
    labels[1, 4:] = -100  # a row without a completion token: no sequence of the mean
    value = form_input(labels, form)
    o = objective(iq_lambda=0.2, iq_gamma=0.95, iq_reduction=reduction, iq_value=form)
    full = single_pass_iq_loss(h, W, labels, o, value_input=value, chunk_size=3)
    actions = labels[:, 1:] != -100
    counts = L.Counts(tokens=int(actions.sum()), sequences=int(actions.any(-1).sum()))
    parts = [single_pass_iq_loss(h[s], W, labels[s], o, counts, None if value is None else value[s], chunk_size=3)
             for s in (slice(0, 1), slice(1, 4))]
    assert abs(full.loss.item() - sum(p.loss for p in parts).item()) < 1e-12
    ref = oracle(h, W, None, labels, o, value)
    assert abs(full.loss.item() - ref.loss.item()) < 1e-12
    params = (h, W, value)
    g_full = grads(full.loss, params)
    g_parts = grads(sum(p.loss for p in parts), params)
    assert_close(g_full, g_parts, 1e-12)
    # token sums (what trainers gather across processes) add up too
    for key in full.sums:
        assert abs(full.sums[key].item() - sum(p.sums[key] for p in parts).item()) < 1e-10, key


def test_frozen_head_computes_no_weight_gradient():
    """A frozen LM head (LoRA): no grad_W is formed or returned; hidden (and bias) gradients are unchanged."""
    h, W, b, labels = make_batch(bias=True)
    W.requires_grad_(False)
    o = objective(iq_lambda=0.3)
    out = single_pass_iq_loss(h, W, labels, o, chunk_size=4, bias=b)
    assert out.loss.grad_fn.present == (True, False, True, False)  # the custom Function's context: what it stored
    ref = oracle(h, W, b, labels, o)
    assert_close(grads(ref.loss, (h, b)), grads(out.loss, (h, b)), 1e-10)
    out2 = single_pass_iq_loss(h, W, labels, o, chunk_size=4, bias=b)
    out2.loss.backward()
    assert W.grad is None and h.grad is not None


def test_lambda_zero_gives_the_value_head_no_gradient():
    """λ = 0 takes the TD term, the only user of v_ψ, out of the loss: v_ψ gets None, as from the two-pass head, not a
    zero gradient (an optimizer skips the one, but counts a step for the other)."""
    h, W, _, labels = make_batch()
    value = form_input(labels, "head")
    o = objective(iq_lambda=0.0, iq_value="head")
    out = single_pass_iq_loss(h, W, labels, o, value_input=value, chunk_size=5)
    ref = two_pass(h, W, None, labels, 5, o, value)
    g_out = torch.autograd.grad(out.loss, (h, W, value), allow_unused=True)
    g_ref = torch.autograd.grad(ref.loss, (h, W, value), allow_unused=True)
    assert g_out[2] is None and g_ref[2] is None
    assert_close(g_ref[:2], g_out[:2], 1e-12)


def test_grad_output_scales_the_stored_gradients():
    """backward scales the gradients formed in forward by grad_output (loss scaling, `loss * num_processes`,
    Trainer's division by the accumulation steps), and contributions from several uses of the loss add up."""
    h, W, _, labels = make_batch()
    o = objective(iq_lambda=0.3, iq_gamma=0.9)
    ref = grads(oracle(h, W, None, labels, o).loss, (h, W))
    out = single_pass_iq_loss(h, W, labels, o, chunk_size=5)
    assert_close([3.5 * g for g in ref], grads(3.5 * out.loss, (h, W)), 1e-10)
    out = single_pass_iq_loss(h, W, labels, o, chunk_size=5)
    assert_close([-0.5 * g for g in ref], grads(out.loss - 1.5 * out.loss, (h, W)), 1e-10)


def test_second_backward_is_exact_or_refused():
    """retain_graph with grad_output = 1 gives the gradients again (they accumulate exactly); without retain_graph a
    second backward is autograd's usual error; after an in-place scaling (grad_output ≠ 1) it is refused, never
    silently twice-scaled."""
    h, W, _, labels = make_batch()
    o = objective(iq_lambda=0.3, iq_gamma=0.9)
    ref = grads(oracle(h, W, None, labels, o).loss, (h, W))
    out = single_pass_iq_loss(h, W, labels, o, chunk_size=5)
    out.loss.backward(retain_graph=True)
    out.loss.backward()
    assert_close([2 * g for g in ref], (h.grad, W.grad), 1e-10)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.loss.backward()
    out = single_pass_iq_loss(h, W, labels, o, chunk_size=5)
    (2 * out.loss).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (2 * out.loss).backward()


def test_no_grad_computes_statistics_only():
    """Under torch.no_grad (evaluation) forward forms no gradient: the loss is a plain value, statistics unchanged."""
    h, W, b, labels = make_batch(bias=True)
    o = objective(iq_lambda=0.3, iq_gamma=0.9)
    with torch.no_grad():
        out = single_pass_iq_loss(h, W, labels, o, chunk_size=4, bias=b)
    ref = single_pass_iq_loss(h, W, labels, o, chunk_size=4, bias=b)
    assert out.loss.grad_fn is None and not out.loss.requires_grad
    for key in STAT_KEYS:
        assert getattr(out, key).item() == getattr(ref, key).item(), key


def test_prompt_and_padding_positions_contribute_nothing():
    h, W, _, labels = make_batch()
    _, mask = L.shift_labels(labels)
    out = single_pass_iq_loss(h, W, labels, objective(iq_lambda=0.5, iq_gamma=0.9), chunk_size=3)
    dead = torch.zeros(labels.shape, dtype=torch.bool)
    dead[:, :-1] = ~mask
    dead[:, -1] = True
    grad = torch.autograd.grad(out.loss, h)[0]
    assert grad[dead].abs().max().item() == 0.0 and grad[~dead].abs().sum() > 0


def test_all_masked_micro_batch_gives_differentiable_zero():
    h, W, _, labels = make_batch()
    labels[:] = -100
    out = single_pass_iq_loss(h, W, labels, objective(iq_lambda=0.1))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert W.grad is not None and torch.all(W.grad == 0)
    assert out.mean_reward.item() == 0.0 and out.num_tokens.item() == 0


@pytest.mark.parametrize("block_rows", [None, 5])
def test_bf16_autocast_is_close_to_float32_and_to_the_two_pass_head(block_rows, monkeypatch):
    """Under bf16 autocast (as in training) the matmuls run in bf16 and the softmax maths in float32; the result stays
    close to the float32 loss and to the two-pass head under the same autocast."""
    h, W, _, labels = make_batch(B=4, T=64, D=32, V=300, dtype=torch.float32)
    if block_rows is not None:
        monkeypatch.setattr(SP, "SCRATCH_ELEMENTS", 2 * (block_rows + 1) * W.shape[0])  # two float32 buffers
    o = objective(iq_lambda=0.1)
    ref = oracle(h, W, None, labels, o)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = single_pass_iq_loss(h, W, labels, o, chunk_size=48)
        two = two_pass(h, W, None, labels, 48, o)
    assert out.loss.dtype == torch.float32
    assert abs(out.loss.item() - ref.loss.item()) / ref.loss.item() < 2e-2
    assert abs(out.loss.item() - two.loss.item()) / two.loss.item() < 1e-3
    g_out, g_two, g_ref = grads(out.loss, (h, W)), grads(two.loss, (h, W)), grads(ref.loss, (h, W))
    for a, b, c in zip(g_out, g_two, g_ref, strict=True):
        assert a.dtype == torch.float32
        assert F.cosine_similarity(a.flatten(), c.flatten(), dim=0) > 0.99
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


def test_invalid_arguments():
    h, W, _, labels = make_batch()
    value = form_input(labels, "head")
    with pytest.raises(ValueError, match="iq_chunk_size must be positive"):
        single_pass_iq_loss(h, W, labels, chunk_size=0)
    with pytest.raises(ValueError, match="iq_value='logits' takes no input"):
        single_pass_iq_loss(h, W, labels, value_input=value)
    with pytest.raises(ValueError, match="iq_value='head' needs its value_head"):
        single_pass_iq_loss(h, W, labels, objective(iq_value="head"))
    with pytest.raises(ValueError, match="form's input has shape"):
        single_pass_iq_loss(h, W, labels, objective(iq_value="head"), value_input=value[:, 1:])
    with pytest.raises(ValueError, match="computes the nll token loss"):
        single_pass_iq_loss(h, W, labels, objective(loss_type="dft"))
    # a value form whose gradient the head has not derived (another S) trains two-pass, never silently wrong
    scaled = L.ValueForm("scaled-reference", A=0.0, C=1.0, input="reference_lse", S=-2.0)
    with pytest.raises(ValueError, match="S = -2.*iq_head='two_pass'"):
        single_pass_iq_loss(h, W, labels, objective(iq_value=scaled), value_input=value)


@pytest.mark.slow
@pytest.mark.parametrize("device", compile_devices())
@pytest.mark.parametrize("autocast", [False, True])
def test_compiled_chunk_maths_matches_the_eager_one(device, autocast):
    """The torch.compile'd per-chunk maths (`compiled=True`: the trainers' default on CUDA, `tirl.qv.compile_chunks`)
    gives the eager results."""
    h, W, _, labels = make_batch(B=4, T=40, D=32, V=300, dtype=torch.float32)
    h, W, labels = h.detach().to(device), W.detach().to(device), labels.to(device)
    value = form_input(labels, "head", dtype=torch.float32).detach().to(device)
    results = {}
    for mode in ("0", "1"):
        compiled = mode == "1"
        hh, WW, vv = h.clone().requires_grad_(), W.clone().requires_grad_(), value.clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            logits_form = single_pass_iq_loss(hh, WW, labels, objective(iq_lambda=0.1, entropy_coef=0.05),
                                              chunk_size=48, compiled=compiled)  # 3 full chunks + 1 short
            head_form = single_pass_iq_loss(hh, WW, labels, objective(iq_lambda=0.1, iq_value="head"),
                                            value_input=vv, chunk_size=48, compiled=compiled)
        loss = logits_form.loss + head_form.loss
        results[mode] = (loss.detach(), *torch.autograd.grad(loss, [hh, WW, vv]), logits_form.qv.entropy,
                         logits_form.qv.is_top1)
    tol = 1e-2 if autocast else 1e-5
    eager, fused = results["0"], results["1"]
    for a, b in zip(eager[:5], fused[:5], strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()
    assert (eager[5] == fused[5]).float().mean() > 0.97  # top-1 ties may break differently in bf16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("form", ["logits", "reference", "head"])
def test_cuda_matches_the_float64_oracle(form):
    """On CUDA (compiled chunk maths, as the trainers run it there) in float32 and under bf16 autocast, against the
    float64 CPU oracle."""
    h, W, b, labels = make_batch(B=4, T=64, D=32, V=300, dtype=torch.float64)
    value = form_input(labels, form)
    o = objective(iq_lambda=0.2, iq_gamma=0.95, iq_value=form)
    ref = oracle(h, W, None, labels, o, value)
    trained = value if form == "head" else None
    g_ref = grads(ref.loss, (h, W, trained))
    for autocast, tol in ((False, 1e-4), (True, 3e-2)):
        hc, Wc = h.detach().float().cuda().requires_grad_(), W.detach().float().cuda().requires_grad_()
        vc = None if value is None else value.detach().float().cuda().requires_grad_(form == "head")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = single_pass_iq_loss(hc, Wc, labels.cuda(), o, value_input=vc, chunk_size=48, compiled=True)
        assert abs(out.loss.item() - ref.loss.item()) / abs(ref.loss.item()) < tol
        g = grads(out.loss, (hc, Wc, vc if form == "head" else None))
        for a, c in zip(g, g_ref, strict=True):
            assert F.cosine_similarity(a.double().cpu().flatten(), c.flatten(), dim=0) > 1 - tol


def test_partitioned_head_is_gathered_once_around_the_node():
    """A ZeRO-3-like head (its data empty outside `gather`, as DeepSpeed partitions it): `gather` is entered once, the
    loss and gradients are the whole head's, and the gradient has the whole weight's shape."""
    h, W, _, labels = make_batch()
    o = objective(iq_lambda=0.3, iq_gamma=0.9)
    ref = single_pass_iq_loss(h, W, labels, o, chunk_size=5)
    g_ref = grads(ref.loss, (h, W))
    head = PartitionedHead(W)
    out = single_pass_iq_loss(h, head.param, labels, o, chunk_size=5, gather=head.gather)
    assert head.entered == 1 and head.param.shape == (0,)
    assert abs(out.loss.item() - ref.loss.item()) < 1e-12
    g_h, g_w = torch.autograd.grad(out.loss, (h, head.param))
    assert g_w.shape == W.shape
    assert_close(g_ref, (g_h, g_w), 1e-12)
