"""Evaluation engines shared by the Lightning callbacks and the stand-alone protocol scripts.

An evaluator owns frozen feature networks plus rank-synchronised metrics; ``update`` is purely local (no
collective calls, so ranks may see different amounts of data), ``compute`` syncs and must run on every rank.
Nothing here knows about Lightning.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torchmetrics import MeanMetric

from grn_lightning.eval.features import InceptionFeatureExtractor, build_lpips, check_lpips_net
from grn_lightning.eval.i3d import I3D_MIN_FRAMES, I3DFeatureExtractor
from grn_lightning.eval.metrics import FrechetDistance, InceptionScore, psnr_per_image, ssim_per_image
from grn_lightning.eval.protocol import file_record

__all__ = [
    "GenerationEvaluator",
    "ReconstructionEvaluator",
    "balanced_class_ids",
    "class_balanced_batches",
    "generate_and_update",
]


def _no_autocast(device: torch.device):
    # Metric networks always run in fp32: bf16 features move FID by more than the differences being measured.
    return torch.autocast(device_type=device.type, enabled=False)


class ReconstructionEvaluator:
    """PSNR / SSIM / LPIPS per frame, rFID (Inception of inputs vs reconstructions), rFVD (I3D, clips >= 9 frames).

    Args:
        lpips_net: LPIPS trunk, ``alex`` (SPEC section 7 metric) or ``vgg``.
        lpips: compute LPIPS. False where no trained trunk exists: a random one gives a number that means nothing,
            and a report should not print it beside PSNR and SSIM.
        rfid: compute rFID.
        rfvd: compute rFVD for video batches (clips shorter than 9 frames are counted and skipped).
        inception_weights / i3d_weights / lpips_backbone: explicit weight paths (else resolved offline).
        random_init: random feature networks of the true structure (tests; numbers not comparable).
        feature_batch_size: frames per feature-network call (bounds memory for long videos).
        extra_lpips: further LPIPS trunks reported as ``lpips_<net>`` (SPEC section 7 lists Alex and VGG).
    """

    def __init__(
        self,
        lpips_net: str = "alex",
        rfid: bool = True,
        rfvd: bool = True,
        inception_weights: str | None = None,
        i3d_weights: str | None = None,
        lpips_backbone: str | None = None,
        random_init: bool = False,
        feature_batch_size: int = 32,
        extra_lpips: tuple[str, ...] = (),
        lpips: bool = True,
    ):
        for net in (lpips_net, *extra_lpips):
            check_lpips_net(net)
        if feature_batch_size < 1:
            raise ValueError(f"feature_batch_size must be >= 1, got {feature_batch_size}")
        self.lpips_net_name, self.random_init, self.feature_batch_size = lpips_net, random_init, feature_batch_size
        if not lpips and extra_lpips:
            raise ValueError(f"extra_lpips={extra_lpips} asks for LPIPS trunks while lpips=False turns LPIPS off")
        # metric name -> (trunk name, LPIPS network): "lpips" for lpips_net, "lpips_<net>" for each extra trunk
        self.lpips_trunks = {}
        if lpips:
            self.lpips_trunks["lpips"] = (lpips_net, build_lpips(lpips_net, lpips_backbone, random_init=random_init))
        # Extra trunks resolve their own registry entries (an explicit lpips_backbone is for lpips_net only).
        for net in extra_lpips:
            self.lpips_trunks[f"lpips_{net}"] = (net, build_lpips(net, random_init=random_init))
        self.inception = InceptionFeatureExtractor(inception_weights, random_init=random_init) if rfid else None
        self.i3d = I3DFeatureExtractor(i3d_weights, random_init=random_init) if rfvd else None
        # float64 running means: 50,000 float32 PSNR values summed in float32 would lose ~1e-6 of the mean.
        means = ("psnr", "ssim", *self.lpips_trunks)
        self.metrics = {name: MeanMetric().set_dtype(torch.float64) for name in means}
        if rfid:
            self.metrics["rfid"] = FrechetDistance(2048)
        if rfvd:
            self.metrics["rfvd"] = FrechetDistance(400)
        self.frames_seen = 0
        self.short_clips_skipped = 0

    def with_fresh_metrics(self) -> ReconstructionEvaluator:
        """An evaluator sharing these (frozen) networks with its own, empty metrics."""
        other = copy.copy(self)
        other.metrics = {name: metric.clone() for name, metric in self.metrics.items()}
        other.reset()
        return other

    def to(self, device: torch.device | str) -> ReconstructionEvaluator:
        trunks = (model for _, model in self.lpips_trunks.values())
        for net in (*trunks, self.inception, self.i3d, *self.metrics.values()):
            if net is not None:
                net.to(device)
        return self

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self.frames_seen = self.short_clips_skipped = 0

    @torch.no_grad()
    def update(self, real: torch.Tensor, fake: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """real / fake: [B, 3, T, H, W] (or [B, 3, H, W]) in [-1, 1]; rows with valid=False are padding."""
        if real.shape != fake.shape:
            raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
        if real.ndim == 4:
            real, fake = real.unsqueeze(2), fake.unsqueeze(2)
        if valid is not None:
            keep = valid.to(device=real.device, dtype=torch.bool)
            real, fake = real[keep], fake[keep]
        if real.shape[0] == 0:
            return
        device = self.metrics["psnr"].device  # moved with the networks by to()
        real, fake = real.to(device).float(), fake.to(device).float()
        with _no_autocast(device):
            frames_real = real.transpose(1, 2).flatten(0, 1)  # [B*T, 3, H, W]: PSNR/SSIM/LPIPS per frame
            frames_fake = fake.transpose(1, 2).flatten(0, 1)
            for r, f in zip(frames_real.split(self.feature_batch_size), frames_fake.split(self.feature_batch_size)):
                self.metrics["psnr"].update(psnr_per_image(f, r))
                self.metrics["ssim"].update(ssim_per_image(f, r))
                for name, (_, model) in self.lpips_trunks.items():
                    self.metrics[name].update(model(f.clamp(-1, 1), r.clamp(-1, 1)).flatten())
                if self.inception is not None:
                    self.metrics["rfid"].update(self.inception(r).pool, real=True)
                    self.metrics["rfid"].update(self.inception(f).pool)
            self.frames_seen += frames_real.shape[0]
            if self.i3d is not None and real.shape[2] > 1:
                if real.shape[2] < I3D_MIN_FRAMES:
                    self.short_clips_skipped += real.shape[0]
                    return
                clips_per_call = max(1, self.feature_batch_size // real.shape[2])
                for r, f in zip(real.split(clips_per_call), fake.split(clips_per_call)):
                    self.metrics["rfvd"].update(self.i3d(r), real=True)
                    self.metrics["rfvd"].update(self.i3d(f))

    def compute(self) -> dict[str, float]:
        """Sync across ranks and return the numbers; call on EVERY rank (it contains collective calls)."""
        results = {}
        for name, metric in self.metrics.items():
            try:
                results[name] = float(metric.compute())
            except ValueError:
                # Too few samples in total (e.g. no video clip >= 9 frames): the synced count is the same on
                # every rank, so every rank skips the same metric and no rank waits on another.
                continue
        return results

    def protocol(self) -> dict:
        weights = {}
        for net, model in self.lpips_trunks.values():
            weights[f"lpips_{net}_backbone"] = file_record(model.weights_file)
        if self.inception is not None:
            weights["fid_inception"] = file_record(self.inception.weights_file)
        if self.i3d is not None:
            weights["i3d_kinetics400"] = file_record(self.i3d.weights_file)
        definitions = {
            "psnr": "per frame on [0,1], averaged", "ssim": "per frame, 11x11 gaussian sigma 1.5, [0,1]",
            "lpips": f"lpips v0.1 {self.lpips_net_name}, per frame", "rfid": "Inception pool3 inputs vs recons",
            "rfvd": "I3D Kinetics-400 logits at 224x224, clips >= 9 frames",
        }  # fmt: skip
        if "lpips" not in self.lpips_trunks:
            del definitions["lpips"]
        return {
            "frames_on_this_rank": self.frames_seen,
            "short_clips_skipped_for_rfvd": self.short_clips_skipped,
            "metric_definitions": definitions,
            "weights": weights,
            "random_init": self.random_init,
        }


class GenerationEvaluator:
    """gFID against reference statistics and Inception Score of generated images.

    Args:
        reference_stats: ``.npz`` with ``mu``/``sigma`` (ImageNet-256 reference); None computes IS only.
        inception_weights: explicit path of the FID Inception weights (else resolved offline).
        random_init: random Inception of the true structure (tests; numbers not comparable).
        is_splits: Inception Score splits (10 in the standard protocol).
    """

    def __init__(
        self,
        reference_stats: str | None = None,
        inception_weights: str | None = None,
        random_init: bool = False,
        is_splits: int = 10,
    ):
        self.reference_stats, self.random_init = reference_stats, random_init
        self.inception = InceptionFeatureExtractor(inception_weights, random_init=random_init)
        self.metrics = {"is": InceptionScore(splits=is_splits)}
        if reference_stats:
            self.metrics["gfid"] = FrechetDistance(2048, reference_stats=reference_stats)
        self.images_seen = 0

    def to(self, device: torch.device | str) -> GenerationEvaluator:
        for net in (self.inception, *self.metrics.values()):
            net.to(device)
        return self

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self.images_seen = 0

    @torch.no_grad()
    def update(self, images: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """images: [B, 3, H, W] in [-1, 1]; index: their global sample numbers (IS splits in that order)."""
        device = self.inception.net.fc.weight.device
        if images.shape[0] == 0:
            # A rank whose share is only filler rows still contributes a (0, 1008) block, so the gathered
            # logits have the same rank-2 layout on every rank (an empty state list would gather as 1-D).
            self.metrics["is"].update(torch.empty(0, 1008, device=device), torch.empty(0, dtype=torch.long))
            return
        with _no_autocast(device):
            out = self.inception(images.to(device).float())
        self.metrics["is"].update(out.logits, index)
        if "gfid" in self.metrics:
            self.metrics["gfid"].update(out.pool)
        self.images_seen += images.shape[0]

    def compute(self) -> dict[str, float]:
        """Sync across ranks and return ``gfid`` (if reference given), ``is``, ``is_std``; call on every rank."""
        is_mean, is_std = self.metrics["is"].compute()
        results = {"is": float(is_mean), "is_std": float(is_std)}
        if "gfid" in self.metrics:
            results["gfid"] = float(self.metrics["gfid"].compute())
        return results

    def protocol(self) -> dict:
        return {
            "images_on_this_rank": self.images_seen,
            "reference_stats": file_record(self.reference_stats) if self.reference_stats else None,
            "weights": {"fid_inception": file_record(self.inception.weights_file)},
            "inception_preprocessing": "uint8 quantisation, bilinear resize to 299 (pytorch-fid), pool3 2048-d",
            "inception_score": f"softmax of unbiased 1008-way logits, {self.metrics['is'].splits} splits",
            "random_init": self.random_init,
        }


def class_balanced_batches(
    num_samples: int, num_classes: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This rank's batches of the class-balanced sample list (SPEC section 7: num_samples / num_classes per class).

    The global list (classes in order, each repeated num_samples / num_classes times) is cut into batches of
    ``batch_size``; global batch j is generated by rank j % world_size with noise seeded by j alone (see
    ``generate_and_update``), so sample i is the same image on any number of ranks. Every rank gets
    ceil(num_batches / world_size) batches, i.e. makes the same number of sampler calls (a sharded model forwards
    collectively); a rank past the last real batch makes a one-row filler batch, marked invalid (never scored).

    Returns [(batch number j, class_ids int64 [n], valid bool [n], global_index int64 [n])].
    """
    if num_classes < 1 or num_samples % num_classes:
        raise ValueError(
            f"num_samples={num_samples} must be a positive multiple of num_classes={num_classes} "
            f"(class-balanced protocol: the same number of samples for every class)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    per_class = num_samples // num_classes
    num_batches = math.ceil(num_samples / batch_size)
    batches = []
    for number in range(rank, math.ceil(num_batches / world_size) * world_size, world_size):
        start = number * batch_size
        end = min(start + batch_size, num_samples) if number < num_batches else start + 1  # filler: one row
        index = torch.arange(start, end, dtype=torch.long)
        batches.append((number, index.clamp(max=num_samples - 1) // per_class, index < num_samples, index))
    return batches


def balanced_class_ids(
    num_samples: int, num_classes: int, rank: int = 0, world_size: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All class ids this rank generates with one-sample batches: sample i goes to rank i % world_size, and every
    rank gets ceil(num_samples / world_size) entries (filler entries past num_samples are invalid).

    Returns (class_ids int64 [n], valid bool [n], global_index int64 [n]); see ``class_balanced_batches``.
    """
    batches = class_balanced_batches(num_samples, num_classes, 1, rank, world_size)
    return tuple(torch.cat([batch[part] for batch in batches]) for part in (1, 2, 3))


def generate_and_update(
    sample_fn: Callable[..., torch.Tensor],
    evaluator: GenerationEvaluator | None,
    num_samples: int,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    sampling_overrides: dict | None = None,
    save_dir: str | None = None,
    keep: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Generate this rank's class-balanced share with ``sample_fn(class_ids, generator=..., **overrides)``.

    Feeds valid images to ``evaluator``, optionally writes each as ``save_dir/{global_index:06d}.png``, and
    returns up to ``keep`` images (CPU) for a sample grid. Each global batch gets its own generator, seeded
    ``seed + 1_000_003 * batch_number`` (``class_balanced_batches``): the samples, and so gFID / IS, are the same
    for any world size (for a fixed seed and batch size), e.g. an 8-GPU evaluation is reproduced on one device.
    """
    from tqdm.auto import tqdm

    kept: list[torch.Tensor] = []
    if save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    batches = class_balanced_batches(num_samples, num_classes, batch_size, rank, world_size)
    batches = tqdm(batches, desc=f"generating (rank {rank})", disable=not progress, unit="batch")
    for number, ids, valid, index in batches:
        generator = torch.Generator(device=device).manual_seed(seed + 1_000_003 * number)
        ids = ids.to(device)
        images = sample_fn(ids, generator=generator, **(sampling_overrides or {}))
        if images.shape[0] != ids.shape[0] or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"sample_images must return [B, 3, H, W] for B={ids.shape[0]}, got {tuple(images.shape)}")
        images = images[valid.to(images.device)]
        if evaluator is not None:
            evaluator.update(images, index=index[valid])
        if save_dir:
            _save_pngs(images, index[valid], save_dir)
        if len(kept) < keep:
            kept.extend(images[: keep - len(kept)].float().cpu())
    return torch.stack(kept) if kept else torch.empty(0, 3, 0, 0)


def _save_pngs(images: torch.Tensor, indices: torch.Tensor, save_dir: str) -> None:
    from PIL import Image

    pixels = torch.round((images.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for array, i in zip(pixels, indices.tolist()):
        Image.fromarray(array).save(Path(save_dir) / f"{i:06d}.png")
