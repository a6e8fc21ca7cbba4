"""Training-mode behaviour: gradients reach every parameter, the decoder fold (recomputed at every
call) gives the reference order's outputs and gradients, torch.compile matches eager."""
import copy

import pytest
import torch
import torch.nn.functional as F

from models import build_fhd


def train_step(model, x, label, seed):
    torch.manual_seed(seed)            # same drop-path / Dropout2d draws for both paths
    model.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits, label).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


def inputs(seed, batch=2, size=(64, 64)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 6, *size, generator=g), torch.randint(0, 2, (batch, *size), generator=g)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_fhd('mit_b0').train()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for seed in range(3):                 # several inputs so that every TSM path is active
        _, grads = train_step(model, *inputs(seed), seed)
        for n, g in grads.items():
            assert g is not None, n
            total[n] += g.abs()
    # the level projections' biases add a per-channel constant before the train-mode fuse BN,
    # which removes it again: their gradient is zero in exact arithmetic (in the original too)
    cancelled = {f'decoder.level_proj.{i}.bias' for i in range(4)}
    # (the TSM biases get tiny but real gradients: the spatial softmax ignores a shift, so only
    # positions cut off by the ReLU contribute)
    dead = [n for n, t in total.items() if n not in cancelled and not t.any()]
    assert not dead, dead


def test_train_mode_fold_equals_reference():
    torch.manual_seed(1)
    model = build_fhd('mit_b0').train()
    x, label = inputs(5, batch=2, size=(64, 96))
    ref_model, fast_model = copy.deepcopy(model), copy.deepcopy(model)
    ref_model.decoder.fold = False
    ref_logits, ref_grads = train_step(ref_model, x, label, seed=7)
    fast_logits, fast_grads = train_step(fast_model, x, label, seed=7)
    scale = ref_logits.abs().max()
    assert (fast_logits - ref_logits).abs().max() / scale < 1e-5
    # relative per parameter, with a floor for gradients that are zero in exact arithmetic
    # (level_proj biases before the train-mode BN; mask biases under the softmax's shift
    # invariance), where only float32 round-off is left
    floor = 1e-6 * max(g.abs().max() for g in ref_grads.values())
    for n, g in ref_grads.items():
        err = (fast_grads[n] - g).abs().max().item()
        assert err <= 1e-4 * g.abs().max().item() + floor, (n, err)
    # the parameters stay the original ones, and BN running statistics agree
    for (n, b1), b2 in zip(ref_model.named_buffers(), fast_model.buffers()):
        assert torch.allclose(b1, b2, rtol=1e-5, atol=1e-6), n


@pytest.mark.slow
def test_torch_compile_training_step_matches_eager():
    """torch.compile of the training model: forward + backward + one AdamW step == eager within
    1e-5 (logits, loss, updated weights); gradients no farther from eager than eager float32
    is from float64 (the first layers' gradients carry ~1e-3 of float32 round-off either way)."""
    from utils.schedule import build_optimizer
    LR = 1e-3
    torch.manual_seed(2)
    eager = build_fhd('mit_b0', drop_path_rate=0.0).train()
    eager.decoder.dropout.p = 0.0            # deterministic step
    exact = copy.deepcopy(eager).double()
    compiled = copy.deepcopy(eager)
    x, label = inputs(3, batch=2)
    _, g64 = train_step(exact, x.double(), label, seed=0)
    results = []
    for model, wrap in ((eager, lambda m: m), (compiled, torch.compile)):
        opt = build_optimizer(list(model.parameters()), lr=LR)
        logits = wrap(model)(x)
        loss = F.cross_entropy(logits, label)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        results.append((logits.detach(), loss.item(), grads,
                        {n: p.detach().clone() for n, p in model.named_parameters()}))
    (le, loss_e, ge, pe), (lc, loss_c, gc, pc) = results
    assert (lc - le).abs().max() / le.abs().max() < 1e-5
    assert abs(loss_c - loss_e) <= 1e-5 * abs(loss_e)
    floor = 1e-6 * max(g.abs().max() for g in ge.values())
    for n in ge:
        noise = (ge[n].double() - g64[n]).abs().max()
        assert (gc[n] - ge[n]).abs().max() <= 3 * noise + floor, n
        # AdamW's first step moves each weight by lr * g / (|g| + eps) ~ lr * sign(g): equal (to
        # 1 % of the step) wherever the gradient's sign is beyond round-off; elsewhere either
        # sign is as right as the other
        sure = ge[n].abs() > 3 * noise + floor
        diff = (pc[n] - pe[n])[sure].abs()
        assert diff.numel() == 0 or diff.max() <= 1e-5 * pe[n].abs().max() + 1e-2 * LR, n
