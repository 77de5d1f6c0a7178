"""`GRNDataModule`: one LightningDataModule for every stage (tokenizer, C2I, T2I/T2V), over WebDataset shards.

Training is infinite and resampled (drive it with `trainer.max_steps`); evaluation reads every record exactly
once with the same number of batches on every rank. Batches follow docs/CONTRACTS.md. Checkpoints hold the
training stream's position and every random generator's state, so `--ckpt_path last` continues the exact
batches and random draws of the uninterrupted run (data/resume.py).
"""

from __future__ import annotations

import json
import logging
from typing import Literal

import lightning as L
import torch
import webdataset as wds

from grn_lightning.data.buckets import PIXEL_BUDGETS
from grn_lightning.data.media import ZoomOut
from grn_lightning.data.records import CAPTION_SOURCES, SampleSpec, collate
from grn_lightning.data.resume import (
    ResumableStream,
    StreamTracker,
    capture_rng_states,
    gather_per_rank,
    restore_rng_states,
    this_ranks,
)
from grn_lightning.data.splits import check_local_shards, expand_shards, rank_and_world
from grn_lightning.data.streams import (
    EvalStream,
    MixedStream,
    TrainStream,
    UnreadableShardError,
    count_records,
    iterate_records,
)
from grn_lightning.data.tokens import TokenGeometry
from grn_lightning.data.video import VIDEO_BACKENDS, ClipRule, backend_unavailable

log = logging.getLogger(__name__)
ShardSpec = str | list[str] | None


