"""Evaluation callbacks inside real Trainer runs (CPU, random-init feature networks, real photos)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import grn_lightning  # noqa: F401
import lightning.pytorch as pl
from grn_lightning.eval.callbacks import GenerationMetrics, ReconstructionMetrics
from grn_lightning.eval.evaluators import ReconstructionEvaluator, balanced_class_ids
from grn_lightning.eval.metrics import psnr_per_image, save_reference_stats

SIZE = 32


def photos(n: int = 8) -> torch.Tensor:
    """n real photo crops [n, 3, SIZE, SIZE] in [-1, 1] (scikit-image)."""
    from skimage import data

    out = []
    for i in range(n):
        image = getattr(data, ("astronaut", "chelsea", "coffee", "rocket")[i % 4])()
        image = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
        side = min(image.shape[1:]) // 2
        top, left = (i // 4) * side // 2, (i // 4) * side // 3
        crop = image[None, :, top : top + side, left : left + side]
        out.append(torch.nn.functional.interpolate(crop, size=(SIZE, SIZE), mode="area")[0])
    return torch.stack(out)


class PaddedEvalSet(Dataset):
    """Images [3, T, H, W] with a validity flag; padding rows carry garbage that must not be scored."""

    def __init__(self, pixels: torch.Tensor, valid: torch.Tensor):
        self.pixels, self.valid = pixels, valid

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i):
        return {"pixels": self.pixels[i], "valid": self.valid[i]}


def blur_reconstruction(x: torch.Tensor) -> torch.Tensor:
    """A deterministic imperfect 'tokenizer': 2x box down/up sampling per frame."""
    b, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    frames = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(frames, 2), scale_factor=2.0)
    return frames.reshape(b, t, c, h, w).transpose(1, 2)


class TinyReconModule(pl.LightningModule):
    """Minimal tokenizer-like module: validation/test steps return {'real', 'fake', 'valid'}.

    ``per_rank``: number of samples each rank's loader holds (uneven on purpose in the DDP test).
    """

    def __init__(self, per_rank: tuple[int, ...] = (6,), frames: int = 1, batch_size: int = 2):
        super().__init__()
        self.per_rank, self.frames, self.batch_size = per_rank, frames, batch_size
        self.scale = torch.nn.Parameter(torch.ones(()))  # something for DDP to wrap

    def _step(self, batch):
        x = batch["pixels"]
        return {"real": x, "fake": blur_reconstruction(x) * self.scale, "valid": batch["valid"]}

    def validation_step(self, batch, batch_idx):
        return self._step(batch)

    def test_step(self, batch, batch_idx):
        return self._step(batch)

    def _loader(self) -> DataLoader:
        rank = self.trainer.global_rank
        pixels, valid = rank_data(self.per_rank, rank, self.frames)
        return DataLoader(PaddedEvalSet(pixels, valid), batch_size=self.batch_size)

    def val_dataloader(self):
        return self._loader()

    def test_dataloader(self):
        return self._loader()


def rank_data(per_rank: tuple[int, ...], rank: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s share of the photos, plus one padding row of noise at the end."""
    images = photos(sum(per_rank))
    start = sum(per_rank[:rank])
    mine = images[start : start + per_rank[rank]]
    padding = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    pixels = torch.cat([mine, padding]).unsqueeze(2).repeat(1, 1, frames, 1, 1)
    valid = torch.tensor([True] * len(mine) + [False])
    return pixels, valid


def expected_psnr(per_rank: tuple[int, ...], frames: int = 1) -> float:
    values = []
    for rank in range(len(per_rank)):
        pixels, valid = rank_data(per_rank, rank, frames)
        x = pixels[valid]
        fake = blur_reconstruction(x)
        values.append(psnr_per_image(fake.transpose(1, 2).flatten(0, 1), x.transpose(1, 2).flatten(0, 1)))
    return float(torch.cat(values).mean())


def _trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    return pl.Trainer(
        accelerator="cpu", devices=1, logger=TensorBoardLogger(str(tmp_path), name="logs"), callbacks=callbacks,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
        default_root_dir=str(tmp_path), **kwargs,
    )  # fmt: skip


