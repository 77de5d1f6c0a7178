"""Synthetic shards for the data-path benchmarks (the GPU machine reaches no dataset): token shards (C2I, or T2I with
cached text states) and media shards (T2I on-the-fly: images + captions), written with the project's own record
encoders so `GRNDataModule` reads them exactly as it reads real ones.

Contents are random (uniform labels, Gaussian bf16 text states, noise images); only sizes matter for speed: a
token record holds C × T × h × w labels of M bits (+ the flipped copy), a T2I record adds [L, 4096] bf16 states.
"""

from __future__ import annotations

import io
import os
import random

import numpy as np
import torch


def write_token_shards(
    folder: str, records: int, shards: int, channels: int, rounds: int, grid: tuple[int, int], num_classes: int = 0,
    text_width: int = 0, text_lengths: tuple[int, int] = (60, 400), aspect_ratio: float = 1.0, seed: int = 0,
) -> str:  # fmt: skip
    """`records` token records in `shards` tars under `folder`; text_width > 0 adds cached text states of random
    lengths in `text_lengths`. Returns the brace pattern of the shards."""
    import webdataset as wds

    from grn_lightning.data.text_states import encode_text_fields
    from grn_lightning.data.tokens import encode_token_record

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    null = torch.randn(3, max(text_width, 1), generator=gen).bfloat16()
    per_shard = -(-records // shards)
    for shard in range(shards):
        with wds.TarWriter(os.path.join(folder, f"tok-{shard:06d}.tar")) as sink:
            for i in range(shard * per_shard, min(records, (shard + 1) * per_shard)):
                labels = rng.integers(0, 2**rounds, size=(channels, 1, *grid))
                record = {"__key__": f"{i:08d}", **encode_token_record(labels, rounds, flipped=labels[..., ::-1])}
                record["tokens.json"]["aspect_ratio"] = aspect_ratio
                if num_classes:
                    record["cls"] = str(i % num_classes)
                if text_width:
                    length = int(rng.integers(text_lengths[0], text_lengths[1] + 1))
                    record.update(encode_text_fields(torch.randn(length, text_width, generator=gen), null, "t2i"))
                    record["json"] = {"caption": f"synthetic caption {i}"}
                sink.write(record)
    return os.path.join(folder, "tok-{%06d..%06d}.tar" % (0, shards - 1))


def write_image_shards(folder: str, records: int, shards: int, size: tuple[int, int], seed: int = 0) -> str:
    """`records` JPEG images of `size` (h, w) with captions of 60-400 characters in `shards` tars."""
    import webdataset as wds
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = random.Random(seed)
    per_shard = -(-records // shards)
    for shard in range(shards):
        with wds.TarWriter(os.path.join(folder, f"img-{shard:06d}.tar")) as sink:
            for i in range(shard * per_shard, min(records, (shard + 1) * per_shard)):
                # smooth noise (upsampled) so the JPEG decoder does the work of a photo, not of white noise
                small = rng.integers(0, 256, size=(size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
                image = Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                caption = " ".join(words.choice(["a", "red", "cat", "on", "the", "sofa", "near", "window"])
                                   for _ in range(words.randint(15, 90)))  # fmt: skip
                sink.write({"__key__": f"{i:08d}", "jpg": buffer.getvalue(), "json": {"caption": caption}})
    return os.path.join(folder, "img-{%06d..%06d}.tar" % (0, shards - 1))
