"""Image inputs of the offline evaluation tools: an image folder or WebDataset shards, ADM centre crop.

The crop is the data module's own ``adm_center_crop`` (SPEC section 8: box-downsample while >= 2x, bicubic,
centre crop), so reference statistics, tokenizer evaluation and training see identical pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from grn_lightning.data.media import IMAGE_EXTENSIONS, adm_center_crop, decode_image

__all__ = ["ImageFolderDataset", "ShardImageDataset", "image_loader", "to_model_range"]


def to_model_range(image, size: int | None) -> torch.Tensor:
    """PIL RGB -> float [3, H, W] in [-1, 1], ADM centre-cropped to ``size`` (None keeps the image as is)."""
    import numpy as np

    if size:
        image = adm_center_crop(image, size)
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float() / 127.5 - 1


class ImageFolderDataset(Dataset):
    """Every image file below ``root`` (sorted, recursive); items are (image [3, H, W] in [-1, 1], index).

    Args:
        root: folder (ImageNet val in class sub-folders, or a flat folder of PNG samples).
        size: ADM centre-crop size; None feeds images unchanged (they must then share one size).
        limit: use only the first ``limit`` files (smoke runs).
    """

    def __init__(self, root: str, size: int | None = 256, limit: int | None = None):
        files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found below {root}")
        self.files = files[:limit] if limit else files
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_model_range(decode_image(self.files[index].read_bytes()), self.size), index


class ShardImageDataset(IterableDataset):
    """Images of WebDataset shards (first jpg/png/webp member of each record), in shard order.

    Single reader (use ``num_workers=0``): statistics are order-independent, and this keeps every record
    exactly once without worker splitting logic.
    """

    def __init__(self, pattern: str, size: int | None = 256, limit: int | None = None):
        from grn_lightning.data.splits import check_local_shards, expand_shards

        self.urls = expand_shards(pattern)
        check_local_shards(self.urls, "shards")
        self.size, self.limit = size, limit

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        import webdataset as wds

        records = wds.tarfile_to_samples(handler=wds.reraise_exception)(iter({"url": u} for u in self.urls))
        count = 0
        for record in records:
            data = next((record[e] for e in IMAGE_EXTENSIONS if e in record), None)
            if data is None:
                continue
            yield to_model_range(decode_image(data), self.size), count
            count += 1
            if self.limit and count >= self.limit:
                return


def image_loader(source: str, size: int | None, batch_size: int, workers: int = 4, limit: int | None = None):
    """DataLoader over a folder (parallel decoding) or a shard pattern (``*.tar`` / brace pattern)."""
    if Path(source).is_dir():
        dataset = ImageFolderDataset(source, size, limit)
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False), len(dataset)
    dataset = ShardImageDataset(source, size, limit)
    return DataLoader(dataset, batch_size=batch_size, num_workers=0), limit
