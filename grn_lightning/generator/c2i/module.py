"""`C2IModule`: trains and samples the GRN class-to-image generator (SPEC §3, §4, §6).

    batch["tokens"] (token shards)  ─┐
    batch["pixels"] ─ frozen HBQ tokenizer ─┴▶ index labels [B,C,1,h,w] ─ layout ─▶ y [B,N,G]
    p ~ ratio distribution; F = corrupt(y, p); class dropout 10% → null class
    logits = transformer(F, class, p);  loss = CE over all elements;  EMA tracks updated after every optimiser step
    sample_images: RefinementSampler on the EMA weights → labels → tokenizer.detokenize → images in [-1, 1]

EMA tracks, parallelism (AC → compile → FSDP2), the optimiser and FSDP1 clipping come from `GeneratorModule`
(generator/module.py), shared with the T2I/T2V module. The tokenizer is NOT a submodule (frozen; outside
optimisers, checkpoints and FSDP units; see frozen_tokenizer.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from grn_lightning.generator.c2i.model import GRNC2ITransformer
from grn_lightning.generator.module import GeneratorModule
from grn_lightning.generator.options import Corruption, EMATracks, Optimization, Parallelism
from grn_lightning.generator.refinement import corrupt, ratio_bin_accuracy, refinement_loss
from grn_lightning.generator.sampling.options import with_overrides
from grn_lightning.generator.sampling.mask_decoding import MaskDecodingSampler
from grn_lightning.generator.sampling.sampler import RefinementSampler
from grn_lightning.tokenizer.vae import HBQTokenizer

class C2IModule(GeneratorModule):
    """GRN class-to-image training and sampling.

    Args:
        transformer: the GRN class-to-image transformer (`GRNC2ITransformer`: size "tiny", "B", "L", "H", "G";
            variant "ind" / "bit"; SPEC §4). Its channels and rounds must be the tokenizer's (checked here).
        tokenizer: the frozen HBQ tokenizer (e.g. `grn_lightning.tokenizer.vae.HBQTokenizer`), the source of C, M
            and the stride; needed for media batches (`pixels`), sampling to images and edits; token-shard
            training alone works without it.
        tokenizer_ckpt: weights for `tokenizer` (plain state dict, converted release file or a tokenizer
            LightningModule checkpoint; EMA weights preferred); None keeps the tokenizer's own weights.
        sampler: the refinement sampler (`RefinementSampler`: steps, schedule, cfg_scale, cfg_interval,
            temperature, adaptive steps, ...; or the `MaskDecodingSampler` baseline); None = `RefinementSampler()`
            (the C2I release values). Sampling is chosen
            per run: it is not saved in checkpoints, so `grn predict --model.init_args.sampler.init_args.cfg_scale
            3.0` applies to a trained model; callbacks may override it per call.
        corruption: kept-fraction distribution and class dropout (release C2I: logit-normal(−0.8, 0.8), 10%).
        optimization: AdamW and the learning-rate rule (lr = base_lr · global_batch_size / 256 when lr is null);
            `global_batch_size` is the one place the global batch lives (the data module is given its share).
        ema: EMA decays (0.9999, release second track 0.9996) and the weights sampling uses.
        parallelism: activation checkpointing, torch.compile and FSDP2 options (`configure_model`).
        accuracy_bins: number of kept-fraction bins for the logged per-bin accuracy.
    """

    def __init__(
        self,
        transformer: GRNC2ITransformer,
        tokenizer: HBQTokenizer | None = None,
        tokenizer_ckpt: str | None = None,
        sampler: RefinementSampler | MaskDecodingSampler | None = None,
        corruption: Corruption = Corruption(),
        optimization: Optimization = Optimization(lr=None, global_batch_size=1024),
        ema: EMATracks = EMATracks(),
        parallelism: Parallelism = Parallelism(),
        accuracy_bins: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["transformer", "tokenizer", "sampler"])
        if accuracy_bins < 1:
            raise ValueError(f"model.accuracy_bins must be >= 1, got {accuracy_bins}")
        if corruption.has_video_ratio:
            raise ValueError("model.corruption.video_ratio_mu / video_ratio_sigma are for T2X clips; C2I trains images "
                             "only: set ratio_mu / ratio_sigma instead")  # fmt: skip
        self._init_generator(transformer, tokenizer, tokenizer_ckpt, sampler or RefinementSampler(), corruption,
                             optimization, ema, parallelism)  # fmt: skip
        self.num_classes = transformer.num_classes
        self.accuracy_bins = accuracy_bins
        self._acc_hits = torch.zeros(accuracy_bins, dtype=torch.float64)
        self._acc_counts = torch.zeros(accuracy_bins, dtype=torch.float64)

    # -- configuration flows down -------------------------------------------------------------------------
    def data_settings(self) -> dict:
        """The shared settings (generator/module.py) with the fixed token grid the data must give."""
        return {**super().data_settings(), "geometry": self.token_geometry(self.model.grid)}

    # -- labels -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def index_labels(self, batch: dict) -> torch.Tensor:
        """int64 [B, C, 1, h, w] index labels from a token batch or (frozen tokenizer) a media batch."""
        if "tokens" in batch:
            return batch["tokens"].long()
        pixels = batch["pixels"]
        if pixels.shape[2] != 1:
            raise ValueError(f"C2I trains on images (T = 1), got pixels {tuple(pixels.shape)}")
        return self._require_tokenizer("training on media batches").tokenize(pixels.float())

    def model_labels(self, index_labels: torch.Tensor) -> torch.Tensor:
        """[B, C, 1, h, w] index labels → [B, N, G] labels of this variant."""
        tokens = self.layout.to_tokens(index_labels)
        if tokens.shape[1:] != (self.model.num_tokens, self.model.groups):
            raise ValueError(
                f"labels {tuple(index_labels.shape)} give tokens {tuple(tokens.shape)}, the model expects "
                f"[B, {self.model.num_tokens}, {self.model.groups}] (check channels / rounds / grid_size)"
            )
        return tokens

    def index_from_model_labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, G] labels of this variant → [B, C, 1, h, w] index labels."""
        return self.layout.to_index_labels(tokens, (1, *self.model.grid))

    # -- training -----------------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Class ids are checked here, on the host, so the training step never waits on a device-to-host sync.
        if isinstance(batch, dict) and "cls" in batch and "valid" in batch:
            cls = torch.as_tensor(batch["cls"])[torch.as_tensor(batch["valid"]).bool()]
            if bool(((cls < 0) | (cls >= self.num_classes)).any()):
                raise ValueError(f"class ids must lie in [0, {self.num_classes}) for C2I, got {cls.tolist()}")
        return batch

    def _class_ids(self, batch: dict) -> torch.Tensor:
        return batch["cls"].long()

    def refinement_step(self, batch: dict, generator: torch.Generator | None = None, dropout: bool = True):
        """One corrupted forward: returns (loss, logits, labels, ratio)."""
        labels = self.model_labels(self.index_labels(batch))
        cls = self._class_ids(batch)
        b = labels.shape[0]
        if dropout and self.corruption.condition_dropout > 0:
            drop = torch.rand(b, device=cls.device, generator=generator) < self.corruption.condition_dropout
            cls = torch.where(drop, torch.full_like(cls, self.num_classes), cls)
        ratio = self.ratio.sample(b, device=labels.device, generator=generator)
        state, _ = corrupt(labels, ratio, self.model.classes, generator=generator)
        net = self.model if self.training else self._sampling_model()
        logits = net(state, cls, ratio)
        return refinement_loss(logits, labels), logits, labels, ratio

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logits, labels, ratio = self.refinement_step(batch)
        b = labels.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/uniform_loss", self._uniform_loss(loss.device), batch_size=b)
        hits, counts = ratio_bin_accuracy(logits.detach(), labels, ratio, self.accuracy_bins)
        self._acc_hits = self._acc_hits.to(hits.device) + hits
        self._acc_counts = self._acc_counts.to(counts.device) + counts
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            self._flush_bin_accuracy("train")
        return loss

    def _uniform_loss(self, device: torch.device) -> torch.Tensor:
        """ln K, the loss of a uniform guess (a reference line next to train/loss), made on the device once: a Python
        float given to `self.log` becomes `torch.tensor(value, device=cuda)` every step, a blocking host-to-device
        copy that waits for the queued forward and leaves the GPU idle while the backward is launched."""
        cached = getattr(self, "_uniform_loss_cache", None)
        if cached is None or cached.device != device:
            cached = torch.tensor(math.log(self.model.classes), device=device)
            self._uniform_loss_cache = cached  # a plain tensor attribute: not a buffer, not in checkpoints
        return cached

    def _flush_bin_accuracy(self, stage: str) -> None:
        # Every rank reaches this on the same step, so the sum over ranks is a safe collective.
        stats = self.trainer.strategy.reduce(torch.stack([self._acc_hits, self._acc_counts]), reduce_op="sum")
        bins = self.accuracy_bins
        for index in range(bins):
            if stats[1, index] > 0:
                name = f"{stage}/acc_p{index / bins:.2f}-{(index + 1) / bins:.2f}"
                self.log(name, float(stats[0, index] / stats[1, index]), rank_zero_only=True)
        self._acc_hits.zero_()
        self._acc_counts.zero_()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """`grn test --ckpt_path ...`: the refinement loss of the sampling weights on the test split, logged as
        `test/loss`; a configured `GenerationMetrics` callback adds gFID / IS at the end of the test epoch."""
        self._evaluation_step(batch, batch_idx, "test")

    def _evaluation_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        # A fixed generator per batch: the validation loss of the sampling weights is comparable across runs.
        # Padding rows (valid=False, cls −1) that equalise evaluation across ranks are left out of the loss. A batch
        # of padding only still runs one forward (FSDP ranks must stay in step) but logs nothing.
        valid = batch["valid"].bool()
        count = int(valid.sum())
        rows = valid if count else torch.arange(valid.shape[0], device=valid.device) == 0
        key = "tokens" if "tokens" in batch else "pixels"
        sub = {key: batch[key][rows], "cls": batch["cls"][rows].clamp(min=0)}
        generator = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        loss = self.refinement_step(sub, generator=generator, dropout=False)[0]
        if count:
            self.log(f"{stage}/loss", loss, batch_size=count, sync_dist=True)

    # -- sampling -----------------------------------------------------------------------------------------
    @staticmethod
    def seeds_from(generator: torch.Generator | None, count: int) -> torch.Tensor:
        """Per-sample int64 seeds drawn from `generator` (per-sample randomness, SPEC §6 / sampling/sampler.py)."""
        return torch.randint(0, 2**62, (count,), generator=generator, device=generator.device if generator else "cpu")

    @torch.no_grad()
    def sample_labels(self, class_ids: torch.Tensor, generator: torch.Generator | None = None, **overrides):
        """Run the refinement sampler with the sampling weights; returns the sampler's result."""
        sampler = with_overrides(self.sampler, overrides)
        model = self._sampling_model()
        seeds = self.seeds_from(generator, class_ids.shape[0])
        with self._autocast():
            return sampler.sample(model, class_ids.to(self.device), seeds.cpu(), lockstep=self._lockstep(model))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, G] labels → images [B, 3, H, W] in [-1, 1] through the frozen tokenizer."""
        tokenizer = self._require_tokenizer("decoding samples")
        images = tokenizer.detokenize(self.index_from_model_labels(tokens).to(self.device))
        return images[:, :, 0].float().clamp(-1, 1)

    @torch.no_grad()
    def reconstruct_media(self, pixels: torch.Tensor) -> torch.Tensor:
        """Real images [B, 3, 1, H, W] → encode → this variant's labels → decode, as samples are: [B, 3, H, W]."""
        return self.decode(self.model_labels(self.index_labels({"pixels": pixels.to(self.device)})))

    @torch.no_grad()
    def sample_images(self, class_ids: torch.Tensor, generator: torch.Generator | None = None, **overrides):
        """`GenerationMetrics` entry: images [B, 3, H, W] in [-1, 1] for `class_ids` (EMA weights)."""
        return self.decode(self.sample_labels(class_ids, generator, **overrides).labels)

    @torch.no_grad()
    def edit_images(
        self, pixels: torch.Tensor, region: torch.Tensor, class_ids: torch.Tensor,
        generator: torch.Generator | None = None, rounds: int = 1, **overrides,
    ) -> torch.Tensor:  # fmt: skip
        """Region edit ("sketch and revise", SPEC §6): encode `pixels` [B,3,1,H,W], regenerate the tokens where
        `region` (bool [B, h, w] over the token grid) is True for `class_ids`, keep the rest, decode."""
        tokens = self.model_labels(self.index_labels({"pixels": pixels}))
        mask = region.reshape(region.shape[0], -1).to(tokens.device)
        sampler = with_overrides(self.sampler, overrides)
        seeds = self.seeds_from(generator, tokens.shape[0])
        with self._autocast():
            model = self._sampling_model()
            result = sampler.edit(model, tokens, mask, class_ids.to(self.device), seeds.cpu(), rounds,
                                  lockstep=self._lockstep(model))
        return self.decode(result.labels)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Requests from `C2IPredictRequests` (predict.py): class samples or region edits; `SampleWriter` (generator/writers.py)
        writes the returned images as PNGs and a grid."""
        generator = torch.Generator(device=self.device).manual_seed(int(batch["seed"]))
        if "pixels" in batch:
            pixels, region, rounds = batch["pixels"], batch["region"], int(batch.get("rounds", 1))
            images = self.edit_images(pixels, region, batch["class_ids"], generator, rounds)
        else:
            images = self.sample_images(batch["class_ids"], generator)
        return {"images": images, "names": batch["names"]}

