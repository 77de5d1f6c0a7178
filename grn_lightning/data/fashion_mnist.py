"""Fashion-MNIST as WebDataset shards: 32×32 RGB images with classes and captions, and "Moving Fashion-MNIST" clips.

The four gzipped IDX files are read from a folder (nothing is downloaded; on Debian/Ubuntu machines
`apt-get install dataset-fashion-mnist` puts them in DEBIAN_DIR). Items go through the project's own
`write_shards`, exactly like user data. Everything is seeded: the same files and seed give the same shards.

Splits: images-train / images-val are the train split (the last `val_images` items held out for validation
during training), images-test is the test split; clips-train are made from images-train items only, clips-test
from the test split. Every evaluation uses the test split.

Clips (after Moving MNIST): one item, shrunk to ITEM_SIZE pixels, crosses the 32×32 canvas in 17 frames at 16 fps
(1 + 4k frames for the causal tokenizer) moving left, right, up or down by CANVAS − ITEM_SIZE pixels, or stands
still. Captions say the class and the direction.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from grn_lightning.data.shards import SourceItem, write_shards

DATASET_VERSION = 3  # 2: clip items of 24 px (were 20); 3: 26 px
APT_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Class ids are Fashion-MNIST's; the names are the ones used in captions.
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
IMAGE_PHRASES = ("a photo of {a} {name}", "{a} {name}", "a picture of {a} {name}", "a product photo of {a} {name}")
DIRECTIONS = ("left", "right", "up", "down", "still")
CANVAS = 32
# Clip items are shrunk so that they can travel CANVAS − ITEM_SIZE = 6 pixels. A larger item keeps its class along
# generated clips better (one H100, the CPU recipe, one run per size, docs/REPRODUCTION.md): T2V class consistency
# 0.75 at 20 px, 0.85 and 0.79 at 24 (two runs), 0.83 at 26, 0.88 at 28; at 28 px the 4-pixel travel is too short for
# the motion to be read (T2V direction 0.73), so 26.
ITEM_SIZE = 26
CLIP_FRAMES = 17
CLIP_FPS = 16


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def image_caption(cls: int, phrase: int = 0) -> str:
    name = CLASS_NAMES[cls]
    return IMAGE_PHRASES[phrase].format(a=article(name), name=name)


def clip_caption(cls: int, direction: str) -> str:
    name = CLASS_NAMES[cls]
    if direction == "still":
        return f"{article(name)} {name} standing still"
    return f"{article(name)} {name} moving {direction}"


def caption_class(caption: str) -> int:
    """Class id named in a caption (the longest matching class name wins: 'shirt' is inside 't-shirt')."""
    found = [(len(name), cls) for cls, name in enumerate(CLASS_NAMES) if name in caption.lower()]
    if not found:
        raise ValueError(f"caption {caption!r} names none of the classes {CLASS_NAMES}")
    return max(found)[1]


def caption_direction(caption: str) -> str:
    for direction in DIRECTIONS[:4]:
        if caption.endswith(f"moving {direction}"):
            return direction
    if caption.endswith("standing still"):
        return "still"
    raise ValueError(f"caption {caption!r} names no direction")


def missing_files_message(folder: str) -> str:
    names = ", ".join(name for pair in IDX_FILES.values() for name in pair)
    return (
        f"Fashion-MNIST IDX files not found in {folder!r}. Install them with `apt-get install {APT_PACKAGE}` "
        f"(they land in {DEBIAN_DIR}) or put the four files {names} (from "
        "github.com/zalandoresearch/fashion-mnist) into a folder and pass it (--idx-dir / FASHION_MNIST_DIR)."
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    found, = struct.unpack(">I", data[:4])
    if found != magic:
        raise ValueError(f"{path}: IDX magic {found} is not {magic} (wrong or corrupt file)")
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of "train" or "test"; a clear error when files are missing."""
    images_name, labels_name = IDX_FILES[split]
    base = Path(folder)
    if not (base / images_name).is_file() or not (base / labels_name).is_file():
        raise FileNotFoundError(missing_files_message(folder))
    images, labels = _read_idx(base / images_name, 2051), _read_idx(base / labels_name, 2049)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels.astype(np.int64)


def to_canvas(item: np.ndarray) -> np.ndarray:
    """28×28 gray -> 32×32×3: padded by 2 black pixels on each side (no resampling of the photo)."""
    pad = (CANVAS - item.shape[0]) // 2
    gray = np.pad(item, pad)
    return np.repeat(gray[..., None], 3, axis=-1)


