"""EMA (fp32 shadows, tracks, swap/restore, checkpoint round trip, DTensor params) and optimiser helpers."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from grn_lightning.training.ema import EMA
from grn_lightning.training.optim import (
    WarmupConstant,
    WarmupCosine,
    adamw,
    decay_param_groups,
    scaled_lr,
    warmup_constant_scheduler,
    warmup_scheduler,
)


def _net(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)).to(dtype)


def test_ema_update_is_exact_lerp_and_two_tracks_differ():
    net = _net()
    ema = EMA((0.9, 0.5))
    ema.update(net)  # first update: shadow initialised to the weights, lerp of equal values
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.shadows[0]["0.weight"], w0 + 0.1, rtol=0, atol=1e-6)
    torch.testing.assert_close(ema.shadows[1]["0.weight"], w0 + 0.5, rtol=0, atol=1e-6)
    assert ema.num_updates == 2
    ema.update(net, decay=0.0)  # override: copies the weights
    torch.testing.assert_close(ema.shadows[0]["0.weight"], net[0].weight.detach())


def test_module_tracks_and_fp32_shadows_are_the_same_average():
    """The generators' tracks (frozen copies given to `update(tracks=...)`) and the tokenizer's shadows run the same
    update: started from the same weights, both give w_ema = d·w_ema + (1 − d)·w after every step, by hand."""
    from grn_lightning.training.ema import frozen_copy

    net = _net()
    tracks = [frozen_copy(net), frozen_copy(net)]  # the generators' tracks start from the initial weights
    module_ema, shadow_ema = EMA((0.9, 0.5)), EMA((0.9, 0.5))
    shadow_ema.update(net)  # the shadows start from the weights at their first update: here the same weights
    w = net[0].weight.detach().clone()
    expected = [w.clone(), w.clone()]
    for step in range(3):
        with torch.no_grad():
            net[0].weight.add_(1.0 + step)
        module_ema.update(net, tracks=tracks)
        shadow_ema.update(net)
        for i, d in enumerate((0.9, 0.5)):
            expected[i] = d * expected[i] + (1 - d) * net[0].weight.detach()
            torch.testing.assert_close(tracks[i][0].weight, expected[i], rtol=0, atol=1e-6)
            torch.testing.assert_close(shadow_ema.shadows[i]["0.weight"], expected[i], rtol=0, atol=1e-6)
    assert not any(p.requires_grad for t in tracks for p in t.parameters()) and not tracks[0].training
    with pytest.raises(ValueError, match="tracks"):
        module_ema.update(net, tracks=tracks[:1])


def test_ema_shadow_is_fp32_for_bf16_model_and_keeps_small_increments():
    net = _net(torch.bfloat16)
    ema = EMA((0.9999,))
    ema.update(net)
    assert all(t.dtype == torch.float32 for t in ema.shadows[0].values())
    before = ema.shadows[0]["0.weight"].clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)
    # an increment of 1e-4 survives in fp32 (it would be lost in bf16 at this magnitude)
    assert torch.all((ema.shadows[0]["0.weight"] - before - 1e-4).abs() < 2e-6)


def test_swap_uses_ema_weights_and_restores_raw_weights():
    net = _net()
    ema = EMA((0.5,))
    ema.update(net)
    raw0 = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    ema.update(net)  # shadow = 2 * raw0
    raw1 = {n: p.detach().clone() for n, p in net.named_parameters()}
    x = torch.randn(5, 4)
    with ema.swap(net):
        for n, p in net.named_parameters():
            torch.testing.assert_close(p, 2 * raw0[n])
        y_ema = net(x)
    for n, p in net.named_parameters():
        assert torch.equal(p, raw1[n])
    assert not torch.allclose(y_ema, net(x))


def test_state_dict_round_trip_continues_identically():
    net_a, net_b = _net(), _net()
    ema_a = EMA((0.9, 0.99))
    ema_a.update(net_a)
    buf = io.BytesIO()
    torch.save(ema_a.state_dict(), buf)
    buf.seek(0)
    ema_b = EMA((0.9, 0.99))
    ema_b.load_state_dict(torch.load(buf, weights_only=True))
    for net in (net_a, net_b):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.25)
    ema_a.update(net_a)
    ema_b.update(net_b)
    assert ema_b.num_updates == 2
    for sa, sb in zip(ema_a.shadows, ema_b.shadows):
        for n in sa:
            assert torch.equal(sa[n], sb[n])
    with pytest.raises(ValueError, match="tracks"):
        EMA((0.9,)).load_state_dict(ema_a.state_dict())


def test_ema_rejects_bad_decay_and_mismatched_model():
    with pytest.raises(ValueError, match="decay"):
        EMA((1.0,))
    ema = EMA((0.9,))
    ema.update(_net())
    with pytest.raises(ValueError, match="does not match"):
        ema.update(nn.Linear(4, 3))


def test_ema_on_dtensor_parameters_matches_plain_tensors(monkeypatch, free_port):
    """FSDP2 parameters are DTensors; the foreach update must give the same numbers as on plain tensors."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    # set for this test only: a leaked MASTER_PORT would reach every later test of the session
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port))
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        plain, sharded = _net(), _net()
        for mod in sharded.modules():
            for name, p in list(mod.named_parameters(recurse=False)):
                setattr(mod, name, nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])))
        ema_p, ema_s = EMA((0.9,)), EMA((0.9,))
        for step in range(3):
            for net, ema in ((plain, ema_p), (sharded, ema_s)):
                ema.update(net)
                with torch.no_grad():
                    for p in net.parameters():
                        p.mul_(1.5).add_(0.1 * step)
        assert isinstance(ema_s.shadows[0]["0.weight"], DTensor)
        for n, t in ema_p.shadows[0].items():
            torch.testing.assert_close(ema_s.shadows[0][n].full_tensor(), t)
        with ema_s.swap(sharded):
            torch.testing.assert_close(sharded[0].weight.full_tensor(), ema_p.shadows[0]["0.weight"])
        # a checkpoint saved unsharded loads back onto DTensor parameters
        full = {k: [{n: (t.full_tensor() if isinstance(t, DTensor) else t) for n, t in s.items()} for s in v]
                if k == "shadows" else v for k, v in ema_s.state_dict().items()}
        ema_r = EMA((0.9,))
        ema_r.load_state_dict(full)
        ema_r.copy_to(sharded)
        torch.testing.assert_close(sharded[0].weight.full_tensor(), ema_p.shadows[0]["0.weight"])
    finally:
        if created:
            dist.destroy_process_group()


