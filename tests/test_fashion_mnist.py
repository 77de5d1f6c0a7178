"""Fashion-MNIST shards (data/fashion_mnist.py, tools/make_fashion_mnist.py) from synthetic IDX files: exact pixels,
classes, captions, clip motion as captioned; and the message when the files are missing."""

from __future__ import annotations

import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grn_lightning.data.fashion_mnist import CLASS_NAMES, IDX_FILES, build_fashion_mnist, caption_class, read_patterns
from grn_lightning.eval.real_media import iterate_real
from grn_lightning.eval.sample_judges import centroid_track, motion_direction

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    images_name, labels_name = IDX_FILES[split]
    with gzip.open(folder / images_name, "wb") as handle:
        handle.write(struct.pack(">IIII", 2051, *images.shape) + images.tobytes())
    with gzip.open(folder / labels_name, "wb") as handle:
        handle.write(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for split, count in (("train", 14), ("test", 6)):
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        images[:, 4:24, 6:22] = rng.integers(100, 256, size=(count, 20, 16))  # a bright item, black surround
        _write_idx(folder, split, images, np.arange(count) % 10)
    return folder


def test_shards_hold_exact_images_classes_captions_and_captioned_motion(idx_dir, tmp_path):
    patterns = build_fashion_mnist(str(idx_dir), str(tmp_path / "fm"), train_clips=5, test_clips=5, val_images=4)
    test_items = iterate_real(patterns["images-test"], "image", 32, batch_size=4)
    images = torch.cat([batch["pixels"] for batch in test_items])
    assert images.shape == (6, 3, 1, 32, 32)
    with gzip.open(idx_dir / IDX_FILES["test"][0]) as handle:
        raw = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(6, 28, 28)
    pixels = torch.round((images[:, 0, 0] + 1) * 127.5).to(torch.uint8).numpy()
    assert np.array_equal(pixels[:, 2:30, 2:30], raw) and pixels[:, :2].max() == 0  # padded, not resampled
    batches = list(iterate_real(patterns["images-train"], "image", 32, batch_size=16))
    assert [c.item() for c in batches[0]["cls"]] == list(range(10))  # items 0..9 of 10 kept for training
    assert [caption_class(c) for c in batches[0]["caption"]] == list(range(10))
    assert all(CLASS_NAMES[i] in c for i, c in enumerate(batches[0]["caption"]))
    clips = next(iterate_real(patterns["clips-test"], "video", 32, 17, batch_size=5))
    assert clips["pixels"].shape == (5, 3, 17, 32, 32)
    for clip, caption in zip(clips["pixels"], clips["caption"]):
        direction = "still" if caption.endswith("standing still") else caption.rsplit(" ", 1)[1]
        assert motion_direction(centroid_track(clip)) == direction
    # same inputs, same shards (bytes)
    again = build_fashion_mnist(str(idx_dir), str(tmp_path / "fm2"), train_clips=5, test_clips=5, val_images=4)
    first, second = (Path(p["clips-test"].split("{")[0] + "000000.tar") for p in (patterns, again))
    assert first.read_bytes() == second.read_bytes()


def test_zero_clips_builds_images_only(idx_dir, tmp_path):
    patterns = build_fashion_mnist(str(idx_dir), str(tmp_path / "fm"), train_clips=0, test_clips=0, val_images=4)
    assert sorted(patterns) == ["images-test", "images-train", "images-val"]
    assert not list((tmp_path / "fm" / "shards").glob("clips-*"))


def test_a_moved_dataset_folder_still_names_its_own_shards(idx_dir, tmp_path):
    build_fashion_mnist(str(idx_dir), str(tmp_path / "fm"), train_clips=0, test_clips=0, val_images=4)
    (tmp_path / "fm").rename(tmp_path / "moved")
    patterns = read_patterns(tmp_path / "moved")
    assert patterns["images-test"] == str(tmp_path / "moved" / "shards" / "images-test-{000000..000000}.tar")
    assert next(iterate_real(patterns["images-test"], "image", 32, batch_size=6))["pixels"].shape[0] == 6
    # the moved folder is reused as built (same settings), not rebuilt
    stamp = (tmp_path / "moved" / "fashion_mnist.json").stat().st_mtime_ns
    again = build_fashion_mnist(str(idx_dir), str(tmp_path / "moved"), train_clips=0, test_clips=0, val_images=4)
    assert again == patterns and (tmp_path / "moved" / "fashion_mnist.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="make_fashion_mnist"):
        read_patterns(tmp_path / "fm")


def test_missing_files_name_the_package_and_the_files(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        import make_fashion_mnist
    finally:
        sys.path.pop(0)
    assert make_fashion_mnist.main(["--idx-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in message
    for pair in IDX_FILES.values():
        for name in pair:
            assert name in message
    assert not (tmp_path / "out" / "fashion_mnist.json").exists()
