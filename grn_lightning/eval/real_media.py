"""Real evaluation media from WebDataset shards, each record once (the data module's evaluation stream).

Used by the classifier tool and the classifier-judged sample metrics: real test images for the Fréchet
reference, real test clips whose first frames condition I2V.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def iterate_real(shards: str, kind: str = "image", resolution: int = 32, num_frames: int = 17, batch_size: int = 256,
                 limit: int | None = None) -> Iterator[dict]:  # fmt: skip
    """Batches {"pixels" float [B, 3, T, H, W] in [-1, 1], "cls" [B], "caption" [B]} of `shards`, in order, stopping
    after `limit` records (None: all)."""
    from grn_lightning.data.datamodule import GRNDataModule

    data = GRNDataModule(kind=kind, test_shards=shards, resolution=resolution, num_frames=num_frames,
                         val_batch_size=batch_size, batch_size=batch_size, num_workers=0, random_flip=False)  # fmt: skip
    data.setup("test")
    seen = 0
    for batch in data.test_dataloader():
        batch = data.on_after_batch_transfer(batch, 0)
        keep = batch["valid"]
        if limit is not None:
            keep &= torch.arange(len(keep)) < limit - seen
        if keep.any():
            idx = keep.nonzero().flatten()
            yield {"pixels": batch["pixels"][idx], "cls": batch["cls"][idx], "caption": [batch["caption"][i] for i in idx.tolist()]}
            seen += len(idx)
        if limit is not None and seen >= limit:
            return
