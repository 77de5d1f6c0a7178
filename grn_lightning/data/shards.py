"""Build WebDataset shards from class folders, plain image folders or jsonl manifests (tools/make_shards.py).

Every file is validated by decoding it before it is written; bad files and images below the minimum size are
reported in the summary, never written. The same input gives byte-identical shards (sorted inputs, sequential
keys, fixed tar mtime). Splits are assigned by a hash of each file's key (its path below the input folder, or
the manifest's "key" / "path"), so a file stays in its split when files are added or removed, and all clips cut
from one video share its split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from grn_lightning.data.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaDecodeError, decode_image

_CANONICAL_EXT = {"jpeg": "jpg"}


@dataclass
class SourceItem:
    """One file to put into a shard, with the fields that go into its record."""

    path: str
    cls: int | None = None
    meta: dict = field(default_factory=dict)
    key: str = ""  # what the split hash reads; the path when empty

    @property
    def extension(self) -> str:
        ext = Path(self.path).suffix.lower().lstrip(".")
        return _CANONICAL_EXT.get(ext, ext)


def _is_media(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def items_from_class_folder(root: str) -> tuple[list[SourceItem], dict[str, int]]:
    """ImageNet layout root/<class>/<file>: classes sorted by name get ids 0..K-1."""
    base = Path(root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class sub-folders found (expected root/<class_name>/<image files>)")
    index = {name: i for i, name in enumerate(classes)}
    items = [
        SourceItem(str(path), index[name], {"class_name": name}, key=str(path.relative_to(base)))
        for name in classes
        for path in sorted((base / name).rglob("*"))
        if path.is_file() and _is_media(path)
    ]
    return items, index


def items_from_image_folder(root: str) -> list[SourceItem]:
    """Every image below root (sorted); a sidecar <stem>.txt becomes the caption."""
    items = []
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and _is_media(path):
            sidecar = path.with_suffix(".txt")
            meta = {"caption": sidecar.read_text().strip()} if sidecar.is_file() else {}
            items.append(SourceItem(str(path), None, meta, key=str(path.relative_to(root))))
    return items


def items_from_manifest(manifest: str) -> list[SourceItem]:
    """jsonl lines {"path": ..., "caption": ..., "cls": ..., "key": ..., any other metadata}; relative paths are
    resolved against the manifest's folder; the split key is "key" if given, else "path" as written. Order is the
    manifest's."""
    base = Path(manifest).parent
    items = []
    with open(manifest) as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{manifest}:{line_number}: not valid JSON ({err})") from err
            if "path" not in entry:
                raise ValueError(f"{manifest}:{line_number}: record has no 'path' field")
            written = entry.pop("path")
            path, cls = Path(written), entry.pop("cls", None)
            key = str(entry.pop("key", written))
            items.append(SourceItem(str(path if path.is_absolute() else base / path), cls, entry, key=key))
    return items


def probe_video(data: bytes) -> dict:
    """Frame count, fps, size and duration; decodes the first and last frame to catch truncated files."""
    import io

    try:
        import decord

        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        frames, fps = len(reader), float(reader.get_avg_fps())
        height, width = reader[0].shape[:2]
        reader.get_batch([0, frames - 1])
    except Exception:  # decord missing or unable: PyAV decodes everything, which also validates it
        import av

        try:
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.video[0]
                decoded = [f for f in container.decode(stream)]
                fps = float(stream.average_rate or 25)
        except Exception as err:
            raise MediaDecodeError(f"undecodable video: {err}") from err
        if not decoded:
            raise MediaDecodeError("video has no frames")
        frames, height, width = len(decoded), decoded[0].height, decoded[0].width
    return {"frames": frames, "fps": round(fps, 4), "width": width, "height": height, "duration": round(frames / fps, 4)}


def validate_item(
    item: SourceItem, min_size: int = 32, clip_seconds: float | None = None
) -> tuple[SourceItem, list[tuple[str, bytes, dict]], str | None]:
    """Read and decode one file. Returns (item, pieces, error): pieces are (extension, bytes, geometry) records,
    one per file, or one per clip of `clip_seconds` when a longer video is cut (data/clips.py); error starts with
    "too small" when the shorter side is below `min_size` pixels."""
    try:
        data = Path(item.path).read_bytes()
        if item.extension in IMAGE_EXTENSIONS:
            image = decode_image(data)
            geometry = {"width": image.size[0], "height": image.size[1]}
            pieces = [(item.extension, data, geometry)]
        elif item.extension in VIDEO_EXTENSIONS:
            geometry = probe_video(data)
            pieces = [(item.extension, data, geometry)]
            if clip_seconds is not None and geometry["duration"] > clip_seconds:
                from grn_lightning.data.clips import cut_clips

                clips = cut_clips(data, clip_seconds)
                pieces = [("mp4", clip, {**probe_video(clip), "clip": i, "clip_start": round(i * clip_seconds, 4)})
                          for i, clip in enumerate(clips)]  # fmt: skip
        else:
            return item, [], f"unsupported file type .{item.extension}"
    except (OSError, MediaDecodeError) as err:
        return item, [], str(err)
    if min(geometry["width"], geometry["height"]) < min_size:
        return item, [], f"too small: {geometry['width']}x{geometry['height']} (minimum side {min_size} px)"
    return item, pieces, None


