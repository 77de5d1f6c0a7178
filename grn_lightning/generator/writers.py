"""`SampleWriter`: the `grn predict` writer of both generator stages (PNGs, a grid, MP4s for clips), and
`request_loader`, the loader that hands their prediction requests over.

A prediction is a dict with `names` and either `images` [B, 3, H, W] (C2I) or `media` [B, 3, T, H, W] (T2I/T2V/I2V),
values in [-1, 1]. Every sample becomes `output_dir/<name>.png` (a clip: its first frame) and, for clips,
`<name>.mp4`; the first `grid_size` samples also go into `output_dir/grid.png` (rank 0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter


def _pass_through(batch):  # module level: a lambda cannot be pickled into a worker process
    return batch


def request_loader(requests: list[dict]) -> torch.utils.data.DataLoader:
    """One prepared request dict per predict batch, untouched (no collation: the requests are already batches)."""
    return torch.utils.data.DataLoader(requests, batch_size=None, collate_fn=_pass_through)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3] on the CPU."""
    return torch.round((images.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def write_mp4(path: Path, clip: torch.Tensor, fps: int) -> None:
    """clip [3, T, H, W] in [-1, 1] → an MP4 (H.264 where the installed FFmpeg has an encoder, else MPEG-4 part 2)."""
    import av

    frames = to_uint8(clip.permute(1, 0, 2, 3)).numpy()  # [T, H, W, 3]
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


class SampleWriter(BasePredictionWriter):
    """Writes predicted images and clips (see the module doc).

    Args:
        output_dir: directory for the files (created).
        grid_size: samples in the grid (0: no grid).
        fps: frame rate of the MP4s (the clips' training rate, 16).
    """

    def __init__(self, output_dir: str = "samples", grid_size: int = 64, fps: int = 16) -> None:
        super().__init__(write_interval="batch")
        if grid_size < 0:
            raise ValueError(f"grid_size must be >= 0, got {grid_size}")
        if fps < 1:
            raise ValueError(f"fps must be >= 1, got {fps}")
        self.output_dir, self.grid_size, self.fps = Path(output_dir), grid_size, fps
        self._grid: list[torch.Tensor] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        from PIL import Image

        self.output_dir.mkdir(parents=True, exist_ok=True)
        media = prediction["media"] if "media" in prediction else prediction["images"][:, :, None]
        first_frames = media[:, :, 0]
        for array, name in zip(to_uint8(first_frames).numpy(), prediction["names"]):
            Image.fromarray(array).save(self.output_dir / f"{name}.png")
        if media.shape[2] > 1:
            for clip, name in zip(media, prediction["names"]):
                write_mp4(self.output_dir / f"{name}.mp4", clip, self.fps)
        room = self.grid_size - sum(len(g) for g in self._grid)
        if room > 0:
            self._grid.append(first_frames[:room].float().cpu())

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if not self._grid or not trainer.is_global_zero:
            return
        from PIL import Image
        from torchvision.utils import make_grid

        images = torch.cat(self._grid)
        grid = make_grid((images.clamp(-1, 1) + 1) / 2, nrow=max(1, int(len(images) ** 0.5)))
        array = torch.round(grid * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(self.output_dir / "grid.png")
        self._grid = []
