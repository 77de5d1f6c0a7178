"""Feature networks: FID Inception equals pytorch-fid's, FID reacts to noise on real photos, I3D loads the
published key layout, LPIPS trunk loading; all with random weights of the true structure (no downloads)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import grn_lightning  # noqa: F401
from grn_lightning import weights as W
from grn_lightning.eval.features import InceptionFeatureExtractor, build_lpips, to_uint8_levels
from grn_lightning.eval.i3d import I3DFeatureExtractor, _same_padding, preprocess_clips_for_i3d
from grn_lightning.eval.metrics import FrechetDistance


def photo_patches(per_image: int = 6, size: int = 64) -> torch.Tensor:
    """Real photo crops from scikit-image, [N, 3, size, size] in [-1, 1]."""
    from skimage import data

    out = []
    generator = torch.Generator().manual_seed(0)
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        image = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 127.5 - 1
        h, w = image.shape[1:]
        side = min(h, w) // 2
        for _ in range(per_image):
            top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
            crop = image[None, :, top : top + side, left : left + side]
            out.append(F.interpolate(crop, size=(size, size), mode="area")[0])
    return torch.stack(out)


@pytest.fixture(scope="module")
def random_inception() -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor(random_init=True)


def test_inception_equals_pytorch_fid_with_the_same_weights(random_inception, monkeypatch):
    import pytorch_fid.inception as pfi

    state = random_inception.net.state_dict()
    # pytorch-fid loads the weights strictly, so this also proves our structure has the file's exact keys.
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: state)
    reference = pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    images01 = (photo_patches(per_image=1, size=80)[:2] + 1) / 2
    with torch.no_grad():
        expected = reference(images01)[0].flatten(1)
    ours = InceptionFeatureExtractor(random_init=True, quantize_uint8=False)
    ours.net.load_state_dict(state)
    got = ours(images01 * 2 - 1)
    assert got.pool.shape == (2, 2048) and got.logits.shape == (2, 1008)
    torch.testing.assert_close(got.pool, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.logits, got.pool @ state["fc.weight"].t())  # unbiased logits


def test_random_init_is_identical_everywhere():
    # Every rank must build the same random network, or distributed features would not be comparable.
    a, b = InceptionFeatureExtractor(random_init=True), InceptionFeatureExtractor(random_init=True)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_inception_loads_through_the_registry(random_inception, monkeypatch, tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_inception.net.state_dict(), path)
    spec = dataclasses.replace(W.WEIGHTS["fid_inception"], sha256_prefix=None)  # our stand-in file's hash differs
    monkeypatch.setitem(W.WEIGHTS, "fid_inception", spec)
    monkeypatch.setenv("GRN_WEIGHTS", str(tmp_path))
    loaded = InceptionFeatureExtractor()
    assert loaded.weights_file == str(path)
    x = photo_patches(per_image=1)[:2]
    torch.testing.assert_close(loaded(x).pool, random_inception(x).pool)
    monkeypatch.setenv("GRN_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(W.MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionFeatureExtractor()


def test_uint8_quantisation_matches_png_levels():
    x = torch.linspace(-1, 1, 1001)
    q = to_uint8_levels(x)
    levels = torch.round((q + 1) * 127.5)
    assert torch.allclose((q + 1) * 127.5, levels, atol=1e-4) and levels.min() == 0 and levels.max() == 255
    assert (q - x).abs().max() <= 1 / 255 + 1e-6


def test_fid_grows_monotonically_with_noise_on_real_photos(random_inception):
    clean = photo_patches(per_image=3)
    reference = random_inception(clean).pool
    generator = torch.Generator().manual_seed(1)
    distances = []
    for sigma in (0.0, 0.1, 0.3, 0.8):
        if sigma == 0.0:
            features = reference  # the same set: distance 0 up to rounding
        else:
            noisy = (clean + sigma * torch.randn(clean.shape, generator=generator)).clamp(-1, 1)
            features = random_inception(noisy).pool
        metric = FrechetDistance(2048)
        metric.update(reference, real=True)
        metric.update(features)
        distances.append(float(metric.compute()))
    assert abs(distances[0]) < 1e-3 * distances[1]
    assert distances == sorted(distances) and distances[1] > 0
    assert distances[3] > 10 * distances[1]


# ---- I3D ------------------------------------------------------------------------------------------------

# Published i3d_pretrained_400.pt layout: endpoint -> (in, out, kernel) for units, or (in, widths) for mixed.
_I3D_UNITS = {"Conv3d_1a_7x7": (3, 64, 7), "Conv3d_2b_1x1": (64, 64, 1), "Conv3d_2c_3x3": (64, 192, 3)}
_I3D_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)), "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)), "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)), "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)), "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}  # fmt: skip


def _synthesised_i3d_state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def unit(prefix: str, cin: int, cout: int, k: int) -> None:
        state[f"{prefix}.conv3d.weight"] = torch.randn(cout, cin, k, k, k, generator=generator) * (2 / (cin * k**3)) ** 0.5
        state[f"{prefix}.bn.weight"] = 1 + 0.1 * torch.randn(cout, generator=generator)
        state[f"{prefix}.bn.bias"] = 0.1 * torch.randn(cout, generator=generator)
        state[f"{prefix}.bn.running_mean"] = 0.1 * torch.randn(cout, generator=generator)
        state[f"{prefix}.bn.running_var"] = 1 + torch.rand(cout, generator=generator)
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(1000)

    for name, (cin, cout, k) in _I3D_UNITS.items():
        unit(name, cin, cout, k)
    for name, (cin, (w0, w1a, w1b, w2a, w2b, w3)) in _I3D_MIXED.items():
        for branch, bin_, bout, k in (("b0", cin, w0, 1), ("b1a", cin, w1a, 1), ("b1b", w1a, w1b, 3),
                                      ("b2a", cin, w2a, 1), ("b2b", w2a, w2b, 3), ("b3b", cin, w3, 1)):  # fmt: skip
            unit(f"{name}.{branch}", bin_, bout, k)
    state["logits.conv3d.weight"] = torch.randn(400, 1024, 1, 1, 1, generator=generator) * 0.03
    state["logits.conv3d.bias"] = torch.randn(400, generator=generator) * 0.1
    return state


def test_i3d_loads_published_key_layout_and_uses_it(tmp_path):
    state = _synthesised_i3d_state_dict()
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(state, path)
    model = I3DFeatureExtractor(weights_path=str(path))  # strict load: exact key names and shapes
    assert model.weights_file == str(path)
    assert set(model.net.state_dict()) == set(state)
    assert "Mixed_3b.b0.conv3d.weight" in state and state["Mixed_5c.b1b.conv3d.weight"].shape == (384, 192, 3, 3, 3)
    clips = torch.rand(2, 3, 9, 40, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    logits = model(clips)
    assert logits.shape == (2, 400) and torch.isfinite(logits).all()
    # The loaded file, not a random init, produced the logits.
    assert not torch.allclose(logits, I3DFeatureExtractor(random_init=True)(clips))
    with pytest.raises(ValueError, match="T >= 9"):
        model(clips[:, :, :5])


def test_i3d_preprocessing_and_same_padding():
    assert _same_padding(224, 7, 2) == (2, 3) and _same_padding(9, 3, 1) == (1, 1) and _same_padding(8, 2, 2) == (0, 0)
    clip = torch.rand(1, 3, 2, 224, 300) * 2 - 1
    out = preprocess_clips_for_i3d(clip)
    assert out.shape == (1, 3, 2, 224, 224)
    torch.testing.assert_close(out, clip[..., :, 38:262])  # short side already 224: a pure centre crop
    small = preprocess_clips_for_i3d(torch.rand(2, 3, 9, 48, 64))
    assert small.shape == (2, 3, 9, 224, 224)


# ---- LPIPS ----------------------------------------------------------------------------------------------


def test_lpips_trunk_loads_torchvision_file(monkeypatch, tmp_path):
    import torchvision

    trunk = torchvision.models.alexnet(weights=None).state_dict()
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(trunk, path)
    spec = dataclasses.replace(W.WEIGHTS["lpips_alex_backbone"], sha256_prefix=None)
    monkeypatch.setitem(W.WEIGHTS, "lpips_alex_backbone", spec)
    model = build_lpips("alex", backbone_path=str(path))
    torch.testing.assert_close(getattr(model.net.slice2, "3").weight, trunk["features.3.weight"])
    torch.testing.assert_close(getattr(model.net.slice5, "10").bias, trunk["features.10.bias"])
    x = photo_patches(per_image=1)
    assert torch.allclose(model(x, x), torch.zeros(4, 1, 1, 1), atol=1e-6)
    assert (model(x, x.flip(0)) > 0).all()
    with pytest.raises(ValueError, match="alex, vgg"):
        build_lpips("squeeze")


# ---- reference statistics tool -------------------------------------------------------------------------


def _load_tool(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fid_stats_tool_from_folder_and_shards(tmp_path, random_inception, demo_val_image_shards):
    import numpy as np
    from PIL import Image

    from grn_lightning.data.media import adm_center_crop

    folder = tmp_path / "photos"
    folder.mkdir()
    from skimage import data

    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    fid_stats = _load_tool("fid_stats")
    out = tmp_path / "stats.npz"
    fid_stats.main([str(folder), "--out", str(out), "--size", "64", "--random-init", "--workers", "0", "--quiet"])
    # Direct computation: ADM crop -> [-1, 1] -> Inception pool3 -> mean / unbiased covariance.
    crops = [np.asarray(adm_center_crop(Image.open(folder / f"{n}.png").convert("RGB"), 64))
             for n in ("astronaut", "chelsea", "coffee", "rocket")]  # fmt: skip
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
    features = random_inception(x).pool.double().numpy()
    with np.load(out) as stats:
        np.testing.assert_allclose(stats["mu"], features.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(stats["sigma"], np.cov(features, rowvar=False), rtol=1e-3, atol=1e-6)
        assert int(stats["n"]) == 4
    assert (tmp_path / "stats.npz.json").exists()
    shard_out = tmp_path / "shards.npz"
    fid_stats.main([demo_val_image_shards, "--out", str(shard_out), "--size", "64", "--random-init", "--limit", "3",
                    "--quiet"])  # fmt: skip
    with np.load(shard_out) as stats:
        assert int(stats["n"]) == 3 and stats["sigma"].shape == (2048, 2048) and np.isfinite(stats["mu"]).all()