def _protocol(tmp_path) -> list[dict]:
    (path,) = tmp_path.rglob("metrics_protocol.json")
    return json.loads(path.read_text())


def test_reconstruction_metrics_ignore_padding_and_log_protocol(tmp_path):
    callback = ReconstructionMetrics(random_init=True, rfvd=False)
    trainer = _trainer(tmp_path, [callback])
    (results,) = trainer.validate(TinyReconModule(per_rank=(4,)), verbose=False)
    assert results["val/recon_psnr"] == pytest.approx(expected_psnr((4,)), rel=1e-5)
    assert 0 < results["val/recon_ssim"] < 1 and results["val/recon_lpips"] > 0 and results["val/recon_rfid"] > 0
    (entry,) = _protocol(tmp_path)
    assert entry["metrics"]["psnr"] == pytest.approx(results["val/recon_psnr"], rel=1e-6)
    assert entry["protocol"]["frames_on_this_rank"] == 4  # the padding row was not scored
    assert entry["protocol"]["random_init"] is True and entry["versions"]["torch"] == torch.__version__
    assert set(entry["protocol"]["weights"]) == {"lpips_alex_backbone", "fid_inception"}
    (test_results,) = trainer.test(TinyReconModule(per_rank=(4,)), verbose=False)
    assert test_results["test/recon_psnr"] == pytest.approx(results["val/recon_psnr"], rel=1e-6)


class ConstantReconModule(TinyReconModule):
    """Reconstructs every pixel 0.1 too bright on the [-1, 1] scale: 0.05 on [0, 1], MSE 0.0025, PSNR 26.02 dB."""

    def _step(self, batch):
        x = torch.zeros_like(batch["pixels"])
        return {"real": x, "fake": x + 0.1, "valid": batch["valid"]}


def test_reconstruction_metrics_without_lpips_build_no_trunk_and_report_psnr_and_ssim(tmp_path, monkeypatch):
    def no_trunk(*args, **kwargs):
        raise AssertionError("an LPIPS trunk was built although lpips=False")

    monkeypatch.setattr("grn_lightning.eval.evaluators.build_lpips", no_trunk)
    callback = ReconstructionMetrics(lpips=False, rfid=False, rfvd=False)
    (results,) = _trainer(tmp_path, [callback]).validate(ConstantReconModule(per_rank=(4,)), verbose=False)
    assert set(results) == {"val/recon_psnr", "val/recon_ssim"}
    assert results["val/recon_psnr"] == pytest.approx(10 * math.log10(1 / 0.05**2), abs=1e-4)  # 26.0206 dB
    (entry,) = _protocol(tmp_path)
    assert entry["protocol"]["weights"] == {} and "lpips" not in entry["protocol"]["metric_definitions"]
    with pytest.raises(ValueError, match="extra_lpips"):
        ReconstructionEvaluator(lpips=False, rfid=False, rfvd=False, extra_lpips=("vgg",))


def test_reconstruction_metrics_every_n_validation_runs(tmp_path):
    callback = ReconstructionMetrics(every_n_val_runs=2, random_init=True, rfid=False, rfvd=False)
    trainer = _trainer(tmp_path, [callback])
    module = TinyReconModule(per_rank=(2,))
    assert "val/recon_psnr" not in trainer.validate(module, verbose=False)[0]  # run 1: skipped
    assert "val/recon_psnr" in trainer.validate(module, verbose=False)[0]  # run 2: evaluated
    assert callback.state_dict() == {"val_runs": 2}
    with pytest.raises(ValueError, match="lpips_net"):
        ReconstructionMetrics(lpips_net="squeeze")
    with pytest.raises(ValueError, match="every_n_val_runs"):
        ReconstructionMetrics(every_n_val_runs=0)


@pytest.mark.slow
def test_reconstruction_metrics_rfvd_on_video_clips(tmp_path):
    callback = ReconstructionMetrics(random_init=True, rfid=False, feature_batch_size=9)
    trainer = _trainer(tmp_path, [callback])
    (results,) = trainer.validate(TinyReconModule(per_rank=(2,), frames=9), verbose=False)
    assert results["val/recon_rfvd"] > 0 and math.isfinite(results["val/recon_rfvd"])
    assert results["val/recon_psnr"] == pytest.approx(expected_psnr((2,), frames=9), rel=1e-5)


