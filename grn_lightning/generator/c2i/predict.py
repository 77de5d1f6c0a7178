"""`grn predict` for C2I: sampling / region-edit requests (a data module) written by the shared `SampleWriter`
(generator/writers.py).

    grn predict --config configs/c2i_grn_b.yaml --config configs/c2i_predict.yaml --ckpt_path run/last.ckpt \
        --data.class_ids "[207, 360, 387]" --data.samples_per_class 8

Class requests: `samples_per_class` images of every class in `class_ids`, batched, one seed per batch (the module
draws per-sample seeds from it, so a request reproduces). Edit request ("sketch and revise", SPEC §6): an image
file is centre-cropped like training data, encoded, the tokens inside `edit_region` (fractions top, left, bottom,
right of the image) are regenerated for `edit_class`, the rest is kept, and the result decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch

from grn_lightning.data.buckets import SPATIAL_STRIDE
from grn_lightning.data.tokens import TokenGeometry
from grn_lightning.errors import GRNUserError
from grn_lightning.generator.writers import request_loader


class C2IPredictRequests(L.LightningDataModule):
    """Sampling and edit requests for `C2IModule.predict_step`.

    Args:
        class_ids: classes to sample.
        samples_per_class: images per class.
        batch_size: images per `predict_step`.
        seed: base seed; batch i uses seed + i.
        edit_image: image file for a region edit; None disables the edit request.
        edit_region: [top, left, bottom, right] of the edited region as fractions of the image side.
        edit_class: class the region is regenerated for (default: the first of `class_ids`).
        edit_samples: number of edits of the image (different seeds).
        edit_rounds: refinement rounds of the edit.
        resolution: image side (the generator's training resolution; with the tokenizer's stride it must give the
            generator's token grid, checked when the module connects).

    Sampling options are the module's sampler (`--model.init_args.sampler.init_args.cfg_scale 3.0`); nothing about
    the model travels in the request batches. The tokenizer's stride reaches this module through `connect`.
    """

    def __init__(
        self,
        class_ids: list[int] | None = None,
        samples_per_class: int = 4,
        batch_size: int = 16,
        seed: int = 0,
        edit_image: str | None = None,
        edit_region: list[float] | None = None,
        edit_class: int | None = None,
        edit_samples: int = 4,
        edit_rounds: int = 1,
        resolution: int = 256,
    ) -> None:
        super().__init__()
        self.class_ids = list(class_ids if class_ids is not None else [0])
        for name, value in (("samples_per_class", samples_per_class), ("batch_size", batch_size),
                            ("edit_samples", edit_samples), ("edit_rounds", edit_rounds)):  # fmt: skip
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if edit_image is not None:
            if not os.path.exists(edit_image):
                raise FileNotFoundError(f"data.edit_image: {edit_image} does not exist")
            region = edit_region or [0.25, 0.25, 0.75, 0.75]
            if len(region) != 4 or not (0 <= region[0] < region[2] <= 1 and 0 <= region[1] < region[3] <= 1):
                raise ValueError(f"data.edit_region must be [top, left, bottom, right] fractions, got {region}")
            self.edit_region = [float(v) for v in region]
        self.hp = dict(
            samples_per_class=samples_per_class, batch_size=batch_size, seed=seed, edit_image=edit_image,
            edit_class=edit_class, edit_samples=edit_samples, edit_rounds=edit_rounds, resolution=resolution,
        )  # fmt: skip
        self.geometry = TokenGeometry(channels=0, rounds=0, spatial_stride=SPATIAL_STRIDE)  # until `connect`

    def connect(self, geometry: TokenGeometry | None = None, **training_only) -> None:
        """The generator's token geometry (`GeneratorModule.setup`); batch and budget settings do not apply here."""
        if geometry is not None and geometry.spatial_stride:
            stride, side = geometry.spatial_stride, self.hp["resolution"] // geometry.spatial_stride
            if self.hp["resolution"] % stride or (geometry.grid is not None and tuple(geometry.grid) != (side, side)):
                raise ValueError(f"data.resolution={self.hp['resolution']} with the tokenizer's stride {stride} does "
                                 f"not give the generator's token grid {geometry.grid}: set data.resolution to "
                                 f"{(geometry.grid or (side,))[0] * stride}")  # fmt: skip
            self.geometry = geometry

    def setup(self, stage: str) -> None:
        """Every requested class must exist in the model (before any sampling; an ImageNet id given to a 4-class
        model failed deep inside the embedding with 'index out of range in self')."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        classes = getattr(module, "num_classes", None)
        if classes is None:
            return
        edit = [self.hp["edit_class"]] if self.hp["edit_image"] is not None and self.hp["edit_class"] is not None else []
        for option, ids in (("class_ids", self.class_ids), ("edit_class", edit)):
            outside = sorted({c for c in ids if not 0 <= c < classes})
            if outside:
                raise GRNUserError(
                    f"data.{option}: {outside} outside the model's classes 0..{classes - 1} (model.transformer.init_args.num_classes = "
                    f"{classes}); give ids in that range, e.g. --data.class_ids \"{list(range(min(classes, 4)))}\"."
                )

    def region_mask(self) -> torch.Tensor:
        """bool [h, w] token mask of `edit_region`."""
        side = self.hp["resolution"] // self.geometry.spatial_stride
        top, left, bottom, right = (round(v * side) for v in self.edit_region)
        mask = torch.zeros(side, side, dtype=torch.bool)
        mask[top:max(bottom, top + 1), left:max(right, left + 1)] = True
        return mask

    def requests(self) -> list[dict]:
        hp = self.hp
        batches = []
        ids = [c for c in self.class_ids for _ in range(hp["samples_per_class"])]
        names = [f"class{c:04d}_{i % hp['samples_per_class']:03d}" for i, c in enumerate(ids)]
        for start in range(0, len(ids), hp["batch_size"]):
            batches.append({
                "class_ids": torch.tensor(ids[start : start + hp["batch_size"]], dtype=torch.int64),
                "names": names[start : start + hp["batch_size"]], "seed": hp["seed"] + len(batches),
            })  # fmt: skip
        if hp["edit_image"] is not None:
            from PIL import Image

            from grn_lightning.data.media import adm_center_crop, image_to_tensor

            image = adm_center_crop(Image.open(hp["edit_image"]).convert("RGB"), hp["resolution"])
            pixels = image_to_tensor(image).float().div(127.5).sub(1.0)
            n = hp["edit_samples"]
            cls = hp["edit_class"] if hp["edit_class"] is not None else self.class_ids[0]
            stem = Path(hp["edit_image"]).stem
            batches.append({
                "pixels": pixels[None].expand(n, -1, -1, -1, -1).contiguous(),
                "region": self.region_mask()[None].expand(n, -1, -1).contiguous(),
                "class_ids": torch.full((n,), cls, dtype=torch.int64), "rounds": hp["edit_rounds"],
                "names": [f"edit_{stem}_class{cls:04d}_{i:03d}" for i in range(n)], "seed": hp["seed"] + len(batches),
            })  # fmt: skip
        return batches

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        return request_loader(self.requests())