class GRNDataModule(L.LightningDataModule):
    def __init__(
        self,
        kind: Literal["image", "video", "mixed", "tokens"] = "image",
        train_shards: ShardSpec = None,
        val_shards: ShardSpec = None,
        test_shards: ShardSpec = None,
        train_video_shards: ShardSpec = None,
        val_video_shards: ShardSpec = None,
        resolution: int = 256,
        pixel_budget: str | None = None,
        num_frames: int = 17,
        fps: float = 16.0,
        max_video_seconds: float | None = None,
        short_clip: Literal["skip", "loop"] = "skip",
        video_ratio: float = 0.5,
        batch_size: int | None = None,
        video_batch_size: int | None = None,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        shuffle_buffer: int = 1000,
        random_flip: bool = True,
        image_zoom_out: ZoomOut | None = None,
        video_backend: Literal["auto", "decord", "torchcodec", "av"] = "auto",
        caption_source: Literal["txt", "json"] = "txt",
        pin_memory: bool = True,
        prefetch_factor: int = 4,
        seed: int = 0,
    ) -> None:
        """
        Args:
            kind: "image" (photos, 1-frame videos), "video" (mp4 clips), "mixed" (image batches from
                train_shards and video batches from train_video_shards, see video_ratio), "tokens"
                (pre-computed HBQ token shards from tools/tokenize_shards.py).
            train_shards: training shards, a brace pattern ("data/x-{000000..000099}.tar") or a list.
            val_shards: validation shards (each record exactly once per validation run).
            test_shards: test shards (`grn test`).
            train_video_shards: video shards for kind="mixed".
            val_video_shards: video validation shards for kind="mixed" (a second validation dataloader).
            resolution: square side in pixels (ADM centre crop for images, cover + centre crop for frames).
            pixel_budget: training images/videos use aspect-ratio buckets under this budget instead of the
                square crop; one of "0.06M", "0.25M", "0.41M", "0.92M", "1M", "2M". Evaluation stays square.
            num_frames: frames per clip, 1 + 4k (17 = ~1 s at 16 fps).
            fps: frame rate clips are resampled to.
            max_video_seconds: drop (and count) clips longer than this; None keeps every clip.
            short_clip: clips shorter than num_frames at fps: "skip" (counted) or "loop".
            video_ratio: probability that a training batch is a video batch (kind="mixed").
            batch_size: training batch size per device (image or token batches). None: the model gives it through
                `connect` (C2I: its global batch / (devices × accumulation); T2X: samples that fill its token
                budget), else 32. A stated value that disagrees with the model's global batch is an error.
            video_batch_size: training batch size per device for video batches (default: batch_size; T2X: samples
                that fill the token budget).
            val_batch_size: evaluation batch size per device (default: batch_size, or video_batch_size for video).
            num_workers: DataLoader worker processes per device.
            shuffle_buffer: records held in each worker's shuffle buffer.
            random_flip: random horizontal flip in training (token shards: use the stored flipped copy).
            image_zoom_out: training images (not clips, not evaluation) shrunk and moved at random, e.g.
                `{scale: [0.9, 0.96], shift: 0.1, probability: 0.5}` (grn_lightning.data.media.ZoomOut): shows
                objects at the smaller, off-centre look they have in clips. None (default) leaves images as they are.
            video_backend: video decoder: "decord" (the default's first choice), "torchcodec", "av" (PyAV), or
                "auto" (decord, then torchcodec, then PyAV where the previous one is missing or fails).
            caption_source: where a record has both a `txt` member (img2dataset / video2dataset layout) and a
                `json` member with a "caption" field (tools/make_shards.py), which caption wins: "txt" or
                "json". An absent, empty or null caption always falls back to the other one.
            pin_memory: pinned host memory for faster host-to-device copies.
            prefetch_factor: batches prefetched per worker.
            seed: base seed of shuffling/cropping; every (rank, worker) derives its own.
        """
        super().__init__()
        self.save_hyperparameters()
        if pixel_budget is not None and pixel_budget not in PIXEL_BUDGETS:
            raise ValueError(f"data.pixel_budget must be one of {sorted(PIXEL_BUDGETS)} or null, got {pixel_budget!r}")
        if not 0.0 <= video_ratio <= 1.0:
            raise ValueError(f"data.video_ratio must lie in [0, 1], got {video_ratio}")
        checked = (("batch_size", batch_size or 1), ("resolution", resolution), ("shuffle_buffer", shuffle_buffer))
        for name, value in checked:
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if video_backend not in VIDEO_BACKENDS:
            raise ValueError(f"data.video_backend must be one of {VIDEO_BACKENDS}, got {video_backend!r}")
        if video_backend != "auto" and kind in ("video", "mixed") and (reason := backend_unavailable(video_backend)):
            raise ValueError(f"data.video_backend={video_backend!r} cannot be used here: {reason}")
        if caption_source not in CAPTION_SOURCES:
            raise ValueError(f"data.caption_source must be one of {CAPTION_SOURCES}, got {caption_source!r}")
        self._stated = {"batch_size": batch_size is not None, "video_batch_size": video_batch_size is not None}
        self.hparams.batch_size = 32 if batch_size is None else batch_size
        self.geometry: TokenGeometry | None = None  # the model's tokens, given by `connect`
        clip = ClipRule(num_frames=num_frames, fps=fps, max_seconds=max_video_seconds, short=short_clip)
        base = dict(resolution=resolution, clip=clip, video_backend=video_backend, caption_source=caption_source)
        primary_kind = {"mixed": "image"}.get(kind, kind)
        if image_zoom_out is not None and primary_kind != "image":
            raise ValueError(f"data.image_zoom_out transforms training images; kind={kind!r} has none: set it to null")
        self.train_spec = SampleSpec(kind=primary_kind, pixel_budget=pixel_budget, random_flip=random_flip,
                                     zoom_out=image_zoom_out, **base)  # fmt: skip
        self.eval_spec = SampleSpec(kind=primary_kind, **base)
        self.video_train_spec = SampleSpec(kind="video", pixel_budget=pixel_budget, random_flip=random_flip, **base)
        self.video_eval_spec = SampleSpec(kind="video", **base)
        self.skipped_total = 0  # records skipped so far, summed over workers (see SkippedSamplesLogger)
        self._eval_sets: dict[str, list[EvalStream]] = {}
        self._streams = StreamTracker()
        self._saved_stream: dict | None = None  # this rank's stream state from a checkpoint, used once
        self._saved_rng: dict | None = None  # this rank's generator states, restored before the first resumed step

    def connect(
        self, batch_size: int | None = None, geometry: TokenGeometry | None = None, token_budget: int | None = None,
        sample_extra_tokens: int = 0,
    ) -> None:
        """What the model tells the data (litgpt's `data.connect`), called by the generator module's `setup`.

        batch_size: per-device batch from the model's global batch (a stated data.batch_size must agree).
        geometry: C, M, stride and grid of the model's tokens; the resolution must be a multiple of the stride (and
            give the model's grid), and token shards made for other values are refused before the first step.
        token_budget: T2X tokens per step; an unstated batch size becomes the samples that fit it, each sample
            being its visual tokens plus `sample_extra_tokens` (text bound + ratio token)."""
        hp = self.hparams
        if batch_size is not None:
            if self._stated["batch_size"] and hp.batch_size != batch_size:
                raise ValueError(f"data.batch_size={hp.batch_size} differs from the model's per-device batch "
                                 f"{batch_size} (model.optimization.global_batch_size over devices × accumulation):"
                                 " drop data.batch_size, or change the global batch")  # fmt: skip
            hp.batch_size = batch_size
            self._stated["batch_size"] = True  # the model's global batch wins over filling a token budget
        if geometry is not None:
            self.geometry = geometry
        if geometry is not None and geometry.spatial_stride:
            stride = geometry.spatial_stride
            if hp.resolution % stride:
                raise ValueError(f"data.resolution={hp.resolution} is not a multiple of the tokenizer's stride "
                                 f"{stride}")  # fmt: skip
            grid = (hp.resolution // stride,) * 2
            if geometry.grid is not None and hp.kind != "tokens" and tuple(geometry.grid) != grid:
                raise ValueError(f"data.resolution={hp.resolution} with the tokenizer's stride {stride} gives a "
                                 f"{grid[0]}x{grid[1]} token grid, the model's grid is {tuple(geometry.grid)}: set "
                                 f"data.resolution to {geometry.grid[0] * stride}")  # fmt: skip
        if token_budget is not None and self.geometry is not None and self.geometry.spatial_stride:
            side = PIXEL_BUDGETS[hp.pixel_budget] if hp.pixel_budget else hp.resolution // self.geometry.spatial_stride
            frames = 1 + (hp.num_frames - 1) // (self.geometry.temporal_stride or 1)
            for name, latent_frames in (("batch_size", 1), ("video_batch_size", frames)):
                if not self._stated[name]:
                    hp[name] = max(1, token_budget // (latent_frames * side * side + sample_extra_tokens))

    def _check_token_shards(self, urls: list[str], option: str) -> None:
        if self.hparams.kind == "tokens" and self.geometry is not None:
            first = next(iter(iterate_records(urls[:1], _RaiseOnError())))
            self.geometry.check_record(json.loads(first["tokens.json"]), f"data.{option}")

    # -- setup: all checks happen here, before the first step --------------------------------------------
    def _shards(self, option: str) -> list[str]:
        urls = expand_shards(getattr(self.hparams, option))
        check_local_shards(urls, option)
        return urls

    def _eval_stream(self, option: str, spec: SampleSpec) -> EvalStream:
        urls = self._shards(option)
        try:
            num_records = count_records(urls)
        except UnreadableShardError as err:
            raise UnreadableShardError(f"data.{option}: {err}") from err
        if num_records == 0:
            raise ValueError(f"data.{option}: the shards hold no records (empty dataset)")
        _, world = rank_and_world()
        if num_records < world:
            raise ValueError(f"data.{option}: {num_records} records cannot be spread over {world} ranks")
        token_shape = None
        if spec.kind == "tokens":
            first = next(iter(iterate_records(urls[:1], _RaiseOnError())))
            token_shape = tuple(json.loads(first["tokens.json"])["shape"])
        log.info("data.%s: %d records, %d shards", option, num_records, len(urls))
        return EvalStream(urls, spec, num_records, token_shape)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":
            if hp.train_shards is None:
                raise ValueError("data.train_shards is required for fit")
            self._train_urls = self._shards("train_shards")
            if hp.kind == "mixed":
                self._train_video_urls = self._shards("train_video_shards")
        if stage in ("fit", "validate") and hp.val_shards is not None:
            streams = [self._eval_stream("val_shards", self.eval_spec)]
            if hp.kind == "mixed" and hp.val_video_shards is not None:
                streams.append(self._eval_stream("val_video_shards", self.video_eval_spec))
            self._eval_sets["val"] = streams
        if stage == "validate" and hp.val_shards is None:
            raise ValueError("data.val_shards is required for validate")
        if stage == "test":
            if hp.test_shards is None:
                raise ValueError("data.test_shards is required for test")
            self._eval_sets["test"] = [self._eval_stream("test_shards", self.eval_spec)]

    # -- loaders -------------------------------------------------------------------------------------------
    def _loader(self, dataset: torch.utils.data.Dataset, batch_size: int | None) -> torch.utils.data.DataLoader:
        hp = self.hparams
        workers = hp.num_workers
        return torch.utils.data.DataLoader(
            dataset,
            # its own generator: making a loader iterator draws the workers' base seed from it, and drawing from
            # the global one would shift the trainer's random stream between a resumed and an uninterrupted run
            generator=torch.Generator().manual_seed(hp.seed),
            batch_size=batch_size,
            collate_fn=None if batch_size is None else collate,
            num_workers=workers,
            pin_memory=hp.pin_memory and torch.cuda.is_available(),
            prefetch_factor=hp.prefetch_factor if workers > 0 else None,
            persistent_workers=False,
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        hp = self.hparams
        self._check_token_shards(self._train_urls, "train_shards")
        stream = TrainStream(self._train_urls, self.train_spec, hp.batch_size, hp.shuffle_buffer, hp.seed)
        if hp.kind == "mixed":
            videos = TrainStream(
                self._train_video_urls, self.video_train_spec, hp.video_batch_size or hp.batch_size,
                hp.shuffle_buffer, hp.seed + 1,
            )
            stream = MixedStream(stream, videos, hp.video_ratio, hp.seed)
        elif hp.kind == "video" and hp.video_batch_size:
            stream.batch_size = hp.video_batch_size
        plan = self._streams.resume_plan(self._saved_stream, hp.num_workers)
        self._saved_stream = None
        return self._loader(ResumableStream(stream, plan), batch_size=None)

    def _eval_loaders(self, split: str) -> list[torch.utils.data.DataLoader]:
        hp = self.hparams
        loaders = []
        for stream in self._eval_sets.get(split, []):
            is_video = stream.spec.kind == "video"
            size = hp.val_batch_size or ((hp.video_batch_size or hp.batch_size) if is_video else hp.batch_size)
            loaders.append(self._loader(stream, batch_size=size))
        return loaders

    def val_dataloader(self):
        loaders = self._eval_loaders("val")
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self):
        return self._eval_loaders("test")[0]

    # -- on the host, before the copy: the stream position of the batch reaching a training step now, and skip
    # counting (reading it back after the copy would sync every step, every stage) ----------------------------------
    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if isinstance(batch, dict) and "stream_state" in batch:
            self._streams.consumed(batch.pop("stream_state"))
        if isinstance(batch, dict) and "num_skipped" in batch:
            self.skipped_total += int(batch.pop("num_skipped"))
        return batch

    # -- on device: uint8 -> [-1, 1] float ----------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch = self.on_before_batch_transfer(batch, dataloader_idx)  # callers that skip the transfer hooks
        if self._saved_rng is not None and self.trainer is not None and self.trainer.training:
            # the generators as they were after the checkpoint's last step; restored here, right before the first
            # resumed step, because the sanity check and setup in between draw from them
            restore_rng_states(self._saved_rng)
            self._saved_rng = None
        if "pixels" in batch and batch["pixels"].dtype == torch.uint8:
            batch["pixels"] = batch["pixels"].float().div_(127.5).sub_(1.0)
        return batch

    def state_dict(self) -> dict:
        # every rank contributes its readers and generators (Lightning builds the checkpoint on every rank)
        local = {"stream": self._streams.local_state(self.hparams.num_workers), "rng": capture_rng_states(device=True)}
        return {"skipped_total": self.skipped_total, "ranks": gather_per_rank(local)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_total = int(state_dict.get("skipped_total", 0))
        mine = this_ranks(state_dict["ranks"], "data stream") if "ranks" in state_dict else None
        if mine is not None:
            self._saved_stream, self._saved_rng = mine["stream"], mine["rng"]


class _RaiseOnError:
    def tar_handler(self, err: Exception) -> bool:
        raise err