def _ddp_validate_worker(rank: int, port: int, root: str, per_rank: tuple[int, ...]) -> None:
    """One rank of an externally launched 2-process DDP run (like torchrun: Lightning sees LOCAL_RANK)."""
    import os

    import grn_lightning  # noqa: F401,F811  (before lightning in the fresh process)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      LOCAL_RANK=str(rank))  # fmt: skip
    callback = ReconstructionMetrics(random_init=True, rfid=False, rfvd=False)  # Frechet sync: test_eval_metrics
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", callbacks=[callback], logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
        use_distributed_sampler=False, default_root_dir=root,
    )  # fmt: skip
    (results,) = trainer.validate(TinyReconModule(per_rank=per_rank), verbose=False)
    with open(os.path.join(root, f"results{rank}.json"), "w") as handle:
        json.dump(results, handle)
    # Explicit teardown: at interpreter exit a gloo thread can abort the rank (SIGABRT) after the work succeeded.
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_process_validation_with_uneven_data_does_not_hang(tmp_path, free_port):
    import torch.multiprocessing as mp

    per_rank = (5, 1)  # rank 0: 3 batches, rank 1: 1 batch (each plus a padding row)
    mp.spawn(_ddp_validate_worker, args=(free_port, str(tmp_path), per_rank), nprocs=2, join=True)
    for rank in (0, 1):
        results = json.loads((tmp_path / f"results{rank}.json").read_text())
        # Synced over both ranks: the mean over all 6 valid frames, not one rank's share.
        assert results["val/recon_psnr"] == pytest.approx(expected_psnr(per_rank), rel=1e-5)
        assert results["val/recon_lpips"] > 0
    (entry,) = _protocol(tmp_path)  # written once, by rank 0
    assert entry["world_size"] == 2 and entry["protocol"]["frames_on_this_rank"] == 5


class TwoLoaderModule(TinyReconModule):
    """Two evaluation sets (like the joint tokenizer's image and video validation sets)."""

    def val_dataloader(self):
        first = rank_data((4,), 0, 1)
        second = rank_data((4, 2), 1, 1)  # photos 4-5: a different set
        return [DataLoader(PaddedEvalSet(*first), batch_size=2), DataLoader(PaddedEvalSet(*second), batch_size=2)]

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return self._step(batch)


def test_reconstruction_metrics_score_each_dataloader_alone(tmp_path):
    callback = ReconstructionMetrics(random_init=True, rfid=False, rfvd=False)
    (results, _) = _trainer(tmp_path, [callback]).validate(TwoLoaderModule(), verbose=False)
    first = expected_psnr((4,))
    pixels, valid = rank_data((4, 2), 1, 1)
    x = pixels[valid][:, :, 0]
    second = float(psnr_per_image(blur_reconstruction(pixels[valid])[:, :, 0], x).mean())
    assert results["val/recon_psnr"] == pytest.approx(first, rel=1e-5)
    assert results["val/recon_dl1_psnr"] == pytest.approx(second, rel=1e-5)
    assert abs(first - second) > 1e-3  # the two sets really differ


