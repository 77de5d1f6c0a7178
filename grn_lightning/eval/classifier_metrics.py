"""`ClassifierSampleMetrics`: a validation/test callback that judges a generator's samples with a dataset classifier.

For small labelled datasets (Fashion-MNIST, docs/REPRODUCTION.md) where Inception-based FID says little:
- c2i: class-balanced samples of a C2I module → requested-class accuracy, Fréchet distance in the classifier's
  features against real test images, mean refinement steps and forward rows (adaptive-steps ablation);
- t2i: one caption per class ("a photo of a {class}") → caption-class accuracy and Fréchet distance;
- t2v: "a {class} moving {direction}" for every class × direction → class consistency across frames,
  frame class accuracy, motion-direction accuracy (centroid track);
- i2v: first frames of real test clips with their captions → keeps-the-first-frame's-class, direction accuracy.
Each entry of `sweep` (sampling overrides) is evaluated in turn, so one `grn test` run fills an ablation table; an
entry that samples exactly as an earlier one (same effective sampler options) reuses its scores (`same_as_entry`).
Results go to the loggers (the first sweep entry under `{stage}/{prefix}_*`), to `output_json` (every entry)
and, for the first entry, to a TensorBoard sample grid (per-class rows, or one frame strip per clip).
"""

from __future__ import annotations

import json
import os
import time

import lightning.pytorch as pl
import numpy as np
import torch

from grn_lightning.data.fashion_mnist import CLASS_NAMES, DIRECTIONS, caption_class, caption_direction, clip_caption, image_caption
from grn_lightning.eval.classifier import load_classifier
from grn_lightning.eval.real_media import iterate_real
from grn_lightning.eval.sample_judges import SampleJudge
from grn_lightning.generator.sampling.options import sampler_options, with_overrides

TASKS = ("c2i", "t2i", "t2v", "i2v")


def sampling_key(pl_module: pl.LightningModule, overrides: dict) -> str | None:
    """A string equal for sweep entries that sample alike: the options of the sampler the overrides build over the
    module's `sampler`, plus the overrides the sampler does not take (e.g. `i2v_guidance`). {} and {"steps": 50} are
    one setting when the config samples 50 steps. None when the module has no `sampler` (no entry is then reused)."""
    sampler = getattr(pl_module, "sampler", None)
    if sampler is None:
        return None
    known = set(sampler_options(sampler)) | {"decoding"}
    built = with_overrides(sampler, {k: v for k, v in overrides.items() if k in known})
    rest = sorted((k, repr(v)) for k, v in overrides.items() if k not in known)
    return repr((type(built).__name__, sorted((k, repr(v)) for k, v in sampler_options(built).items()), rest))


