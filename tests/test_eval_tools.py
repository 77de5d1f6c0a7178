"""End-to-end run of tools/eval_imagenet.py (tokenizer half) on a tiny folder of real photos."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import grn_lightning  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def imagenet_like_val(tmp_path_factory) -> Path:
    """ImageNet-val-like layout (class sub-folders of JPEGs) with real photos of different sizes."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("val")
    for i, name in enumerate(("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")):
        folder = root / f"n0000000{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(getattr(data, name)()).convert("RGB").save(folder / f"{name}.JPEG", quality=95)
    return root


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    """A tiny TokenizerModule config and a checkpoint whose EMA differs from its raw weights."""
    import yaml

    from grn_lightning.tokenizer.losses import TokenizerLoss
    from grn_lightning.tokenizer.module import TokenizerModule
    from grn_lightning.tokenizer.vae import HBQTokenizer

    root = tmp_path_factory.mktemp("tokenizer")
    tokenizer_spec = {"class_path": "grn_lightning.tokenizer.vae.HBQTokenizer",
                      "init_args": {"latent_channels": 4, "num_rounds": 4, "preset": "tiny"}}  # fmt: skip
    config = {"model": {"class_path": "grn_lightning.tokenizer.module.TokenizerModule",
                        "init_args": {"tokenizer": tokenizer_spec, "num_logged_samples": 0,
                                      "loss": {"class_path": "grn_lightning.tokenizer.losses.TokenizerLoss",
                                               "init_args": {"random_backbone": True}}}}}  # fmt: skip
    (root / "tokenizer.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    module = TokenizerModule(HBQTokenizer(latent_channels=4, num_rounds=4, preset="tiny"),
                             loss=TokenizerLoss(random_backbone=True), num_logged_samples=0)  # fmt: skip
    module.ema.update(module.tokenizer)  # the shadows start as a copy of the current weights...
    ema_state = {k: v.clone() for k, v in module.tokenizer.state_dict().items()}
    with torch.no_grad():  # ...then the raw weights move away: evaluation must pick the EMA copy
        for p in module.tokenizer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    checkpoint = {"state_dict": module.state_dict(), "ema": module.ema.state_dict(), "global_step": 1}
    torch.save(checkpoint, root / "last.ckpt")
    return root, ema_state


def _expected_psnr(val_root: Path, ema_state: dict) -> float:
    from PIL import Image

    from grn_lightning.data.media import adm_center_crop
    from grn_lightning.eval.metrics import psnr_per_image
    from grn_lightning.tokenizer.vae import HBQTokenizer

    tokenizer = HBQTokenizer(latent_channels=4, num_rounds=4, preset="tiny").eval()
    tokenizer.load_state_dict(ema_state)
    files = sorted(p for p in val_root.rglob("*") if p.suffix == ".JPEG")
    crops = [np.asarray(adm_center_crop(Image.open(f).convert("RGB"), SIZE)) for f in files]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        x_hat, _ = tokenizer(x.unsqueeze(2))
    return float(psnr_per_image(x_hat[:, :, 0].clamp(-1, 1), x).mean())


def test_eval_imagenet_tokenizer_half_end_to_end(tmp_path, imagenet_like_val, tokenizer_run, monkeypatch, capsys):
    run_dir, ema_state = tokenizer_run
    eval_imagenet = _load_tool("eval_imagenet")
    # The C2I module "not available": the generator half must fail clearly, the tokenizer half still run.
    monkeypatch.setitem(sys.modules, "grn_lightning.generator.c2i.module", None)
    out = tmp_path / "out"
    status = eval_imagenet.main([
        "--ckpt", str(run_dir / "last.ckpt"), "--config", str(run_dir / "tokenizer.yaml"),
        "--tokenizer-ckpt", str(run_dir / "last.ckpt"), "--tokenizer-config", str(run_dir / "tokenizer.yaml"),
        "--imagenet-val", str(imagenet_like_val), "--size", str(SIZE), "--tokenizer-batch-size", "4",
        "--workers", "0", "--random-init", "--out", str(out),
    ])  # fmt: skip
    assert status == 1  # one half failed
    results = json.loads((out / "metrics.json").read_text())
    assert "grn_lightning.generator.c2i.module.C2IModule" in results["generator"]["error"]
    metrics = results["tokenizer"]["metrics"]
    assert set(metrics) == {"psnr", "ssim", "lpips", "lpips_vgg", "rfid"}
    assert metrics["psnr"] == pytest.approx(_expected_psnr(imagenet_like_val, ema_state), rel=1e-5)  # EMA weights
    protocol = results["tokenizer"]["protocol"]
    assert protocol["num_images"] == 6 and protocol["frames_on_this_rank"] == 6
    assert "EMA" in protocol["tokenizer_weights"] and protocol["tokenizer_checkpoint"]["sha256"]
    assert results["versions"]["torch"] == torch.__version__
    table = capsys.readouterr().out
    assert "tokenizer  psnr" in table and "generator  ERROR" in table


