"""Classifier-judged sample metrics (eval/sample_judges.py) and the classifier itself, with hand-worked values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from grn_lightning.eval.classifier import SmallClassifier, load_classifier, save_classifier, shrink_and_shift
from grn_lightning.eval.sample_judges import SampleJudge, centroid_track, features_frechet, motion_direction
from tests.test_fashion_mnist import idx_dir  # noqa: F401  (fixture: synthetic Fashion-MNIST IDX files)

pytestmark = pytest.mark.usefixtures("one_thread")


def _square_clip(positions: list[tuple[int, int]], size: int = 6, canvas: int = 32) -> torch.Tensor:
    """[3, T, canvas, canvas] in [-1, 1]: a white size×size square at each (top, left) on black."""
    clip = torch.full((3, len(positions), canvas, canvas), -1.0)
    for t, (top, left) in enumerate(positions):
        clip[:, t, top : top + size, left : left + size] = 1.0
    return clip


@pytest.mark.parametrize(
    "positions, expected",
    [
        ([(10, x) for x in range(0, 13)], "right"),  # 12 pixels to the right
        ([(10, 12 - x) for x in range(0, 13)], "left"),
        ([(12 - y, 3) for y in range(0, 13)], "up"),
        ([(y, 20) for y in range(0, 13)], "down"),
        ([(7, 9)] * 13, "still"),
        ([(7, 9 + (t % 2)) for t in range(13)], "still"),  # jitter of one pixel is not motion
    ],
)
def test_centroid_track_names_the_direction(positions, expected):
    clip = _square_clip(positions)
    track = centroid_track(clip)
    # a 6-pixel square at top/left p has its centroid at p + 2.5 (hand-worked)
    assert track[0].tolist() == [positions[0][0] + 2.5, positions[0][1] + 2.5]
    assert motion_direction(track) == expected


def test_features_frechet_matches_scipy_sqrtm_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(loc=0.7, size=(300, 5)) @ rng.normal(size=(5, 5))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert features_frechet(a, b) == pytest.approx(expected, rel=1e-6)
    assert features_frechet(a, a) == pytest.approx(0.0, abs=1e-8)


class _LeftOrRight(torch.nn.Module):
    """Class 0 when the left half is brighter than the right half, else class 1; features = the two half means."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, images):
        w = images.shape[-1]
        halves = torch.stack([images[..., : w // 2].mean(dim=(1, 2, 3)), images[..., w // 2 :].mean(dim=(1, 2, 3))], 1)
        return torch.stack([halves[:, 0] - halves[:, 1], halves[:, 1] - halves[:, 0]], 1), halves


def test_sample_judge_accuracy_consistency_direction_and_first_frame():
    judge = SampleJudge(_LeftOrRight(), batch_size=3)
    left, right = _square_clip([(10, 2)])[:, 0], _square_clip([(10, 24)])[:, 0]
    images = torch.stack([left, left, right, right])
    judge.update_images(images, torch.tensor([0, 1, 1, 1]))  # 3 of 4 requested classes drawn
    # clip 1 moves right from x=0 to x=24: frames with the square's centroid left of 16 are class 0
    moving = _square_clip([(10, 2 * t) for t in range(13)])  # centroids 2.5 .. 26.5: 7 frames left (x<=12), 6 right
    still = _square_clip([(10, 2)] * 13)
    judge.update_clips(torch.stack([moving, still]), torch.tensor([0, 0]), ["right", "left"])
    scores = judge.compute()
    assert scores["class_accuracy"] == 0.75
    assert scores["class_consistency"] == pytest.approx((7 / 13 + 1.0) / 2)
    assert scores["frame_class_accuracy"] == pytest.approx((7 / 13 + 1.0) / 2)
    assert scores["direction_accuracy"] == 0.5  # the still clip was asked to move left
    # per frame: frames 0-6 of both clips are class 0 (both asked for 0); frames 7-12 only in the still clip
    assert scores["frame_class_accuracy_by_frame"] == [1.0] * 7 + [0.5] * 6
    assert scores["majority_agreement_by_frame"] == [1.0] * 7 + [0.5] * 6  # moving's majority is 0 (7 of 13)
    # per requested class: image 0 (asked 0) hit; of the three asked 1, the left one missed
    assert scores["class_accuracy_by_class"] == {"0": 1.0, "1": pytest.approx(2 / 3)}
    assert scores["class_consistency_by_class"] == {"0": pytest.approx((7 / 13 + 1.0) / 2)}  # both clips asked 0
    judge.reset()
    judge.update_clips(torch.stack([moving, still]), torch.tensor([1, 0]), skip_first=True)
    # generated frames (after the first): moving has 6 frames left, 6 right: tie -> first seen (0) wins; still: 0
    scores = judge.compute()
    assert scores["keeps_first_frame_class"] == 0.5  # labels 1 and 0
    # both first frames show the square on the left (class 0), and both majorities are 0: both kept what they were shown
    assert scores["keeps_judged_first_frame_class"] == 1.0
    # 12 judged frames each; asked for 1 and 0: moving's frames 1-6 (left, 0) miss, 7-12 hit; still always hits
    assert scores["frame_class_accuracy_by_frame"] == [0.5] * 6 + [1.0] * 6
    # moving ties 6:6 and the first seen class (0) is its majority: frames 1-6 agree, 7-12 do not
    assert scores["majority_agreement_by_frame"] == [1.0] * 6 + [0.5] * 6
    # per class: the clip asked 1 (moving) kept nothing, split 6:6, hit 6 of 12 frames; the one asked 0 (still) all
    assert scores["keeps_first_frame_class_by_class"] == {"0": 1.0, "1": 0.0}
    assert scores["class_consistency_by_class"] == {"0": 1.0, "1": 0.5}
    assert scores["frame_class_accuracy_by_class"] == {"0": 1.0, "1": 0.5}
    assert "class_accuracy_by_class" not in scores  # reset() forgot the images


def test_classifier_round_trip_and_shrink_and_shift(tmp_path):
    torch.manual_seed(0)
    model = SmallClassifier(num_classes=10, width=4, feature_dim=8).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    logits, features = model(images)
    assert logits.shape == (2, 10) and features.shape == (2, 8)
    save_classifier(str(tmp_path / "c.pt"), model, {"test_accuracy": 0.5})
    loaded, metrics = load_classifier(str(tmp_path / "c.pt"))
    assert metrics == {"test_accuracy": 0.5}
    assert torch.equal(loaded(images)[0], logits)
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        load_classifier(str(tmp_path / "missing.pt"))
    shifted = shrink_and_shift(torch.ones(3, 3, 32, 32), item=20, canvas_item=28)
    # every image keeps exactly a 20×20 white item on black (bicubic of a constant image is the constant)
    assert [(img[0] > 0).sum().item() for img in shifted] == [400, 400, 400]


def test_classifier_sample_metrics_options_fail_at_construction():
    from grn_lightning.eval.classifier_metrics import ClassifierSampleMetrics

    with pytest.raises(ValueError, match="task"):
        ClassifierSampleMetrics("c.pt", task="t2a")
    with pytest.raises(ValueError, match="first frames"):
        ClassifierSampleMetrics("c.pt", task="i2v")
    with pytest.raises(ValueError, match="reconstruction_ceiling.*t2v samples have no real counterpart"):
        ClassifierSampleMetrics("c.pt", task="t2v", reference_shards="x.tar", reconstruction_ceiling=True)
    with pytest.raises(ValueError, match="reconstruction_ceiling"):
        ClassifierSampleMetrics("c.pt", task="t2i", reconstruction_ceiling=True)
    judge = ClassifierSampleMetrics("c.pt", task="t2v", samples_per_condition=2)
    requests = judge.requests()
    # 10 classes x 5 directions x 2 samples, each caption naming its class and direction
    assert len(requests) == 100
    assert requests[0] == {"cls": 0, "caption": "a t-shirt moving left", "direction": "left"}
    assert requests[-1]["caption"] == "an ankle boot standing still"


def test_reconstruction_ceiling_judges_the_tokenizers_own_round_trip_of_the_reference_media(idx_dir, tmp_path):
    """T2X ceilings: the reference clips (first frames skipped, as I2V samples are judged) and images, encoded and
    decoded by the module's tokenizer, score exactly what the judge gives the tokenizer's direct round trip."""
    from grn_lightning.data.fashion_mnist import build_fashion_mnist, caption_class
    from grn_lightning.eval.classifier_metrics import ClassifierSampleMetrics
    from grn_lightning.eval.real_media import iterate_real
    from grn_lightning.tokenizer.vae import HBQTokenizer
    from tests.test_t2x_module import tiny_module

    patterns = build_fashion_mnist(str(idx_dir), str(tmp_path / "fm"), train_clips=0, test_clips=5, val_images=4)
    torch.manual_seed(0)
    tokenizer = HBQTokenizer(latent_channels=16, num_rounds=4, preset="tiny").eval()
    save_classifier(str(tmp_path / "c.pt"), SmallClassifier(num_classes=10, width=4, feature_dim=8).eval(), {})
    classifier, _ = load_classifier(str(tmp_path / "c.pt"))
    module = tiny_module(tokenizer).eval()

    ceiling = ClassifierSampleMetrics(str(tmp_path / "c.pt"), task="i2v", samples_per_condition=3, batch_size=2,
                                      reference_shards=patterns["clips-test"], reconstruction_ceiling=True)
    direct = SampleJudge(classifier)
    for batch in iterate_real(patterns["clips-test"], "video", 32, 17, batch_size=3, limit=3):
        rebuilt = tokenizer.detokenize(tokenizer.tokenize(batch["pixels"])).clamp(-1, 1)
        directions = ["still" if c.endswith("standing still") else c.rsplit(" ", 1)[1] for c in batch["caption"]]
        classes = torch.tensor([caption_class(c) for c in batch["caption"]])
        direct.update_clips(rebuilt, classes, directions, skip_first=True)
    expected = {f"reconstruction_{key}": value for key, value in direct.compute().items()}
    scores = ceiling.reconstruction_scores(module)
    assert scores["reconstruction_num_clips"] == 3 and "reconstruction_keeps_first_frame_class" in scores
    assert scores.keys() == expected.keys()
    for key, value in expected.items():  # per-frame lists included
        assert scores[key] == pytest.approx(value), key

    # the judge's own ceiling: the same clips as they are, worked by hand from a judge's per-frame predictions
    # (frames 1-16; majority = the most frequent class, a tie going to the class seen first). The random judge above
    # answers one class for everything, so this one is fitted to read content: the item's horizontal place (frame
    # centroid in 10 bands), which moves along a clip and changes when a frame is mirrored.
    batch = next(iterate_real(patterns["clips-test"], "video", 32, 17, batch_size=3, limit=3))
    frames = batch["pixels"].permute(0, 2, 1, 3, 4).flatten(0, 1)
    weight = (frames[:, 0] + 1).clamp(min=0)
    bands = ((weight.sum(1) * torch.arange(32)).sum(1) / weight.sum((1, 2)) * 10 / 32).long().clamp(0, 9)
    reader = SmallClassifier(num_classes=10, width=4, feature_dim=8)
    optimizer = torch.optim.Adam(reader.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(reader(frames)[0], bands).backward()
        optimizer.step()
    save_classifier(str(tmp_path / "reader.pt"), reader.eval(), {})
    reader, _ = load_classifier(str(tmp_path / "reader.pt"))
    predicted = reader(frames)[0].argmax(1).view(3, 17)[:, 1:].tolist()
    assert len({p for clip in predicted for p in clip}) > 1, "the fitted judge should tell frames apart"
    labels = [caption_class(c) for c in batch["caption"]]
    majorities = [next(c for c in clip if clip.count(c) == max(map(clip.count, clip))) for clip in predicted]
    real = ClassifierSampleMetrics(str(tmp_path / "reader.pt"), task="i2v", samples_per_condition=3, batch_size=2,
                                   reference_shards=patterns["clips-test"], reconstruction_ceiling=True).real_scores()
    assert real["real_num_clips"] == 3
    assert real["real_keeps_first_frame_class"] == pytest.approx(sum(m == y for m, y in zip(majorities, labels)) / 3)
    hits_by_frame = [sum(clip[t] == y for clip, y in zip(predicted, labels)) / 3 for t in range(16)]
    assert real["real_frame_class_accuracy_by_frame"] == pytest.approx(hits_by_frame)
    agreement = [sum(clip[t] == m for clip, m in zip(predicted, majorities)) / 3 for t in range(16)]
    assert real["real_majority_agreement_by_frame"] == pytest.approx(agreement)

    images = ClassifierSampleMetrics(str(tmp_path / "c.pt"), task="t2i", batch_size=4, reference_limit=6,
                                     reference_shards=patterns["images-test"], reconstruction_ceiling=True)
    batch = next(iterate_real(patterns["images-test"], "image", 32, batch_size=6))
    predicted = classifier(tokenizer.detokenize(tokenizer.tokenize(batch["pixels"]))[:, :, 0].clamp(-1, 1))[0].argmax(1)
    scores = images.reconstruction_scores(module)
    assert scores["reconstruction_num_images"] == 6
    assert scores["reconstruction_class_accuracy"] == pytest.approx((predicted == batch["cls"]).float().mean().item())
    on_real = classifier(batch["pixels"][:, :, 0])[0].argmax(1)
    assert images.real_scores()["real_class_accuracy"] == pytest.approx((on_real == batch["cls"]).float().mean().item())


class _CountingC2I(torch.nn.Module):
    """A C2I stand-in whose sampler is configured for 50 steps, CFG 2, τ 1: it records every sampling call and draws
    an image whose content depends on the class and on the steps and τ it was asked for."""

    def __init__(self):
        super().__init__()
        from grn_lightning.generator.sampling.sampler import RefinementSampler

        self.sampler = RefinementSampler(steps=50, cfg_scale=2.0, temperature=1.0)
        self.calls: list[dict] = []
        self.device = torch.device("cpu")

    def sample_labels(self, ids, generator, **overrides):
        from types import SimpleNamespace

        from grn_lightning.generator.sampling.options import with_overrides

        self.calls.append(dict(overrides))
        sampler = with_overrides(self.sampler, overrides)
        self.last = (sampler.steps, sampler.temperature)
        n = len(ids)
        return SimpleNamespace(labels=ids, steps=torch.full((n,), float(sampler.steps)), rows_forwarded=n * sampler.steps,
                               forward_calls=sampler.steps)  # fmt: skip

    def decode(self, labels):
        steps, temperature = self.last
        images = torch.full((len(labels), 3, 32, 32), -1.0)
        for i, c in enumerate(labels.tolist()):
            images[i, :, 3 * c : 3 * c + 4, : steps // 2] = temperature
        return images

    def log(self, *args, **kwargs):
        pass


def test_classifier_sample_metrics_samples_each_distinct_setting_once(tmp_path):
    """Sweep entries that build the same sampler ({} and {"steps": 50} with a 50-step config; CFG 2 given or not)
    are sampled once and reuse the scores; every other entry is sampled, mask decoding included."""
    from types import SimpleNamespace

    from grn_lightning.eval.classifier_metrics import ClassifierSampleMetrics

    torch.manual_seed(0)
    save_classifier(str(tmp_path / "c.pt"), SmallClassifier(num_classes=10, width=4, feature_dim=8).eval(), {})
    sweep = [{}, {"steps": 50}, {"steps": 16}, {"steps": 16, "cfg_scale": 2.0}, {"steps": 16, "temperature": 0.7},
             {"steps": 16, "decoding": "mask", "selection": "confidence"}]  # fmt: skip
    judge = ClassifierSampleMetrics(str(tmp_path / "c.pt"), task="c2i", samples_per_condition=2, batch_size=10,
                                    sweep=sweep, output_json=str(tmp_path / "out.json"))  # fmt: skip
    module = _CountingC2I()
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], global_step=0)
    results = judge.evaluate(trainer, module, "test")

    # 20 requests in batches of 10: two calls per sampled entry; entries 1 and 3 are never sampled
    assert module.calls == [{}] * 2 + [{"steps": 16}] * 2 + [{"steps": 16, "temperature": 0.7}] * 2 + [sweep[5]] * 2
    assert [r.get("same_as_entry") for r in results] == [None, 0, None, 2, None, None]
    assert [r["sampling"] for r in results] == sweep
    assert [r["mean_steps"] for r in results] == [50.0, 50.0, 16.0, 16.0, 16.0, 16.0]
    assert results[1]["class_accuracy"] == results[0]["class_accuracy"]