class TinyTrainable(TinyReconModule):
    def training_step(self, batch, batch_idx):
        x = batch["pixels"]
        return (blur_reconstruction(x) * self.scale - x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return self._loader()


def test_feature_networks_stay_out_of_checkpoints_and_optimisers(tmp_path):
    callback = ReconstructionMetrics(random_init=True, rfid=False, rfvd=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=2, val_check_interval=2, callbacks=[callback], logger=False,
        enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    module = TinyTrainable(per_rank=(2,))
    trainer.fit(module)
    assert "val/recon_psnr" in trainer.callback_metrics
    (ckpt_path,) = tmp_path.rglob("*.ckpt")
    checkpoint = torch.load(ckpt_path, weights_only=False)
    assert list(checkpoint["state_dict"]) == ["scale"]  # no Inception / LPIPS / I3D tensors
    assert [len(g["params"]) for g in checkpoint["optimizer_states"][0]["param_groups"]] == [1]
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "ReconstructionMetrics" in k]
    assert state == {"val_runs": 1}


# ---- generation ------------------------------------------------------------------------------------------


def test_balanced_class_ids_split_over_ranks():
    for world_size in (1, 2, 3):
        shares = [balanced_class_ids(12, 4, rank, world_size) for rank in range(world_size)]
        assert len({len(ids) for ids, _, _ in shares}) == 1  # equal work on every rank
        classes = torch.cat([ids[valid] for ids, valid, _ in shares])
        assert torch.bincount(classes, minlength=4).tolist() == [3, 3, 3, 3]
        index = torch.cat([idx[valid] for _, valid, idx in shares])
        assert sorted(index.tolist()) == list(range(12))
    with pytest.raises(ValueError, match="multiple of num_classes"):
        balanced_class_ids(10, 4)


class TinyGenerator(pl.LightningModule):
    """Stand-in C2I module: class c -> photo c (optionally noisy). Records the class ids it was asked for."""

    def __init__(self, noise: float = 0.0, num_classes: int = 4):
        super().__init__()
        self.num_classes, self.noise = num_classes, noise
        self.bank = photos(num_classes)
        self.calls: list[tuple[list[int], dict]] = []
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def sample_images(self, class_ids: torch.Tensor, generator: torch.Generator, **overrides) -> torch.Tensor:
        self.calls.append((class_ids.tolist(), overrides))
        images = self.bank[class_ids.cpu()]
        noise = torch.randn(images.shape, generator=generator, device=generator.device)
        return (images + self.noise * noise).clamp(-1, 1)

    def validation_step(self, batch, batch_idx):
        return None

    def val_dataloader(self):
        return DataLoader(torch.zeros(1, 1), batch_size=1)


def test_generation_metrics_gfid_is_grid_and_protocol(tmp_path):
    from grn_lightning.eval.features import InceptionFeatureExtractor

    # Reference statistics of exactly the set the clean generator produces (each class photo once).
    features = InceptionFeatureExtractor(random_init=True)(photos(4)).pool.double()
    stats = tmp_path / "ref.npz"
    save_reference_stats(stats, features.mean(0).numpy(), torch.cov(features.T).numpy())
    sampling = {"cfg_scale": 2.4, "temperature": 1.33}
    results = {}
    for noise in (0.0, 0.5):
        callback = GenerationMetrics(
            num_samples=4, batch_size=3, reference_stats=str(stats), sampling=sampling, is_splits=2,
            random_init=True, grid_size=4, save_dir=str(tmp_path / f"png{noise}"), show_progress=False,
        )  # fmt: skip
        module = TinyGenerator(noise=noise)
        (results[noise],) = _trainer(tmp_path / f"run{noise}", [callback]).validate(module, verbose=False)
        asked = [c for ids, _ in module.calls for c in ids]
        assert sorted(asked) == [0, 1, 2, 3] and [len(ids) for ids, _ in module.calls] == [3, 1]
        assert all(kwargs == sampling for _, kwargs in module.calls)
        assert len(list((tmp_path / f"png{noise}").glob("*.png"))) == 4
    assert abs(results[0.0]["val/gen_gfid"]) < 1e-3  # generated set == reference set
    assert results[0.5]["val/gen_gfid"] > 100 * max(abs(results[0.0]["val/gen_gfid"]), 1e-3)
    assert results[0.0]["val/gen_is"] >= 1.0
    (entry,) = _protocol(tmp_path / "run0.0")
    assert entry["protocol"]["num_samples"] == 4 and entry["protocol"]["per_class"] == 1
    assert entry["protocol"]["sampling"] == sampling and entry["protocol"]["reference_stats"]["sha256"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "run0.0").rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events.parent)).Reload()
    assert "val/gen_samples" in accumulator.Tags()["images"]


def test_generation_metrics_validates_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="fid_stats"):
        GenerationMetrics(reference_stats=str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="is_splits"):
        GenerationMetrics(num_samples=4, is_splits=10)
    callback = GenerationMetrics(num_samples=6, is_splits=1, random_init=True, show_progress=False)
    with pytest.raises(ValueError, match="multiple of num_classes"):
        _trainer(tmp_path, [callback]).validate(TinyGenerator(), verbose=False)
