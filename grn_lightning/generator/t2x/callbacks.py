"""`T2XSampleLogger`: fixed-prompt samples of a `T2XModule` after validation, written to TensorBoard.

Images go in as one grid; videos as a frame grid (one row per prompt, one column per frame) and as a video (one
tile per prompt; eval/video_summary.py, no moviepy needed). Sampling runs on every rank, since sharded (FSDP) weights
gather collectively in each forward; only rank 0 writes. Composed configs keep one logger per stage (t2i.yaml's
images, t2v.yaml's clips: `callbacks+:`), told apart by `name`.
"""

from __future__ import annotations

import lightning as L
import torch

from grn_lightning.eval.video_summary import log_video


class T2XSampleLogger(L.Callback):
    """Sample `prompts` with the module's sampling weights every `every_n_val_runs` validation runs.

    Args:
        prompts: captions to sample (one image or clip each).
        height: output height in pixels (a multiple of the tokenizer's spatial stride, 16).
        width: output width in pixels.
        frames: 1 for images (T2I), else 1 + 4k frames (T2V).
        every_n_val_runs: sample after every n-th validation run (sanity checks excluded).
        seed: seed of the first prompt's sample (prompt i uses seed + i), fixed so runs are comparable.
        sampling: overrides of the module's sampling defaults (e.g. {"steps": 25}).
        fps: frame rate of the logged video.
        name: TensorBoard tags `samples/<name>` (grid) and `samples/<name>_video` (clips), one per logger.
    """

    def __init__(
        self,
        prompts: list[str],
        height: int = 256,
        width: int = 256,
        frames: int = 1,
        every_n_val_runs: int = 1,
        seed: int = 0,
        sampling: dict | None = None,
        fps: int = 16,
        name: str = "t2x",
    ) -> None:
        if not prompts:
            raise ValueError("T2XSampleLogger needs at least one prompt")
        if every_n_val_runs < 1 or frames < 1 or (frames - 1) % 4:
            raise ValueError(f"every_n_val_runs must be >= 1 and frames 1 + 4k, got {every_n_val_runs}, {frames}")
        self.prompts, self.height, self.width, self.frames = list(prompts), height, width, frames
        self.every, self.seed, self.sampling, self.fps = every_n_val_runs, seed, dict(sampling or {}), fps
        self.name = name
        self.runs = 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.runs += 1
        if self.runs % self.every:
            return
        seeds = [self.seed + i for i in range(len(self.prompts))]
        media = pl_module.sample_media(self.prompts, self.height, self.width, self.frames, seeds=seeds, **self.sampling)
        if trainer.is_global_zero:
            self.write(trainer, media)

    def write(self, trainer: L.Trainer, media: torch.Tensor) -> None:
        """media [B, 3, T, H, W] in [-1, 1] → TensorBoard (frame grid, and a video when T > 1)."""
        from torchvision.utils import make_grid

        frames = ((media.float().clamp(-1, 1) + 1) / 2).cpu()
        tiles = frames.permute(0, 2, 1, 3, 4).flatten(0, 1)  # prompt-major, then frame: one row per prompt
        grid = make_grid(tiles, nrow=frames.shape[2], padding=2)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if not hasattr(experiment, "add_image"):
                continue
            experiment.add_image(f"samples/{self.name}", grid, global_step=trainer.global_step)
            if frames.shape[2] > 1 and hasattr(experiment, "_get_file_writer"):  # a TensorBoard SummaryWriter
                log_video(experiment, f"samples/{self.name}_video", frames.permute(0, 2, 1, 3, 4), trainer.global_step,
                          self.fps)  # fmt: skip

    @property
    def state_key(self) -> str:
        # One checkpoint state per logger of a composed run (t2i.yaml's and t2v.yaml's); the default name keeps the
        # plain class key, so single-logger checkpoints written before `name` existed still restore.
        return super().state_key if self.name == "t2x" else self._generate_state_key(name=self.name)

    def state_dict(self) -> dict:
        return {"runs": self.runs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.runs = int(state_dict.get("runs", 0))