def shard_pattern(out_dir: str, prefix: str, count: int) -> str:
    """The brace pattern a config names for `count` shards <prefix>-000000.tar ... (data.train_shards etc.)."""
    return os.path.join(out_dir, f"{prefix}-{{000000..{max(count, 1) - 1:06d}}}.tar")


def write_shards(
    items: list[SourceItem],
    out_dir: str,
    prefix: str,
    samples_per_shard: int = 1000,
    max_shard_bytes: int = 1 << 30,
    workers: int = 0,
    classes: dict[str, int] | None = None,
    progress: bool = True,
    min_size: int = 32,
    clip_seconds: float | None = None,
) -> dict:
    """Validate and write `items`; returns (and saves as <prefix>.summary.json) the summary. Media whose shorter
    side is below `min_size` pixels are refused and counted; videos longer than `clip_seconds` are cut."""
    if not items:
        raise ValueError("no input files found")
    os.makedirs(out_dir, exist_ok=True)
    pattern = os.path.join(out_dir, f"{prefix}-%06d.tar")
    check = functools.partial(validate_item, min_size=min_size, clip_seconds=clip_seconds)
    pool = Pool(workers) if workers > 0 else None  # imap keeps input order: output stays deterministic
    results: Iterable = pool.imap(check, items, chunksize=8) if pool else map(check, items)
    bad, too_small, resolutions, class_counts, durations = [], [], Counter(), Counter(), []
    per_shard: list[int] = []
    shard_bytes, writer = 0, None
    try:
        for item, pieces, error in tqdm(results, total=len(items), disable=not progress, desc=prefix):
            if error is not None:
                (too_small if error.startswith("too small") else bad).append({"path": item.path, "error": error})
                continue
            for extension, data, geometry in pieces:
                full = writer is None or per_shard[-1] >= samples_per_shard
                if full or shard_bytes + len(data) > max_shard_bytes:
                    if writer is not None:
                        writer.close()
                    writer = wds.TarWriter(pattern % len(per_shard), mtime=0)  # mtime 0: reproducible bytes
                    per_shard.append(0)
                    shard_bytes = 0
                meta = {**item.meta, **geometry, "source": os.path.basename(item.path)}
                record = {"__key__": f"{sum(per_shard):08d}", extension: data, "json": json.dumps(meta, sort_keys=True)}
                if item.cls is not None:
                    record["cls"] = str(int(item.cls))
                    class_counts[int(item.cls)] += 1
                writer.write(record)
                per_shard[-1] += 1
                shard_bytes += len(data)
                resolutions[f"{geometry['width']}x{geometry['height']}"] += 1
                if "duration" in geometry:
                    durations.append(geometry["duration"])
    finally:
        if writer is not None:
            writer.close()
        if pool is not None:
            pool.close()
    summary = {
        "records": sum(per_shard),
        "shards": [os.path.basename(pattern % i) for i in range(len(per_shard))],
        "pattern": shard_pattern(out_dir, prefix, len(per_shard)) if per_shard else None,
        "records_per_shard": per_shard,
        "bad_files": bad,
        "too_small": {"min_size": min_size, "count": len(too_small), "files": too_small},
        "classes": classes or {},
        "class_counts": {str(k): v for k, v in sorted(class_counts.items())},
        "resolutions": dict(sorted(resolutions.items())),
        "videos": len(durations),
        "video_seconds": {"min": min(durations), "mean": sum(durations) / len(durations), "max": max(durations)}
        if durations
        else None,
    }
    with open(os.path.join(out_dir, f"{prefix}.summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1, sort_keys=True)
    return summary


def parse_split(text: str) -> dict[str, float]:
    """"train=0.9,val=0.05,test=0.05" -> {"train": 0.9, ...} (shares are normalised to sum to 1)."""
    shares: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not name.strip() or share < 0 or name.strip() in shares:
            raise ValueError(f"--split: expected name=share pairs like train=0.9,val=0.05,test=0.05, got {text!r}")
        shares[name.strip()] = share
    total = sum(shares.values())
    if total <= 0:
        raise ValueError(f"--split: the shares must not all be zero, got {text!r}")
    return {name: share / total for name, share in shares.items()}


def split_of(key: str, shares: dict[str, float]) -> str:
    """The split a key falls in: the first 64 bits of its SHA-256 as a number in [0, 1), against the cumulative
    shares in the order given (stable across runs, machines and Python versions, unlike hash())."""
    position = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    cumulative = 0.0
    for name, share in shares.items():
        cumulative += share
        if position < cumulative:
            return name
    return next(reversed(shares))  # rounding: position just below 1.0


def write_split_shards(items: list[SourceItem], out_dir: str, prefix: str, shares: dict[str, float], **kwargs) -> dict:
    """`write_shards` once per split, into <prefix>-<split>-000000.tar ...; {split: summary}."""
    groups: dict[str, list[SourceItem]] = {name: [] for name in shares}
    for item in items:
        groups[split_of(item.key or item.path, shares)].append(item)
    return {name: write_shards(group, out_dir, f"{prefix}-{name}", **kwargs) for name, group in groups.items() if group}
