"""C2IModule on real photos: learning (GRN_ind and GRN_bit), labels, checkpoints, sampling, predict, configs."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from grn_lightning.generator.c2i.model import GRNC2ITransformer
from grn_lightning.generator.c2i.module import C2IModule
from grn_lightning.generator.options import Corruption, EMATracks, Optimization, Parallelism
from grn_lightning.generator.sampling.sampler import RefinementSampler
from grn_lightning.tokenizer.vae import HBQTokenizer

RES, GRID, CHANNELS, CLASSES = 64, 4, 16, 4


def real_images() -> torch.Tensor:
    """4 real photos (scikit-image), centre-cropped and resized to 64², as [4, 3, 1, 64, 64] in [-1, 1]."""
    import skimage.data

    images = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        x = torch.from_numpy(getattr(skimage.data, name)()[..., :3].copy()).permute(2, 0, 1).float()
        side = min(x.shape[1:])
        top, left = (x.shape[1] - side) // 2, (x.shape[2] - side) // 2
        x = x[:, top : top + side, left : left + side]
        images.append(F.interpolate(x[None], size=(RES, RES), mode="area")[0])
    return (torch.stack(images) / 127.5 - 1.0)[:, :, None]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer() -> HBQTokenizer:
    torch.manual_seed(0)
    return HBQTokenizer(latent_channels=CHANNELS, num_rounds=4, preset="tiny").eval()


@pytest.fixture(scope="module")
def photo_batch(tokenizer) -> dict:
    pixels = real_images()
    return {"pixels": pixels, "tokens": tokenizer.tokenize(pixels), "cls": torch.arange(CLASSES),
            "valid": torch.ones(CLASSES, dtype=torch.bool)}  # fmt: skip


def tiny_module(tokenizer=None, transformer: dict | None = None, **kwargs) -> C2IModule:
    """A tiny C2I module; `transformer` overrides GRNC2ITransformer arguments, `kwargs` C2IModule ones."""
    net = dict(size="tiny", variant="ind", channels=CHANNELS, rounds=4, num_classes=CLASSES, grid_size=GRID,
               in_context_tokens=4)  # fmt: skip
    args = dict(tokenizer=tokenizer, optimization=Optimization(lr=3e-3), ema=EMATracks(decay=0.9))
    args.update(kwargs)
    return C2IModule(GRNC2ITransformer(**{**net, **(transformer or {})}), **args)


class _Repeat(torch.utils.data.IterableDataset):
    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


class _LossLog(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(module: C2IModule, batch: dict, steps: int, root: str) -> tuple[list[float], L.Trainer]:
    log = _LossLog()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[log],
                        default_root_dir=root, log_every_n_steps=10)  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(_Repeat(batch), batch_size=None))
    return log.losses, trainer


@pytest.mark.parametrize("variant", ["ind", "bit"])
def test_overfits_real_image_tokens_and_samples_decode(tmp_path, tokenizer, photo_batch, variant):
    torch.manual_seed(0)
    module = tiny_module(tokenizer, {"variant": variant}, ema=EMATracks(decay=0.9, sample_weights="raw"))
    batch = {"tokens": photo_batch["tokens"], "cls": photo_batch["cls"], "valid": photo_batch["valid"]}
    losses, trainer = _fit(module, batch, 250, str(tmp_path))
    uniform = math.log(module.model.classes)  # ln K: the loss of a uniform guess (and of the zero-init head)
    assert abs(losses[0] - uniform) < 1e-3
    final = sum(losses[-10:]) / 10
    assert final < 0.25 * uniform, (variant, losses[0], final)
    # Per-ratio-bin accuracy is logged for every kept-fraction bin that was drawn.
    logged = trainer.logged_metrics
    bins = sorted(k for k in logged if k.startswith("train/acc_p"))
    assert bins and all(0.0 <= float(logged[k]) <= 1.0 for k in bins)
    # Sampling (no CFG, τ = 0.5) regenerates each class's training image: labels match the memorised tokens
    # (chance level: 1/16 for ind, 1/2 for bit).
    module.eval()
    result = module.sample_labels(batch["cls"], torch.Generator().manual_seed(0), steps=16, cfg_scale=1.0,
                                  temperature=0.5)  # fmt: skip
    target = module.model_labels(batch["tokens"])
    accuracy = (result.labels == target).float().mean().item()
    assert accuracy > {"ind": 0.8, "bit": 0.9}[variant], accuracy
    images = module.decode(result.labels)
    assert images.shape == (CLASSES, 3, RES, RES) and images.min() >= -1 and images.max() <= 1
    # Each sample decodes to a picture nearest to its own class's memorised image (decoded the same way).
    reference = module.decode(target)
    distances = torch.cdist(images.flatten(1), reference.flatten(1))
    assert torch.equal(distances.argmin(dim=1), batch["cls"]), distances


def test_media_batches_use_the_frozen_tokenizer(tokenizer, photo_batch):
    module = tiny_module(tokenizer)
    from_pixels = module.index_labels({"pixels": photo_batch["pixels"]})
    assert torch.equal(from_pixels, photo_batch["tokens"])
    tokens = module.model_labels(from_pixels)
    assert tokens.shape == (CLASSES, GRID * GRID, CHANNELS)
    assert torch.equal(module.index_from_model_labels(tokens), photo_batch["tokens"])
    bit = tiny_module(tokenizer, {"variant": "bit"})
    bits = bit.model_labels(from_pixels)
    assert bits.shape == (CLASSES, GRID * GRID, 4 * CHANNELS) and int(bits.max()) == 1
    assert torch.equal(bit.index_from_model_labels(bits), photo_batch["tokens"])
    # The tokenizer is outside the module: not in state_dict, not in parameters (so not in the optimiser).
    assert not any(k.startswith("tokenizer") for k in module.state_dict())
    assert {id(p) for p in module.parameters()}.isdisjoint({id(p) for p in tokenizer.parameters()})
    assert all(not p.requires_grad for p in tokenizer.parameters())
    assert any(k.startswith("ema.") for k in module.state_dict())


def test_one_step_on_pixels_equals_one_step_on_tokens(tokenizer, photo_batch):
    module = tiny_module(tokenizer)
    module.train()
    pix = {k: photo_batch[k] for k in ("pixels", "cls", "valid")}
    tok = {k: photo_batch[k] for k in ("tokens", "cls", "valid")}
    out_pix = module.refinement_step(pix, generator=torch.Generator().manual_seed(3))
    out_tok = module.refinement_step(tok, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out_pix[0], out_tok[0]) and torch.equal(out_pix[2], out_tok[2])


def test_lr_rule_warmup_and_option_errors():
    rule = Optimization(lr=None, base_lr=5e-5, global_batch_size=1024, warmup_epochs=5, epoch_size=1281167)
    module = tiny_module(optimization=rule)
    assert module.learning_rate() == pytest.approx(2e-4)
    assert module.warmup_total_steps() == math.ceil(5 * 1281167 / 1024)
    for bad, needle in ((dict(size="XL"), "size"), (dict(variant="idx"), "variant")):
        with pytest.raises(ValueError, match=needle):
            tiny_module(transformer=bad)
    for build, needle in ((lambda: Parallelism(compile="yes"), "model.parallelism.compile"),
                          (lambda: EMATracks(sample_weights="ema2"), "model.ema.decay_2"),
                          (lambda: Optimization(warmup_epochs=1), "epoch_size"),
                          (lambda: Optimization(lr=None), "global_batch_size"),
                          (lambda: Corruption(condition_dropout=1.0), "condition_dropout"),
                          (lambda: Optimization(lr=1e-3, lr_decay="linear"), "model.optimization.lr_decay"),
                          (lambda: tiny_module(accuracy_bins=0), "accuracy_bins"),
                          (lambda: tiny_module(corruption=Corruption(video_ratio_mu=-2.0)), "for T2X clips")):  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            build()


def test_cosine_lr_decay_reaches_zero_at_max_steps(tmp_path, photo_batch):
    module = tiny_module(optimization=Optimization(lr=1e-3, warmup_steps=1, lr_decay="cosine"))
    _, trainer = _fit(module, photo_batch, 3, str(tmp_path))
    # warm-up step 0 at 1/1, then cos over steps 1..3: 1, 1/2 (after 1 step of 2), 0 at the end
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0)
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0](2) == pytest.approx(0.5)


def test_ema_update_and_second_track():
    module = tiny_module(ema=EMATracks(decay=0.5, decay_2=0.75))
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in module.ema.parameters()]
    module.update_ema()
    for e, e2, b, p in zip(module.ema.parameters(), module.ema2.parameters(), before, module.model.parameters()):
        assert torch.allclose(e, 0.5 * b + 0.5 * p) and torch.allclose(e2, 0.75 * b + 0.25 * p)
    assert all(not p.requires_grad for p in module.ema.parameters())


def test_tokenizer_checkpoint_prefers_ema(tmp_path, tokenizer):
    from grn_lightning.generator.frozen_tokenizer import load_frozen_tokenizer

    raw = {f"tokenizer.{k}": torch.zeros_like(v) for k, v in tokenizer.state_dict().items()}
    ema = {f"ema_tokenizer.{k}": v.clone() + 1 for k, v in tokenizer.state_dict().items()}
    path = tmp_path / "tok.ckpt"
    torch.save({"state_dict": {**raw, **ema, "discriminator.w": torch.zeros(2)}, "global_step": 5}, path)
    fresh = HBQTokenizer(latent_channels=CHANNELS, num_rounds=4, preset="tiny")
    load_frozen_tokenizer(fresh, str(path))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, tokenizer.state_dict()[k] + 1), k
    # TokenizerModule's layout: raw weights under "tokenizer." in state_dict, EMA shadows of
    # `EMA.update(self.tokenizer)` (unprefixed parameter names) in checkpoint["ema"]; the shadows win.
    shadows = {n: p.detach() + 2 for n, p in tokenizer.named_parameters()}
    torch.save({"state_dict": raw, "ema": {"decays": [0.9999], "num_updates": 1, "shadows": [shadows]}}, path)
    load_frozen_tokenizer(fresh, str(path))
    for n, p in fresh.named_parameters():
        assert torch.equal(p, dict(tokenizer.named_parameters())[n] + 2), n
    with pytest.raises(FileNotFoundError, match="model.tokenizer_ckpt"):
        load_frozen_tokenizer(fresh, str(tmp_path / "missing.ckpt"))
    with pytest.raises(KeyError, match="tokenizer"):
        torch.save({"state_dict": {"foo": torch.zeros(1)}}, path)
        load_frozen_tokenizer(fresh, str(path))


def test_predict_writes_pngs_grid_and_edits(tmp_path, tokenizer):
    from PIL import Image

    from grn_lightning.generator.c2i.predict import C2IPredictRequests
    from grn_lightning.generator.writers import SampleWriter

    src = tmp_path / "photo.png"
    Image.fromarray(((real_images()[1, :, 0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()).save(src)
    sampler = RefinementSampler(steps=4, cfg_scale=1.5, cfg_interval=(0.0, 1.0), temperature=1.0)
    module = tiny_module(tokenizer, sampler=sampler)
    requests = C2IPredictRequests(
        class_ids=[0, 2], samples_per_class=3, batch_size=4, edit_image=str(src), edit_region=[0.0, 0.0, 0.5, 1.0],
        edit_class=1, edit_samples=2, resolution=RES,
    )
    assert requests.region_mask().sum() == GRID * GRID // 2
    out = tmp_path / "samples"
    writer = SampleWriter(str(out))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer])
    trainer.predict(module, datamodule=requests, return_predictions=False)
    names = sorted(p.name for p in out.glob("*.png"))
    assert "grid.png" in names and "class0000_002.png" in names and "class0002_000.png" in names
    assert sum(n.startswith("edit_photo_class0001") for n in names) == 2
    assert Image.open(out / "class0002_001.png").size == (RES, RES)


def test_sample_images_contract_for_generation_metrics(tokenizer):
    sampler = RefinementSampler(steps=3, cfg_scale=2.0, cfg_interval=(0.0, 1.0), temperature=1.0)
    module = tiny_module(tokenizer, sampler=sampler)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = module.sample_images(torch.tensor([0, 1, 3]), g1)
    b = module.sample_images(torch.tensor([0, 1, 3]), g2)
    assert a.shape == (3, 3, RES, RES) and torch.equal(a, b)  # same generator state → same images
    assert module.num_classes == CLASSES


def test_validation_ignores_padding_rows_and_configure_model_wraps_once(tmp_path, photo_batch):
    module = tiny_module(parallelism=Parallelism(activation_checkpointing=True))
    module.configure_model()
    module.configure_model()  # Lightning calls it again for every fit/validate/test: no double wrapping
    wrapped = [type(b).__name__ for b in module.model.blocks]
    assert wrapped == ["CheckpointWrapper"] * len(wrapped)
    assert type(module.model.blocks[0]._checkpoint_wrapped_module).__name__ == "GRNBlock"
    assert set(module.state_dict()) == set(tiny_module().state_dict())  # checkpoints stay loadable either way
    tokens = photo_batch["tokens"]
    padded = {"tokens": torch.cat([tokens, torch.zeros_like(tokens[:2])]), "cls": torch.tensor([0, 1, 2, 3, -1, -1]),
              "valid": torch.tensor([True] * 4 + [False] * 2)}  # fmt: skip
    clean = {"tokens": tokens, "cls": torch.arange(4), "valid": torch.ones(4, dtype=torch.bool)}
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))  # fmt: skip
    with_padding = trainer.validate(module, torch.utils.data.DataLoader([padded], batch_size=None))[0]["val/loss"]
    without = trainer.validate(module, torch.utils.data.DataLoader([clean], batch_size=None))[0]["val/loss"]
    assert with_padding == pytest.approx(without, rel=1e-6)


def test_bad_class_ids_fail_before_the_step(tmp_path, photo_batch):
    module = tiny_module()
    cls = torch.tensor([0, 1, 2, CLASSES])  # CLASSES is the null class: never a label
    batch = {"tokens": photo_batch["tokens"], "cls": cls, "valid": torch.ones(4, dtype=torch.bool)}
    with pytest.raises(ValueError, match="class ids must lie in"):
        _fit(module, batch, 1, str(tmp_path))


def test_gradient_clipping_goes_through_the_fsdp1_root(monkeypatch):
    """FSDPStrategy (FSDP1): Lightning's FSDPPrecision refuses norm clipping, so the module clips through the root
    wrapper's collective `clip_grad_norm_`; any other strategy keeps Lightning's own clipping."""
    from types import SimpleNamespace

    from grn_lightning.generator import parallelize

    assert not parallelize.is_fsdp1_wrapped(torch.nn.Linear(2, 2)) and not parallelize.is_fsdp1_wrapped(None)
    calls = []
    root = SimpleNamespace(clip_grad_norm_=lambda value: calls.append(("fsdp1_root", value)))
    module = tiny_module()
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(model=root))
    monkeypatch.setattr(module, "clip_gradients", lambda opt, val, algo: calls.append(("lightning", val, algo)))
    monkeypatch.setattr(parallelize, "is_fsdp1_wrapped", lambda model: model is root)
    module.configure_gradient_clipping(None, 0.1, "norm")
    module.configure_gradient_clipping(None, 0.5, "value")  # value clipping: not FSDP1's call, Lightning decides
    module.configure_gradient_clipping(None, None, None)  # no clipping configured: nothing is clipped
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(model=torch.nn.Linear(2, 2)))  # DDP / one device
    module.configure_gradient_clipping(None, 0.1, "norm")
    assert calls == [("fsdp1_root", 0.1), ("lightning", 0.5, "value"), ("lightning", None, None),
                     ("lightning", 0.1, "norm")]  # fmt: skip