def test_decay_param_groups_split_by_ndim_and_skip_frozen():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    net[2].bias.requires_grad_(False)
    groups = decay_param_groups(net, 0.01)
    assert groups[0]["names"] == ["0.weight", "2.weight"] and groups[0]["weight_decay"] == 0.01
    assert groups[1]["names"] == ["0.bias", "1.weight", "1.bias"] and groups[1]["weight_decay"] == 0.0
    opt = adamw(net)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == 1e-4
    assert sum(len(g["params"]) for g in opt.param_groups) == 5


def test_warmup_constant_schedule_and_resume():
    f = WarmupConstant(4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert WarmupConstant(0)(0) == 1.0
    p = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = warmup_constant_scheduler(opt, 4)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(2):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4])
    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(2, 2))], lr=1e-3)
    sched2 = warmup_constant_scheduler(opt2, 4)
    sched2.load_state_dict(sched.state_dict())
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_warmup_cosine_schedule_by_hand():
    # warm-up 4 steps (1/4 .. 1), then half a cosine over the remaining 100 steps: cos(pi·done) at done 0, 1/3, 1/2,
    # 2/3, 1 gives multipliers 1, 3/4, 1/2, 1/4, 0; after the end it stays 0.
    f = WarmupCosine(4, 104)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [f(4 + d) for d in (0, 100 / 3, 50, 200 / 3, 100, 150)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = warmup_scheduler(opt, 0, "cosine", 2)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(2):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-3, 5e-4, 0.0])
    assert isinstance(warmup_scheduler(opt, 3, "none", -1).lr_lambdas[0], WarmupConstant)


def test_cosine_decay_needs_a_run_length():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1e-3)
    with pytest.raises(ValueError, match="trainer.max_steps"):
        warmup_scheduler(opt, 0, "cosine", -1)  # Lightning's max_steps default: no length to anneal over
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        warmup_scheduler(opt, 10, "cosine", 10)
    with pytest.raises(ValueError, match="allowed values"):
        warmup_scheduler(opt, 0, "linear", 100)


def test_scaled_lr():
    assert scaled_lr(5e-5, 1024) == pytest.approx(2e-4)
    with pytest.raises(ValueError):
        scaled_lr(1e-4, 0)