@pytest.fixture(scope="module")
def c2i_run(tmp_path_factory):
    """A tiny C2IModule config (8 classes, tiny tokenizer) and a checkpoint of it."""
    import lightning.pytorch as pl
    import yaml

    from grn_lightning.eval.loading import instantiate_from_spec

    root = tmp_path_factory.mktemp("c2i")
    model = {"class_path": "grn_lightning.generator.c2i.module.C2IModule", "init_args": {
        "transformer": {"class_path": "grn_lightning.generator.c2i.model.GRNC2ITransformer", "init_args": {
            "size": "tiny", "variant": "ind", "channels": 4, "rounds": 2, "num_classes": 8, "grid_size": 2,
            "in_context_tokens": 2}},
        "ema": {"decay": 0.9},
        "sampler": {"class_path": "grn_lightning.generator.sampling.sampler.RefinementSampler",
                    "init_args": {"steps": 3, "schedule": "linear"}},
        "tokenizer": {"class_path": "grn_lightning.tokenizer.vae.HBQTokenizer",
                      "init_args": {"latent_channels": 4, "num_rounds": 2, "preset": "tiny"}}}}  # fmt: skip
    (root / "c2i.yaml").write_text(yaml.safe_dump({"model": model}))
    torch.manual_seed(0)
    module = instantiate_from_spec(model, pl.LightningModule)
    torch.save({"state_dict": module.state_dict(), "global_step": 0}, root / "last.ckpt")
    return root


def test_eval_imagenet_generator_half_is_reproducible_and_scores_against_reference(tmp_path, c2i_run):
    eval_imagenet, fid_stats = _load_tool("eval_imagenet"), _load_tool("fid_stats")
    common = ["--ckpt", str(c2i_run / "last.ckpt"), "--config", str(c2i_run / "c2i.yaml"), "--num-samples", "8",
              "--batch-size", "3", "--is-splits", "2", "--random-init", "--seed", "5"]  # fmt: skip
    assert eval_imagenet.main([*common, "--png", "--out", str(tmp_path / "first")]) == 0
    pngs = sorted((tmp_path / "first" / "samples").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(8)]
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())["generator"]
    assert first["protocol"]["per_class"] == 1 and first["protocol"]["num_classes"] == 8
    assert "gfid" not in first["metrics"] and first["metrics"]["is"] >= 1.0  # no reference: IS only
    # Reference statistics of the exported PNGs; the same seed regenerates the same images: gFID ~ 0.
    stats = tmp_path / "samples.npz"
    fid_stats.main([str(tmp_path / "first" / "samples"), "--out", str(stats), "--size", "0", "--random-init",
                    "--workers", "0", "--quiet"])  # fmt: skip
    assert eval_imagenet.main([*common, "--ref-stats", str(stats), "--out", str(tmp_path / "second")]) == 0
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())["generator"]
    assert abs(second["metrics"]["gfid"]) < 1e-6 * max(1.0, second["metrics"]["is"])
    assert second["metrics"]["is"] == pytest.approx(first["metrics"]["is"], rel=1e-6)
    assert second["protocol"]["reference_stats"]["sha256"] and second["protocol"]["checkpoint"]["sha256"]
