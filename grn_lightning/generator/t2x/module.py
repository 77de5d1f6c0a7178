"""`T2XModule`: trains and samples the text-to-image / text-to-video / image-to-video GRN (SPEC §3, §5, §6).

    batch["pixels"] [B,3,T,H,W] ─ frozen HBQ tokenizer ─▶ index labels [B,C,T',h,w] ─ layout ─▶ y [B,T',h,w,G]
    batch["caption"] ─ task tag + caption dropout 10% ─ frozen umT5 ─▶ text states [L_i, 4096] per sample
    p ~ logit-normal(−1.3, 1.3); F = corrupt(y, p) (I2V: frame 0 stays clean, an input only)
    [visual F | (I2V) clean frame | text | ratio(realised kept fraction)] per sample ─ greedy packing (budget) ─▶
    GRN T2X transformer (block-diagonal attention) ─▶ packed loss (per-sample mean CE, √(visual tokens) weights)

A batch of the data module holds one bucket (one T' × h × w), images or videos; `task="auto"` trains images as T2I
and videos as T2V, or as I2V with probability `i2v_probability`. The host plans the packing from integer lengths
(greedy next-fit into rows of `token_budget` tokens; samples over `max_fraction` of it are dropped and counted,
`train/dropped_samples`; `train/attention_fill` is the share of a dense kernel's attention scores that pair tokens
of one sample); corruption, placement and the ratio token run on the device (t2x/bucket_packing.py), and the step
reads nothing back from the device. With token shards that carry text states (tools/tokenize_shards.py
--text-encoder-config) no text encoder runs at all.

Sampling (`sample_labels` / `sample_media`) reuses the refinement sampler through `PromptConditions`
(t2x/conditions.py): cosine schedule, CFG always on (interval [0, 1]) against the empty caption or a negative prompt,
temperature and, optionally, entropy-guided step counts with continuous batching. Region edits (`edit_labels` /
`edit_media`) regenerate a masked region of a source image or clip through the same sampler's `edit`, as C2I does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from grn_lightning.generator import parallelize
from grn_lightning.generator.frozen_tokenizer import freeze
from grn_lightning.generator.module import GeneratorModule
from grn_lightning.generator.refinement import RatioDistribution
from grn_lightning.generator.t2x.bucket_packing import label_dtype, pack_bucket, plan_bucket
from grn_lightning.generator.options import Corruption, EMATracks, Optimization, Parallelism
from grn_lightning.generator.token_cache import MIB, TokenCache
from grn_lightning.generator.t2x.packing import (
    RELEASE_MAX_FRACTION,
    RELEASE_TOKEN_BUDGET,
    PackingOverflowError,
    packed_loss,
)
from grn_lightning.generator.sampling.options import with_overrides
from grn_lightning.generator.sampling.mask_decoding import MaskDecodingSampler
from grn_lightning.generator.sampling.sampler import RefinementSampler
from grn_lightning.generator.t2x.conditions import PromptConditions
from grn_lightning.generator.t2x.model import GRNT2XTransformer
from grn_lightning.generator.t2x.text import UMT5TextEncoder
from grn_lightning.tokenizer.vae import HBQTokenizer

TRAIN_TASKS = ("auto", "t2i", "t2v", "i2v")
I2V_GUIDANCE = ("text_and_frame", "text")


# Text-model sampling defaults (SPEC §6): cosine schedule, CFG always on. The paper gives no T2I/T2V guidance scale
# or temperature; these are starting points to tune, like the C2I values were.
T2X_SAMPLING = {"steps": 50, "schedule": "cosine", "cfg_scale": 4.0, "cfg_interval": (0.0, 1.0), "temperature": 1.0}


def check_i2v_guidance(value: str) -> str:
    if value not in I2V_GUIDANCE:
        raise ValueError(f"i2v_guidance={value!r} is not one of {I2V_GUIDANCE} (model.init_args.i2v_guidance or a "
                         "sampling override)")  # fmt: skip
    return value


@dataclass(frozen=True)
class Packing:
    """Greedy packing of T2X samples into rows of a token budget (t2x/packing.py, SPEC §5).

    Args:
        token_budget: tokens per packed row (release: 40,960 per GPU). The data module is told it and, unless
            data.batch_size is stated, yields enough samples per batch to fill the rows.
        max_fraction: samples longer than this share of the budget are dropped (release: 0.4).
        pad_to_budget: pad every row to exactly `token_budget` (static shapes for compiled kernels).
        pad_multiple: otherwise pad rows to a multiple of this (128 = flex_attention's block size).
        max_rows: packed rows per step at most (None: as many as the batch needs); samples that would open a further
            row are dropped and counted in `train/dropped_samples`. With `pad_to_budget` this fixes the step's shape
            and memory (1 = the release's one 40,960-token row per GPU).
    """

    token_budget: int = RELEASE_TOKEN_BUDGET
    max_fraction: float = RELEASE_MAX_FRACTION
    pad_to_budget: bool = False
    pad_multiple: int = 128
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if self.token_budget < 1 or self.pad_multiple < 1:
            raise ValueError("model.packing.token_budget and model.packing.pad_multiple must be >= 1")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"model.packing.max_rows must be >= 1 or null, got {self.max_rows}")
        if not 0.0 < self.max_fraction <= 1.0:
            raise ValueError(f"model.packing.max_fraction must lie in (0, 1], got {self.max_fraction}")


class T2XModule(GeneratorModule):
    """GRN text-to-image / text-to-video / image-to-video training and sampling.

    Args:
        transformer: the GRN text-to-X transformer (`GRNT2XTransformer`: size "tiny", "small", "GRN0b", "GRN2b",
            "GRN8b"; variant "bit" for the released models; attention "sdpa" or "flex" (sparse BlockMask, compiled
            on CUDA: use it at the release's 40,960-token budget); SPEC §5). Its channels and rounds must be the
            tokenizer's and its text_dim the text encoder's width (checked here).
        tokenizer: the frozen HBQ tokenizer (`grn_lightning.tokenizer.vae.HBQTokenizer`), the source of C, M and the
            strides; needed for media batches, I2V first frames and decoding samples.
        tokenizer_ckpt: weights for `tokenizer` (None keeps its own weights, e.g. random-initialised in tests).
        text_encoder: frozen text encoder with `width`, `max_length` and `encode(captions, tasks) -> list[[L_i,
            width]]` (`grn_lightning.generator.t2x.text.UMT5TextEncoder`; sharded under FSDP2). None trains from
            token shards that carry cached text states (tools/tokenize_shards.py --text-encoder-config); sampling
            needs it.
        sampler: the refinement sampler; None = `RefinementSampler(**T2X_SAMPLING)` (cosine, CFG 4.0 always on,
            τ 1). Chosen per run, not saved in checkpoints (`grn predict --model.init_args.sampler.init_args...`).
        negative_prompt: caption of the unconditional branch of CFG ("" = the empty caption used in training).
        i2v_guidance: what I2V's CFG guides towards: "text" (the unconditional row keeps the request's first frame
            and drops the caption) or "text_and_frame" (it has neither: frames then break up mid-clip in the repro,
            docs/REPRODUCTION.md; conditions.py). Also a sampling override (`sample_media(..., i2v_guidance=...)`).
            Chosen per run like the sampler, not saved in checkpoints.
        task: "auto" (images → T2I, videos → T2V or I2V), or force "t2i" / "t2v" / "i2v".
        i2v_probability: with task "auto", the share of video samples trained as I2V (clean first latent frame).
        token_cache_mib: memory (MiB) for the frozen tokenizer's labels of training media, keyed by pixel content,
            so a sample seen again is not encoded again (generator/token_cache.py); 0 = off. It pays on the CPU when
            epochs repeat unaugmented samples (the Fashion-MNIST recipe); on a GPU, or with token shards, leave it 0.
        corruption: kept-fraction distribution and caption dropout (release T2I/T2V: logit-normal(−1.3, 1.3), 10%).
        packing: token budget and row packing of a step.
        optimization: AdamW (SPEC §3: lr 2e-4, 2e-5 for fine-tuning; betas (0.9, 0.999); weight decay 0.01) and
            the warm-up (50 steps).
        ema: EMA decay (0.999) and the weights sampling uses.
        parallelism: activation checkpointing, torch.compile and FSDP2 options (`configure_model`).
    """

    def __init__(
        self,
        transformer: GRNT2XTransformer,
        tokenizer: HBQTokenizer | None = None,
        tokenizer_ckpt: str | None = None,
        text_encoder: UMT5TextEncoder | None = None,
        sampler: RefinementSampler | MaskDecodingSampler | None = None,
        negative_prompt: str = "",
        i2v_guidance: str = "text",
        task: str = "auto",
        i2v_probability: float = 0.0,
        token_cache_mib: int = 0,
        corruption: Corruption = Corruption(ratio_mu=-1.3, ratio_sigma=1.3),
        packing: Packing = Packing(),
        optimization: Optimization = Optimization(lr=2e-4, betas=(0.9, 0.999), weight_decay=0.01, warmup_steps=50),
        ema: EMATracks = EMATracks(decay=0.999),
        parallelism: Parallelism = Parallelism(),
    ) -> None:
        super().__init__()
        # i2v_guidance is a sampling choice like the sampler: chosen per run, so not saved into checkpoints either
        self.save_hyperparameters(ignore=["transformer", "tokenizer", "text_encoder", "sampler", "i2v_guidance"])
        if task not in TRAIN_TASKS:
            raise ValueError(f"model.task={task!r} is not one of {TRAIN_TASKS}")
        check_i2v_guidance(i2v_guidance)
        if not 0.0 <= i2v_probability <= 1.0:
            raise ValueError(f"model.i2v_probability must lie in [0, 1], got {i2v_probability}")
        if text_encoder is not None and int(text_encoder.width) != transformer.text_dim:
            raise ValueError(
                f"model.transformer.init_args.text_dim={transformer.text_dim} differs from the text encoder's width "
                f"{text_encoder.width}: set text_dim to {text_encoder.width}"
            )
        self._init_generator(transformer, tokenizer, tokenizer_ckpt, sampler or RefinementSampler(**T2X_SAMPLING),
                             corruption, optimization, ema, parallelism)  # fmt: skip
        # clip samples (T2V, I2V) may draw their kept fraction from their own distribution (Corruption.video_ratio_*)
        self.video_ratio = RatioDistribution(corruption.ratio_distribution, *corruption.video_ratio_parameters)
        if token_cache_mib < 0:
            raise ValueError(f"model.token_cache_mib must be >= 0 (0 turns the cache off), got {token_cache_mib}")
        self.task, self.i2v_probability = task, i2v_probability
        self.token_cache = TokenCache(token_cache_mib * MIB) if token_cache_mib else None
        self.negative_prompt, self.packing, self.i2v_guidance = negative_prompt, packing, i2v_guidance
        # Frozen helper held in __dict__, not _modules: no state_dict entries, no FSDP/optimiser involvement.
        object.__setattr__(self, "text_encoder", None if text_encoder is None else freeze(text_encoder))

    def configure_model(self) -> None:
        """The transformer and its EMA as `GeneratorModule` wraps them; under FSDP2 the frozen umT5 is sharded too (an
        XXL encoder on every rank in full would take ≈ 11 GB of each GPU)."""
        sharded_before = parallelize.is_sharded(self.model)
        super().configure_model()
        encoder = self.text_encoder
        if sharded_before or self._device_mesh is None or encoder is None or not hasattr(encoder, "shard"):
            return
        self._frozen_on_device(encoder)
        encoder.shard(parallelize.data_parallel_mesh(self._device_mesh))

    def data_settings(self) -> dict:
        """C, M and the strides, and the tokens a step holds: the data module fills them (unless its batch size is
        stated), each sample counting its visual tokens + the text bound + 1 ratio token."""
        text = getattr(self.text_encoder, "max_length", 0)
        rows = self.packing.max_rows or 1
        return {**super().data_settings(), "token_budget": self.packing.token_budget * rows,
                "sample_extra_tokens": int(text) + 1}  # fmt: skip

    # -- inputs -------------------------------------------------------------------------------------------
    def _require_text_encoder(self) -> nn.Module:
        if self.text_encoder is None:
            raise ValueError("T2X training and sampling need model.text_encoder (see configs/t2i.yaml)")
        return self._frozen_on_device(self.text_encoder)

    @torch.no_grad()
    def index_labels(self, batch: dict) -> torch.Tensor:
        """int [B, C, T', h, w] index labels (token shards: uint8) from a token batch or (frozen tokenizer) a media
        batch."""
        if "tokens" in batch:
            return batch["tokens"]
        tokenizer = self._require_tokenizer("training on media batches")
        if self.token_cache is not None and self.training:
            return self.token_cache.tokenize(batch["pixels"], lambda pixels: tokenizer.tokenize(pixels.float()))
        return tokenizer.tokenize(batch["pixels"].float())

    def _tasks(self, frames: int, count: int, generator: torch.Generator | None) -> list[str]:
        task = self.task
        if task == "t2i" and frames != 1 or task in ("t2v", "i2v") and frames < 2:
            raise ValueError(f"model.task={task!r} cannot train on batches of {frames} latent frame(s)")
        if task != "auto":
            return [task] * count
        if frames == 1:
            return ["t2i"] * count
        i2v = torch.rand(count, generator=generator) < self.i2v_probability
        return ["i2v" if flag else "t2v" for flag in i2v.tolist()]

    def _device_generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        """The device RNG for corruption: None (the default one) in training; for a seeded host generator
        (evaluation, tests) the same generator on the CPU, else a device generator seeded from it."""
        if generator is None or generator.device == self.device:
            return generator
        seed = int(torch.randint(2**62, (1,), generator=generator))  # a host draw: no sync
        return torch.Generator(device=self.device).manual_seed(seed)

    def _texts(self, batch: dict, rows: list[int], tasks: list[str], dropped: list[bool]):
        """(text states [ΣL, C] on the device, per-sample lengths, per-sample first row) for the samples `rows`.

        Token shards with cached text states carry them (`text`, `text_lengths`, and the empty caption as
        `null_text`, `null_text_lengths`, for caption dropout): no text encoder runs. Otherwise the frozen encoder
        encodes the (dropped-out) captions of `tasks` now."""
        if "text" in batch:
            cached = batch.get("text_task") or [None] * len(rows)
            wrong = {t for i, t in zip(rows, tasks) if cached[i] not in (None, t)}
            if wrong:
                raise ValueError(f"the shards' text states were encoded for task {sorted(set(cached))}, the step "
                                 f"trains {sorted(wrong)}: re-encode them with tools/tokenize_shards.py --text-task")  # fmt: skip
            lengths, null_lengths = list(batch["text_lengths"]), list(batch["null_text_lengths"])
            starts = [sum(lengths[:i]) for i in range(len(lengths))]
            null_starts = [sum(lengths) + sum(null_lengths[:i]) for i in range(len(null_lengths))]
            texts = torch.cat([batch["text"], batch["null_text"]])
            chosen = [(null_starts[i], null_lengths[i]) if d else (starts[i], lengths[i]) for i, d in zip(rows, dropped)]
            return texts, [n for _, n in chosen], [s for s, _ in chosen]
        captions = ["" if d else batch["caption"][i] for i, d in zip(rows, dropped)]
        states = self._require_text_encoder().encode(captions, tasks)
        lengths = [int(t.shape[0]) for t in states]
        return torch.cat(states).to(self.device), lengths, None

    def packed_batch(self, batch: dict, generator: torch.Generator | None = None, dropout: bool = True):
        """Corrupt, encode and pack one data-module batch (one bucket): the `PackedBatch` on this module's device.

        The host decides from integer lengths alone (task and caption-dropout draws, the packing plan of
        `bucket_packing.plan_bucket`); corruption, placement and the ratio token run on the device with its RNG
        (`pack_bucket`), with no host sync. `generator`: a CPU generator that makes every draw reproducible
        (evaluation, tests); None uses the global generators (training)."""
        pk = self.packing
        started = time.perf_counter()
        labels = self.index_labels(batch)
        count_all, _, frames, h, w = labels.shape
        # Training streams never pad, so every row is used; evaluation pads with rows marked invalid, and reading
        # that mask back is the one sync of an evaluation step.
        valid = batch.get("valid")
        if valid is None or self.training and valid.device.type != "cpu":
            rows = list(range(count_all))
        else:
            rows = torch.nonzero(valid.cpu()).flatten().tolist()
        tasks = self._tasks(frames, len(rows), generator)
        dropped = [False] * len(rows)
        if dropout and self.corruption.condition_dropout > 0:
            dropped = (torch.rand(len(rows), generator=generator) < self.corruption.condition_dropout).tolist()
        host_seconds = time.perf_counter() - started
        texts, text_lengths, text_starts = self._texts(batch, rows, tasks, dropped)
        started = time.perf_counter()
        # the bucket's template ratio travels with each sample (SPEC §5); None snaps the grid to its template
        ratios = batch.get("aspect_ratio") or [None] * count_all
        plan = plan_bucket((frames, h, w), text_lengths, [t == "i2v" for t in tasks], [ratios[i] for i in rows],
                           pk.token_budget, pk.max_fraction, pk.pad_to_budget, pk.pad_multiple, pk.max_rows,
                           text_starts=text_starts, sources=rows)  # fmt: skip
        self.last_host_seconds = host_seconds + time.perf_counter() - started  # benchmarks/t2x_host_step.py
        device_generator = self._device_generator(generator)
        tokens = self.layout.to_tokens(labels.to(self.device)).to(label_dtype(self.model.classes))
        ratio = self.video_ratio if frames > 1 else self.ratio  # a bucket is all images or all clips
        keep_probability = ratio.sample(count_all, device=self.device, generator=device_generator)
        packed = pack_bucket(plan.to(self.device), tokens, texts, keep_probability, self.model.classes, device_generator)
        # host-side facts for logging (no device read): the batch's latent frames, I2V share and row fill
        packed.frames, packed.i2v_fraction = frames, tasks.count("i2v") / max(1, len(tasks))
        packed.row_fill, packed.attention_fill = plan.row_fill, plan.attention_fill
        return packed

    # -- training -----------------------------------------------------------------------------------------
    def _loss(self, batch: dict, generator: torch.Generator | None, dropout: bool, net: nn.Module):
        try:
            packed = self.packed_batch(batch, generator, dropout)
        except PackingOverflowError as err:
            raise ValueError(
                f"{err}: raise model.packing.token_budget or lower the data resolution / frame count"
            ) from err
        logits = net(**packed.model_inputs())
        result = packed_loss(logits, packed.labels, packed.loss_mask, packed.segment_ids, len(packed.sample_indices))
        return result.loss, packed

    def _log_host(self, name: str, value: float, batch_size: int) -> None:
        """Log a host number without a blocking host→device copy (a pageable copy waits for the GPU queue)."""
        tensor = torch.tensor(float(value))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        self.log(name, tensor, batch_size=batch_size)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, packed = self._loss(batch, None, True, self.model)
        samples = len(packed.sample_indices)
        self.log("train/loss", loss, prog_bar=True, batch_size=samples)
        self._log_host("train/dropped_samples", packed.num_dropped, samples)
        self._log_host("train/row_fill", packed.row_fill, samples)
        # low with attention "sdpa" and rows of many short samples: lower model.packing.token_budget or use "flex"
        self._log_host("train/attention_fill", packed.attention_fill, samples)
        # the batch's latent frames (1 = images) and I2V share: what the mixed image/video stream actually fed
        self._log_host("train/latent_frames", packed.frames, samples)
        self._log_host("train/i2v_fraction", packed.i2v_fraction, samples)
        if self.token_cache is not None:  # share of training samples answered from memory so far
            cache = self.token_cache
            self._log_host("train/token_cache_hit_rate", cache.hits / max(1, cache.hits + cache.misses), samples)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        # kind "mixed" validates on an image and a video loader: Lightning suffixes the names with the loader index
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    def _evaluation_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        # Fixed draws per batch, so the loss of the sampling weights is comparable across runs. A batch of padding
        # rows only (equal work on every rank) still runs a forward on its first row and logs nothing.
        valid = batch["valid"].bool()
        count = int(valid.sum())
        sub = dict(batch, valid=valid if count else torch.arange(len(valid), device=valid.device) == 0)
        generator = torch.Generator().manual_seed(10_000 + batch_idx)
        loss, _ = self._loss(sub, generator, False, self._sampling_model())
        if count:
            self.log(f"{stage}/loss", loss, batch_size=count, sync_dist=True)

    # -- sampling -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_labels(
        self, captions: list[str], grid: tuple[int, int, int], task: str = "t2i", seeds: list[int] | None = None,
        first_frame_labels: torch.Tensor | None = None, **overrides,
    ):  # fmt: skip
        """Refinement-sample labels [B, T'·h·w, G] for `captions` on the latent `grid` (T', h, w); returns the
        sampler's `SampleResult`. I2V: `first_frame_labels` [B, h, w, G] are the given frame; `grid` counts the
        frames to generate after it."""
        if task not in ("t2i", "t2v", "i2v"):
            raise ValueError(f"task={task!r} is not one of ('t2i', 't2v', 'i2v')")
        if (task == "i2v") != (first_frame_labels is not None):
            raise ValueError("I2V sampling needs first_frame_labels, and only I2V takes them")
        guidance = check_i2v_guidance(overrides.pop("i2v_guidance", self.i2v_guidance))
        sampler = with_overrides(self.sampler, overrides)
        texts = self._require_text_encoder().encode([*captions, self.negative_prompt], task)
        weights = self._sampling_model()
        model = PromptConditions(weights, texts, grid, clean_first=first_frame_labels,
                                 guide_first_frame=guidance == "text_and_frame")  # fmt: skip
        seeds = list(range(len(captions))) if seeds is None else seeds
        ids = torch.arange(len(captions), device=self.device)
        with self._autocast():
            return sampler.sample(model, ids, seeds, lockstep=self._lockstep(weights))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, T'·h·w, G] labels → media [B, 3, T, H, W] in [-1, 1] through the frozen tokenizer."""
        tokenizer = self._require_tokenizer("decoding samples")
        return tokenizer.detokenize(self.layout.to_index_labels(tokens.to(self.device), grid)).float().clamp(-1, 1)

    @torch.no_grad()
    def reconstruct_media(self, pixels: torch.Tensor) -> torch.Tensor:
        """Real media [B, 3, T, H, W] → encode → labels → decode, as samples are: [B, 3, T, H, W] in [-1, 1]."""
        index = self.index_labels({"pixels": pixels.to(self.device)})
        grid = tuple(index.shape[2:])
        return self.decode(self.layout.to_tokens(index).reshape(len(index), -1, self.model.groups), grid)

    @torch.no_grad()
    def sample_media(
        self, captions: list[str], height: int, width: int, frames: int = 1, task: str | None = None,
        first_frame: torch.Tensor | None = None, seeds: list[int] | None = None, **overrides,
    ) -> torch.Tensor:  # fmt: skip
        """Images (frames = 1) or videos [B, 3, frames, height, width] in [-1, 1] for `captions`.

        task: None → "t2i" for one frame, "i2v" when `first_frame` [B, 3, 1, H, W] is given, else "t2v"."""
        tokenizer = self._require_tokenizer("sampling media")
        _, latent_frames, h, w = tokenizer.vae.latent_shape(frames, height, width)
        task = task or ("t2i" if frames == 1 else "i2v" if first_frame is not None else "t2v")
        first = None
        if task == "i2v":
            if first_frame is None:
                raise ValueError("task='i2v' needs first_frame [B, 3, 1, H, W] pixels")
            first_index = tokenizer.tokenize(first_frame.to(self.device).float())  # [B, C, 1, h, w]
            first = self.layout.to_tokens(first_index).view(len(captions), h, w, -1)
            latent_frames -= 1
        result = self.sample_labels(captions, (latent_frames, h, w), task, seeds, first, **overrides)
        labels = result.labels.view(len(captions), latent_frames, h, w, -1)
        if first is not None:
            labels = torch.cat([first[:, None].to(labels.device), labels], dim=1)
        grid = (labels.shape[1], h, w)
        return self.decode(labels.reshape(len(captions), -1, labels.shape[-1]), grid)

    @torch.no_grad()
    def edit_labels(
        self, captions: list[str], source_labels: torch.Tensor, region: torch.Tensor, grid: tuple[int, int, int],
        task: str = "t2i", seeds: list[int] | None = None, rounds: int = 1, **overrides,
    ):  # fmt: skip
        """Region refinement ("sketch and revise", SPEC §6) through the shared `RefinementSampler.edit`: regenerate the
        tokens of `source_labels` [B, T'·h·w, G] where `region` [B, T'·h·w] is True, for `captions`; every other token
        stays the source's, bit for bit. Returns the sampler's `SampleResult`."""
        if task not in ("t2i", "t2v"):
            raise ValueError(f"region edits take task 't2i' or 't2v', got {task!r} (I2V is the first-frame case)")
        sampler = with_overrides(self.sampler, overrides)
        texts = self._require_text_encoder().encode([*captions, self.negative_prompt], task)
        weights = self._sampling_model()
        model = PromptConditions(weights, texts, grid)
        seeds = list(range(len(captions))) if seeds is None else seeds
        ids = torch.arange(len(captions), device=self.device)
        with self._autocast():
            return sampler.edit(model, source_labels.to(self.device), region.to(self.device), ids, seeds, rounds,
                                lockstep=self._lockstep(weights))  # fmt: skip

    @torch.no_grad()
    def edit_media(
        self, captions: list[str], source: torch.Tensor, mask: torch.Tensor, seeds: list[int] | None = None,
        rounds: int = 1, **overrides,
    ) -> torch.Tensor:  # fmt: skip
        """Regenerate the masked region of images or clips `source` [B, 3, T, H, W] in [-1, 1] for `captions`;
        `mask` bool [B, H, W] (True = regenerate) marks the same pixels in every frame. A token is regenerated when
        any pixel of its stride × stride patch is masked. Returns media like `sample_media`."""
        tokenizer = self._require_tokenizer("region edits")
        index = tokenizer.tokenize(source.to(self.device).float())  # [B, C, T', h, w]
        t, h, w = index.shape[2:]
        if mask.shape != (source.shape[0], *source.shape[-2:]):
            raise ValueError(f"mask must be [B, H, W] = {(source.shape[0], *source.shape[-2:])}, got {tuple(mask.shape)}")
        patch = (source.shape[-2] // h, source.shape[-1] // w)
        cells = torch.nn.functional.max_pool2d(mask.to(self.device)[:, None].float(), patch, patch)[:, 0] > 0
        region = cells[:, None].expand(-1, t, -1, -1).reshape(len(captions), -1)
        task = "t2i" if source.shape[2] == 1 else "t2v"
        result = self.edit_labels(captions, self.layout.to_tokens(index), region, (t, h, w), task, seeds, rounds,
                                  **overrides)  # fmt: skip
        return self.decode(result.labels, (t, h, w))

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Requests from `T2XPromptRequests` (t2x/predict.py): samples for captions (I2V with `first_frame`), or region
        edits of a `source` image / clip under `mask`; `SampleWriter` (generator/writers.py) writes the returned media
        as PNGs / MP4s and a grid."""
        if "source" in batch:
            media = self.edit_media(batch["captions"], batch["source"], batch["mask"], seeds=batch["seeds"],
                                    rounds=int(batch["rounds"]))  # fmt: skip
            return {"media": media, "names": batch["names"]}
        media = self.sample_media(
            batch["captions"], batch["height"], batch["width"], batch["frames"], first_frame=batch.get("first_frame"),
            seeds=batch["seeds"],
        )  # fmt: skip
        return {"media": media, "names": batch["names"]}
