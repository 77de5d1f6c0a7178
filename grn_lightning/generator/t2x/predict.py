"""`grn predict` for T2I / T2V / I2V: prompt requests (a data module) written as PNGs / MP4s by the shared
`SampleWriter` (generator/writers.py).

    grn predict --config configs/t2i.yaml --config configs/t2x_predict.yaml --ckpt_path run/last.ckpt \
        --data.prompts "[a red fox in the snow, a bowl of ramen]" --data.samples_per_prompt 4

Every prompt gets `samples_per_prompt` samples with seeds seed + i (i counts all samples of the run), so one sample
reproduces alone. `first_frame` (an image file) turns clip requests into I2V: the picture is cropped to the output
size like training frames, encoded, and generation continues from it. `source` (an image or a clip) with `mask` (a PNG,
white = regenerate) turns every request into a region edit: the masked region is regenerated for the prompt and
every other token stays the source's ("sketch and revise", SPEC §6):

    grn predict ... --data.prompts "[a red umbrella]" --data.source photo.jpg --data.mask umbrella_mask.png
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from grn_lightning.data.tokens import TokenGeometry
from grn_lightning.generator.writers import request_loader

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")


class T2XPromptRequests(L.LightningDataModule):
    """Prompt requests for `T2XModule.predict_step`.

    Args:
        prompts: captions to sample.
        prompts_file: a text file with one caption per line, added after `prompts` (blank lines skipped).
        samples_per_prompt: samples of every prompt.
        batch_size: samples per `predict_step`.
        seed: seed of the first sample; sample i uses seed + i.
        height: output height in pixels (a multiple of the tokenizer's stride, checked when the module connects).
        width: output width in pixels.
        frames: 1 (images) or 1 + 4k frames (clips).
        first_frame: image file: clips continue from it (I2V); None samples T2I / T2V.
        source: image file (frames = 1) or clip file (.mp4, .webm, .mov, .mkv, .avi; `frames` frames at 16 fps) whose
            masked region every request regenerates; resized to cover the output and centre-cropped like training
            media. None samples from scratch.
        mask: PNG of the region to regenerate (white = regenerate, black = keep), resized and cropped like `source`;
            one mask for every frame. A token is regenerated when any pixel of its patch is white.
        edit_rounds: refinement rounds of an edit (rounds 2.. revise the previous round from kept fraction 0.5).

    Sampling options are the module's sampler (`--model.init_args.sampler.init_args.cfg_scale 5.0`); nothing about
    the model travels in the request batches.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        prompts_file: str | None = None,
        samples_per_prompt: int = 1,
        batch_size: int = 8,
        seed: int = 0,
        height: int = 256,
        width: int = 256,
        frames: int = 1,
        first_frame: str | None = None,
        source: str | None = None,
        mask: str | None = None,
        edit_rounds: int = 1,
    ) -> None:
        super().__init__()
        self.prompts = list(prompts or [])
        if prompts_file is not None:
            if not Path(prompts_file).is_file():
                raise FileNotFoundError(f"data.prompts_file: {prompts_file} does not exist")
            self.prompts += [line.strip() for line in Path(prompts_file).read_text().splitlines() if line.strip()]
        if not self.prompts:
            raise ValueError("give data.prompts or data.prompts_file: there is nothing to sample")
        if samples_per_prompt < 1 or batch_size < 1:
            raise ValueError("data.samples_per_prompt and data.batch_size must be >= 1")
        if height < 1 or width < 1 or frames < 1:
            raise ValueError(f"data.height, width and frames must be >= 1, got {height}x{width}x{frames}")
        if first_frame is not None and (frames == 1 or not Path(first_frame).is_file()):
            raise ValueError(f"data.first_frame={first_frame!r}: I2V needs an existing image file and frames > 1")
        if (source is None) != (mask is None):
            raise ValueError("data.source and data.mask go together: a region edit needs both")
        if source is not None:
            for name, path in (("source", source), ("mask", mask)):
                if not Path(path).is_file():
                    raise FileNotFoundError(f"data.{name}: {path} does not exist")
            if first_frame is not None:
                raise ValueError("data.first_frame (I2V) and data.source (region edit) exclude each other")
            if frames > 1 and Path(source).suffix.lower() not in VIDEO_SUFFIXES:
                raise ValueError(f"data.source={source!r} is an image: region edits of clips need a clip file "
                                 f"({', '.join(VIDEO_SUFFIXES)}), images need data.frames 1")  # fmt: skip
        if edit_rounds < 1:
            raise ValueError(f"data.edit_rounds must be >= 1, got {edit_rounds}")
        self.hp = dict(samples_per_prompt=samples_per_prompt, batch_size=batch_size, seed=seed, height=height,
                       width=width, frames=frames, first_frame=first_frame, source=source, mask=mask,
                       edit_rounds=edit_rounds)  # fmt: skip

    def connect(self, geometry: TokenGeometry | None = None, **training_only) -> None:
        """The tokenizer's strides (`GeneratorModule.setup`): the requested size must be tokenizable."""
        if geometry is None or not geometry.spatial_stride:
            return
        stride, temporal = geometry.spatial_stride, geometry.temporal_stride or 1
        hp = self.hp
        if hp["height"] % stride or hp["width"] % stride or (hp["frames"] - 1) % temporal:
            raise ValueError(f"data.height/width must be multiples of the tokenizer's stride {stride} and data.frames "
                             f"1 + {temporal}k, got {hp['height']}x{hp['width']}x{hp['frames']}")  # fmt: skip

    def _image(self, path: str, mode: str = "RGB"):
        """The picture at `path` resized to cover the output and centre-cropped (as training media)."""
        from PIL import Image

        from grn_lightning.data.media import resize_cover_crop_image

        return resize_cover_crop_image(Image.open(path).convert(mode), self.hp["height"], self.hp["width"])

    def _first_frame_pixels(self) -> torch.Tensor:
        """[3, 1, H, W] in [-1, 1]: the I2V picture."""
        from grn_lightning.data.media import image_to_tensor

        return image_to_tensor(self._image(self.hp["first_frame"])).float().div(127.5).sub(1.0)

    def _source_pixels(self) -> torch.Tensor:
        """[3, T, H, W] in [-1, 1]: the edit source; a clip is read as `frames` frames at 16 fps (looped if short)."""
        from grn_lightning.data.media import image_to_tensor, resize_cover_crop_frames
        from grn_lightning.data.video import ClipRule, decode_video

        hp = self.hp
        if Path(hp["source"]).suffix.lower() in VIDEO_SUFFIXES:
            frames = decode_video(Path(hp["source"]).read_bytes(), ClipRule(num_frames=hp["frames"], short="loop"), None)
            pixels = resize_cover_crop_frames(frames, hp["height"], hp["width"])
        else:
            pixels = image_to_tensor(self._image(hp["source"]))
        return pixels.float().div(127.5).sub(1.0)

    def _mask(self) -> torch.Tensor:
        """bool [H, W]: True where the mask PNG is white (grey ≥ 128 after the resize)."""
        import numpy as np

        return torch.from_numpy(np.asarray(self._image(self.hp["mask"], mode="L")) >= 128)

    def requests(self) -> list[dict]:
        hp = self.hp
        captions = [p for p in self.prompts for _ in range(hp["samples_per_prompt"])]
        names = [f"prompt{i // hp['samples_per_prompt']:03d}_{i % hp['samples_per_prompt']:03d}" for i in range(len(captions))]
        first = self._first_frame_pixels() if hp["first_frame"] else None
        source = self._source_pixels() if hp["source"] else None
        mask = self._mask() if hp["source"] else None
        batches = []
        for start in range(0, len(captions), hp["batch_size"]):
            chunk = captions[start : start + hp["batch_size"]]
            batch = {"captions": chunk, "names": names[start : start + len(chunk)],
                     "seeds": [hp["seed"] + start + i for i in range(len(chunk))], "height": hp["height"],
                     "width": hp["width"], "frames": hp["frames"]}  # fmt: skip
            if first is not None:
                batch["first_frame"] = first[None].expand(len(chunk), -1, -1, -1, -1).contiguous()
            if source is not None:
                batch.update(source=source[None].expand(len(chunk), -1, -1, -1, -1).contiguous(), rounds=hp["edit_rounds"],
                             mask=mask[None].expand(len(chunk), -1, -1).contiguous(),
                             names=[f"edit_{name}" for name in batch["names"]])  # fmt: skip
            batches.append(batch)
        return batches

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        return request_loader(self.requests())