class ClassifierSampleMetrics(pl.Callback):
    """Judge generated samples with the classifier of `tools/train_classifier.py` after validation and on test.

    Args:
        classifier: path of the classifier checkpoint.
        task: "c2i", "t2i", "t2v" or "i2v".
        samples_per_condition: samples per class (c2i, t2i) or per class × direction (t2v); i2v: total clips.
        batch_size: samples per sampling call.
        reference_shards: real test image shards (Fréchet reference, c2i/t2i) or test clip shards (i2v first frames).
        reference_limit: at most this many reference records.
        resolution: side of the generated images / frames.
        frames: frames of generated clips (t2v, i2v).
        sweep: sampling overrides to evaluate, one result per entry ([{}]: the module's defaults only).
        output_json: write {"task", "stage", "step", "results": [...]} here (None: loggers only).
        grid_dir: also save the first entry's sample grid as PNG into this folder.
        every_n_val_runs: evaluate on validation runs N, 2N, ... (sanity checks excluded); 0: test only.
        reconstruction_ceiling: c2i, t2i or i2v: also judge the real reference media themselves and the module's
            tokenizer reconstructions of them, scored like samples (prefixes "real_" and "reconstruction_": class
            accuracy and Fréchet distance of images; for i2v the reference clips with their first frame skipped).
            "real_keeps_first_frame_class" is the best any I2V model can score with this judge (the judge's own
            cap), "reconstruction_keeps_first_frame_class" the best one decoded by this tokenizer can.
        seed: base seed (batch j uses seed + j).
        log_prefix: metric name prefix.
    """

    def __init__(
        self,
        classifier: str,
        task: str = "c2i",
        samples_per_condition: int = 10,
        batch_size: int = 50,
        reference_shards: str | None = None,
        reference_limit: int | None = 10000,
        resolution: int = 32,
        frames: int = 17,
        sweep: list[dict] | None = None,
        output_json: str | None = None,
        grid_dir: str | None = None,
        every_n_val_runs: int = 1,
        seed: int = 0,
        log_prefix: str = "judge",
        reconstruction_ceiling: bool = False,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not one of {TASKS}")
        if samples_per_condition < 1 or batch_size < 1 or every_n_val_runs < 0:
            raise ValueError("samples_per_condition and batch_size must be >= 1, every_n_val_runs >= 0")
        if task == "i2v" and reference_shards is None:
            raise ValueError("task='i2v' needs reference_shards: real test clips whose first frames condition I2V")
        self.classifier_path, self.task, self.per_condition, self.batch_size = classifier, task, samples_per_condition, batch_size
        self.reference_shards, self.reference_limit, self.resolution, self.frames = reference_shards, reference_limit, resolution, frames
        self.sweep = [dict(entry) for entry in (sweep or [{}])]
        self.output_json, self.grid_dir, self.every, self.seed, self.prefix = output_json, grid_dir, every_n_val_runs, seed, log_prefix
        self.reconstruction_ceiling = reconstruction_ceiling
        if reconstruction_ceiling and (task == "t2v" or reference_shards is None):
            raise ValueError("reconstruction_ceiling needs real reference media to reconstruct: task 'c2i', 't2i' or "
                             "'i2v' with reference_shards (t2v samples have no real counterpart)")
        self._judge: SampleJudge | None = None
        self._real_image_scores: dict = {}  # c2i/t2i: the judge's scores of the reference images (_make_judge)
        self.runs = 0

    # -- setup -----------------------------------------------------------------------------------------------
    def _make_judge(self, device: torch.device) -> SampleJudge:
        if self._judge is None:
            classifier, _ = load_classifier(self.classifier_path, device)
            reference = None
            if self.reference_shards and self.task in ("c2i", "t2i"):
                # one pass over the real images gives the Fréchet reference and the judge's scores of them
                real = SampleJudge(classifier)
                for batch in iterate_real(self.reference_shards, "image", self.resolution, limit=self.reference_limit):
                    real.update_images(batch["pixels"], batch["cls"])
                reference = np.concatenate(real.features)
                self._real_image_scores = real.compute()
            self._judge = SampleJudge(classifier, reference)
        return self._judge

    def requests(self) -> list[dict]:
        """The conditions to sample: [{"cls", "caption", "direction"}] (i2v requests come from the reference clips)."""
        if self.task in ("c2i", "t2i"):
            return [{"cls": c, "caption": image_caption(c)} for c in range(len(CLASS_NAMES)) for _ in range(self.per_condition)]
        return [
            {"cls": c, "caption": clip_caption(c, d), "direction": d}
            for c in range(len(CLASS_NAMES)) for d in DIRECTIONS for _ in range(self.per_condition)
        ]  # fmt: skip

    def _i2v_requests(self) -> list[dict]:
        out = []
        for batch in iterate_real(self.reference_shards, "video", self.resolution, self.frames, limit=self.per_condition):
            for i, caption in enumerate(batch["caption"]):
                out.append({"cls": caption_class(caption), "caption": caption, "direction": caption_direction(caption),
                            "first_frame": batch["pixels"][i, :, :1]})  # fmt: skip
        return out

    # -- generation --------------------------------------------------------------------------------------------
    def _generate(self, pl_module, chunk: list[dict], number: int, overrides: dict) -> tuple[torch.Tensor, dict]:
        seeds = [self.seed + number * self.batch_size + i for i in range(len(chunk))]
        if self.task == "c2i":
            generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + number)
            ids = torch.tensor([r["cls"] for r in chunk], device=pl_module.device)
            result = pl_module.sample_labels(ids, generator, **overrides)
            stats = {"steps": result.steps.float().sum().item(), "rows": result.rows_forwarded, "calls": result.forward_calls}
            return pl_module.decode(result.labels), stats
        captions = [r["caption"] for r in chunk]
        frames = 1 if self.task == "t2i" else self.frames
        first = torch.stack([r["first_frame"] for r in chunk]).to(pl_module.device) if self.task == "i2v" else None
        media = pl_module.sample_media(captions, self.resolution, self.resolution, frames, first_frame=first, seeds=seeds, **overrides)
        return media, {}

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> list[dict]:
        judge = self._make_judge(pl_module.device)
        requests = self._i2v_requests() if self.task == "i2v" else self.requests()
        was_training = pl_module.training
        pl_module.eval()
        results, done = [], {}
        for position, overrides in enumerate(self.sweep):
            key = sampling_key(pl_module, overrides)
            if key is not None and key in done:  # same sampler and seeds as an earlier entry: same samples, same scores
                results.append({**results[done[key]], "sampling": overrides, "same_as_entry": done[key]})
                continue
            done.setdefault(key, position)
            judge.reset()
            started, totals, kept = time.time(), {"steps": 0.0, "rows": 0, "calls": 0}, []
            with torch.no_grad():
                for number, start in enumerate(range(0, len(requests), self.batch_size)):
                    chunk = requests[start : start + self.batch_size]
                    media, stats = self._generate(pl_module, chunk, number, overrides)
                    for key, value in stats.items():
                        totals[key] += value
                    classes = torch.tensor([r["cls"] for r in chunk])
                    if self.task in ("c2i", "t2i"):
                        judge.update_images(media, classes)
                    else:
                        judge.update_clips(media, classes, [r["direction"] for r in chunk], skip_first=self.task == "i2v")
                    if position == 0:
                        kept.append(media.float().cpu())
            scores = judge.compute()
            if self.task == "c2i":
                scores.update(mean_steps=totals["steps"] / len(requests), rows_forwarded=totals["rows"], forward_calls=totals["calls"])
            results.append({"sampling": overrides, **scores, "seconds": round(time.time() - started, 2)})
            if position == 0:
                self._log_grid(trainer, stage, torch.cat(kept), requests)
        if self.reconstruction_ceiling:
            results[0].update(self.real_scores(pl_module.device))
            results[0].update(self.reconstruction_scores(pl_module))
        pl_module.train(was_training)
        for key, value in results[0].items():
            if isinstance(value, (int, float)) and key != "seconds":
                pl_module.log(f"{stage}/{self.prefix}_{key}", float(value), rank_zero_only=True)
        if self.output_json and trainer.is_global_zero:
            os.makedirs(os.path.dirname(os.path.abspath(self.output_json)), exist_ok=True)
            with open(self.output_json, "w") as handle:
                json.dump({"task": self.task, "stage": stage, "step": trainer.global_step, "results": results}, handle, indent=1)
        return results

    def real_scores(self, device: torch.device | str = "cpu") -> dict:
        """Judge the real reference media as they are, exactly as samples are judged (the judge's own ceiling: what
        real data scores); every score prefixed "real_". Images (c2i, t2i) are the Fréchet reference itself, judged
        in the same pass that reads them for it (so no Fréchet distance of their own, 0 by construction)."""
        if self.task == "i2v":
            return self._reference_scores(device, lambda media: media, "real_")
        self._make_judge(device)
        return {f"real_{key}": value for key, value in self._real_image_scores.items()}

    def reconstruction_scores(self, pl_module) -> dict:
        """Judge the tokenizer's reconstructions of the real reference media (`pl_module.reconstruct_media`: encode →
        labels → decode, as samples are) exactly as samples are judged; every score prefixed "reconstruction_"."""
        return self._reference_scores(pl_module.device, pl_module.reconstruct_media, "reconstruction_")

    @torch.no_grad()
    def _reference_scores(self, device, transform, prefix: str) -> dict:
        judge = self._make_judge(device)
        judge.reset()
        if self.task == "i2v":  # the clips whose first frames condition I2V, judged on the frames after the first
            for batch in iterate_real(self.reference_shards, "video", self.resolution, self.frames, batch_size=self.batch_size,
                                      limit=self.per_condition):  # fmt: skip
                classes = torch.tensor([caption_class(c) for c in batch["caption"]])  # as _i2v_requests asks for them
                directions = [caption_direction(c) for c in batch["caption"]]
                judge.update_clips(transform(batch["pixels"]), classes, directions, skip_first=True)
        else:
            for batch in iterate_real(self.reference_shards, "image", self.resolution, batch_size=self.batch_size,
                                      limit=self.reference_limit):  # fmt: skip
                judge.update_images(transform(batch["pixels"]), batch["cls"])
        scores = judge.compute()
        judge.reset()
        return {f"{prefix}{key}": value for key, value in scores.items()}

    def _log_grid(self, trainer: pl.Trainer, stage: str, media: torch.Tensor, requests: list[dict]) -> None:
        """Images: one row per class. Clips: one row per clip (first 10 clips), one column per frame."""
        from torchvision.utils import make_grid, save_image

        if not trainer.is_global_zero:
            return
        media = (media.clamp(-1, 1) + 1) / 2
        if media.ndim == 4 or media.shape[2] == 1:
            images = media if media.ndim == 4 else media[:, :, 0]
            grid = make_grid(images, nrow=self.per_condition if self.task != "i2v" else 10, padding=1)
        else:
            clips = media[:: max(1, len(media) // 10)][:10]
            grid = make_grid(clips.permute(0, 2, 1, 3, 4).flatten(0, 1), nrow=clips.shape[2], padding=1)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(f"{stage}/{self.prefix}_samples", grid, global_step=trainer.global_step)
        if self.grid_dir:
            os.makedirs(self.grid_dir, exist_ok=True)
            save_image(grid, os.path.join(self.grid_dir, f"{self.task}_{stage}_step{trainer.global_step}.png"))

    # -- hooks -------------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.every == 0:
            return
        self.runs += 1
        if self.runs % self.every == 0:
            self.evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.evaluate(trainer, pl_module, "test")

    @property
    def state_key(self) -> str:
        # several instances (t2i, t2v, i2v) may sit in one trainer; each keeps its own run count in checkpoints
        return self._generate_state_key(task=self.task, log_prefix=self.prefix)

    def state_dict(self) -> dict:
        return {"runs": self.runs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.runs = int(state_dict.get("runs", 0))