def clip_positions(direction: str, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(top, left) of the item in each of the CLIP_FRAMES frames; the item crosses the canvas at constant speed."""
    travel = CANVAS - ITEM_SIZE
    steps = np.round(np.linspace(0, travel, CLIP_FRAMES)).astype(int)
    other = int(rng.integers(0, travel + 1))
    if direction == "right":
        return [(other, int(s)) for s in steps]
    if direction == "left":
        return [(other, int(travel - s)) for s in steps]
    if direction == "down":
        return [(int(s), other) for s in steps]
    if direction == "up":
        return [(int(travel - s), other) for s in steps]
    if direction == "still":
        return [(other, int(rng.integers(0, travel + 1)))] * CLIP_FRAMES
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def render_clip(item: np.ndarray, positions: list[tuple[int, int]]) -> np.ndarray:
    """uint8 [T, 32, 32, 3]: the item (shrunk to ITEM_SIZE) pasted on a black canvas at each position."""
    small = np.asarray(Image.fromarray(item).resize((ITEM_SIZE, ITEM_SIZE), Image.BICUBIC))
    frames = np.zeros((len(positions), CANVAS, CANVAS), dtype=np.uint8)
    for t, (top, left) in enumerate(positions):
        frames[t, top : top + ITEM_SIZE, left : left + ITEM_SIZE] = small
    return np.repeat(frames[..., None], 3, axis=-1)


def write_mp4(frames: np.ndarray, path: Path, fps: int = CLIP_FPS) -> None:
    """Near-lossless H.264 (crf 8): the frames are tiny and the motion is what is being learned."""
    import av

    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "8", "preset": "veryfast"}
        stream.thread_count = 1
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode(None))


def _image_items(raw: Path, name: str, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> list[SourceItem]:
    folder = raw / name
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index, (item, cls) in enumerate(zip(images, labels)):
        path = folder / f"{index:06d}.png"
        if not path.is_file():
            Image.fromarray(to_canvas(item)).save(path)
        phrase = int(rng.integers(len(IMAGE_PHRASES)))
        items.append(SourceItem(str(path), int(cls), {"caption": image_caption(int(cls), phrase), "index": index}))
    return items


def _clip_items(raw: Path, name: str, images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> list[SourceItem]:
    folder = raw / name
    folder.mkdir(parents=True, exist_ok=True)
    picks = rng.choice(len(images), size=count, replace=False)
    items = []
    for index, source in enumerate(picks):
        direction = DIRECTIONS[index % len(DIRECTIONS)]  # balanced directions
        positions = clip_positions(direction, rng)
        path = folder / f"{index:06d}.mp4"
        if not path.is_file():
            write_mp4(render_clip(images[source], positions), path)
        cls = int(labels[source])
        meta = {"caption": clip_caption(cls, direction), "direction": direction, "source_index": int(source),
                "positions": positions}  # fmt: skip
        items.append(SourceItem(str(path), cls, meta))
    return items


def build_fashion_mnist(
    idx_dir: str = DEBIAN_DIR,
    out_dir: str = "data/fashion_mnist",
    train_clips: int = 6000,
    test_clips: int = 1000,
    val_images: int = 5000,
    max_train_images: int | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
) -> dict[str, str]:
    """Build (once) the shards under out_dir; returns {split name: shard brace pattern} (also in fashion_mnist.json)."""
    root = Path(out_dir)
    marker = root / "fashion_mnist.json"
    settings = dict(version=DATASET_VERSION, train_clips=train_clips, test_clips=test_clips, val_images=val_images,
                    max_train_images=max_train_images, seed=seed, item_size=ITEM_SIZE)  # fmt: skip
    if marker.is_file() and not force:
        info = json.loads(marker.read_text())
        if info.get("settings") == settings:
            return read_patterns(out_dir)
    train_images, train_labels = load_split(idx_dir, "train")
    test_images, test_labels = load_split(idx_dir, "test")
    if not 0 < val_images < len(train_images):
        raise ValueError(f"val_images must be in (0, {len(train_images)}), got {val_images}")
    fit_images, fit_labels = train_images[:-val_images], train_labels[:-val_images]
    if max_train_images is not None:
        fit_images, fit_labels = fit_images[:max_train_images], fit_labels[:max_train_images]
    rng = np.random.default_rng(seed)
    raw, shards = root / f"raw-{seed}", root / "shards"
    items = {
        "images-train": _image_items(raw, "images-train", fit_images, fit_labels, rng),
        "images-val": _image_items(raw, "images-val", train_images[-val_images:], train_labels[-val_images:], rng),
        "images-test": _image_items(raw, "images-test", test_images, test_labels, rng),
        # the item size in the folder name: clips of another size already on disk are never reused
        "clips-train": _clip_items(raw, f"clips-train-{train_clips}-{ITEM_SIZE}px", fit_images, fit_labels, train_clips, rng),
        "clips-test": _clip_items(raw, f"clips-test-{test_clips}-{ITEM_SIZE}px", test_images, test_labels, test_clips, rng),
    }
    per_shard = {"images-train": 5000, "images-val": 5000, "images-test": 5000, "clips-train": 1000, "clips-test": 500}
    classes = {name: cls for cls, name in enumerate(CLASS_NAMES)}
    patterns = {}
    for name, split_items in items.items():
        if not split_items:  # --train-clips 0 / --test-clips 0: images only (C2I needs no clips, nor PyAV)
            continue
        summary = write_shards(split_items, str(shards), name, per_shard[name], classes=classes, progress=progress,
                               workers=min(4, os.cpu_count() or 1))  # fmt: skip
        if summary["bad_files"]:
            raise RuntimeError(f"Fashion-MNIST {name}: files failed validation: {summary['bad_files'][:3]}")
        last = len(summary["shards"]) - 1
        # relative to out_dir, so the folder can be moved or mounted elsewhere (read_patterns resolves them)
        patterns[name] = f"shards/{name}-{{000000..{last:06d}}}.tar"
    marker.write_text(json.dumps({"settings": settings, "patterns": patterns}, indent=1))
    return read_patterns(out_dir)


def read_patterns(out_dir: str | Path) -> dict[str, str]:
    """{split name: shard brace pattern} of a dataset built by `build_fashion_mnist`, as paths under out_dir wherever
    the folder now is (the marker stores them relative to it; absolute ones of older builds are kept)."""
    marker = Path(out_dir) / "fashion_mnist.json"
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} not found: build the dataset first (tools/make_fashion_mnist.py --out {out_dir})")
    patterns = json.loads(marker.read_text())["patterns"]
    return {name: str(Path(out_dir) / pattern) for name, pattern in patterns.items()}
