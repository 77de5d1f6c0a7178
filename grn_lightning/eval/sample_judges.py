"""Judge generated images and clips with a dataset classifier (eval/classifier.py): class accuracy, Fréchet distance in
the classifier's penultimate features, class consistency across frames, motion direction, first-frame class.

`SampleJudge` accumulates batches (like the metric objects of metrics.py) and `compute()` returns plain floats.
Motion is read from the intensity-weighted centroid of each frame (a bright item on a black canvas, as in
Moving MNIST): its displacement from the first to the last frame names the direction, or "still" when it is
shorter than `still_threshold` pixels.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from grn_lightning.eval.metrics import frechet_distance

DIRECTIONS = ("left", "right", "up", "down", "still")


def centroid_track(clip: torch.Tensor) -> torch.Tensor:
    """clip [3, T, H, W] in [-1, 1] -> (row, column) of each frame's intensity-weighted centroid, float64 [T, 2].
    A black frame has no centroid: its entry is the canvas centre."""
    intensity = ((clip.double().clamp(-1, 1) + 1) / 2).mean(dim=0)  # [T, H, W] in [0, 1]
    t, h, w = intensity.shape
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    mass = intensity.sum(dim=(1, 2))
    safe = mass.clamp_min(1e-9)
    centre_r = torch.where(mass > 1e-9, (intensity * rows).sum(dim=(1, 2)) / safe, torch.full_like(mass, (h - 1) / 2))
    centre_c = torch.where(mass > 1e-9, (intensity * cols).sum(dim=(1, 2)) / safe, torch.full_like(mass, (w - 1) / 2))
    return torch.stack([centre_r, centre_c], dim=1)


def motion_direction(track: torch.Tensor, still_threshold: float = 3.0) -> str:
    """Direction of a centroid track [T, 2]: the dominant axis of last − first; "still" below the threshold."""
    d_row, d_col = (track[-1] - track[0]).tolist()
    if max(abs(d_row), abs(d_col)) < still_threshold:
        return "still"
    if abs(d_col) >= abs(d_row):
        return "right" if d_col > 0 else "left"
    return "down" if d_row > 0 else "up"


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def features_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two feature sets [N, D] (Gaussian fits, metrics.frechet_distance)."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


class SampleJudge:
    """Accumulates classifier judgements of generated images and clips.

    Args:
        classifier: a module mapping images [B, 3, H, W] in [-1, 1] to (logits, features) (SmallClassifier).
        reference_features: penultimate features [N, D] of real test images (the Fréchet reference), or None.
        still_threshold: centroid displacement (pixels) below which a clip counts as standing still.
        batch_size: frames per classifier forward.
    """

    def __init__(self, classifier: torch.nn.Module, reference_features: np.ndarray | None = None,
                 still_threshold: float = 3.0, batch_size: int = 256) -> None:  # fmt: skip
        self.classifier, self.reference = classifier, reference_features
        self.still_threshold, self.batch_size = still_threshold, batch_size
        self.reset()

    def reset(self) -> None:
        self.image_hits, self.features = [], []
        # the requested class of every judged image / clip, in update order: the per-class breakdown of compute()
        self.image_classes, self.clip_classes, self.first_frame_classes = [], [], []
        self.consistency, self.direction_hits, self.first_frame_hits, self.judged_first_frame_hits = [], [], [], []
        # per clip, per judged frame: judged as the requested class / as the clip's majority class (where along a
        # clip the class is lost: at its start, at its end, or throughout)
        self.frame_hit_rows, self.frame_agreement_rows = [], []

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted class [B], features [B, D]) of images [B, 3, H, W] in [-1, 1], on the classifier's device."""
        device = next(self.classifier.parameters()).device
        preds, feats = [], []
        for start in range(0, images.shape[0], self.batch_size):
            logits, features = self.classifier(images[start : start + self.batch_size].to(device).float().clamp(-1, 1))
            preds.append(logits.argmax(dim=1).cpu())
            feats.append(features.float().cpu())
        return torch.cat(preds), torch.cat(feats)

    def update_images(self, images: torch.Tensor, classes: torch.Tensor) -> None:
        """Generated images [B, 3, H, W] (or [B, 3, 1, H, W]) requested as `classes` [B]."""
        if images.ndim == 5:
            images = images[:, :, 0]
        predicted, features = self.classify(images)
        self.image_hits += (predicted == classes.cpu()).tolist()
        self.image_classes += classes.tolist()
        self.features.append(features.numpy())

    def update_clips(self, clips: torch.Tensor, classes: torch.Tensor, directions: list[str] | None = None,
                     skip_first: bool = False) -> None:  # fmt: skip
        """Generated clips [B, 3, T, H, W] requested as `classes` [B] moving in `directions`.

        skip_first: the first frame was given (I2V): class judgements use the generated frames only, and the
        clip "keeps the first frame's class" when the majority class of those frames is the requested class (the
        dataset label of the given frame). It also "keeps the judged first frame's class" when that majority is the
        class the judge gives frame 0 itself: the generator kept what it was shown, whether or not the judge reads
        the item right (the label-based score cannot exceed the judge's accuracy on clip frames).
        """
        b, _, t = clips.shape[:3]
        frames = clips.permute(0, 2, 1, 3, 4).flatten(0, 1)
        predicted = self.classify(frames)[0].view(b, t)
        judged = predicted[:, 1:] if skip_first else predicted
        self.clip_classes += classes.tolist()
        for i in range(b):
            votes = Counter(judged[i].tolist())
            majority, count = votes.most_common(1)[0]
            self.consistency.append(count / judged.shape[1])
            self.frame_hit_rows.append((judged[i] == int(classes[i])).tolist())
            self.frame_agreement_rows.append((judged[i] == majority).tolist())
            if skip_first:
                self.first_frame_hits.append(majority == int(classes[i]))
                self.first_frame_classes.append(int(classes[i]))
                self.judged_first_frame_hits.append(majority == int(predicted[i, 0]))
            if directions is not None:
                moved = motion_direction(centroid_track(clips[i].cpu()), self.still_threshold)
                self.direction_hits.append(moved == directions[i])

    def compute(self) -> dict[str, float | list[float] | dict[str, float]]:
        """Plain floats, and for clips of one length two lists over the judged frames (I2V: frames after the
        first): `frame_class_accuracy_by_frame` (share of clips whose frame k is judged the requested class) and
        `majority_agreement_by_frame` (share whose frame k is judged the clip's majority class). Each class score
        also comes per requested class, as `<score>_by_class` {class id as a string: score} over the classes that
        were requested: a miss of the mean shows as the classes it comes from."""
        out: dict[str, float | list[float] | dict[str, float]] = {}
        if self.image_hits:
            out["class_accuracy"] = float(np.mean(self.image_hits))
            out["class_accuracy_by_class"] = _by_class(self.image_hits, self.image_classes)
            out["num_images"] = len(self.image_hits)
            features = np.concatenate(self.features)
            if self.reference is not None and len(features) > 1:
                out["frechet_distance"] = features_frechet(features, self.reference)
        if self.consistency:
            out["class_consistency"] = float(np.mean(self.consistency))
            frame_accuracy = [float(np.mean(row)) for row in self.frame_hit_rows]
            out["frame_class_accuracy"] = float(np.mean(frame_accuracy))
            out["num_clips"] = len(self.consistency)
            out["class_consistency_by_class"] = _by_class(self.consistency, self.clip_classes)
            out["frame_class_accuracy_by_class"] = _by_class(frame_accuracy, self.clip_classes)
            if len({len(row) for row in self.frame_hit_rows}) == 1:  # one clip length: a value per frame index
                out["frame_class_accuracy_by_frame"] = np.mean(self.frame_hit_rows, axis=0).tolist()
                out["majority_agreement_by_frame"] = np.mean(self.frame_agreement_rows, axis=0).tolist()
        if self.direction_hits:
            out["direction_accuracy"] = float(np.mean(self.direction_hits))
        if self.first_frame_hits:
            out["keeps_first_frame_class"] = float(np.mean(self.first_frame_hits))
            out["keeps_judged_first_frame_class"] = float(np.mean(self.judged_first_frame_hits))
            out["keeps_first_frame_class_by_class"] = _by_class(self.first_frame_hits, self.first_frame_classes)
        return out


def _by_class(values: list, classes: list[int]) -> dict[str, float]:
    """{class id as a string (a JSON key): mean of the values of the items requested as that class}, ascending."""
    grouped: dict[int, list] = {}
    for value, cls in zip(values, classes, strict=True):
        grouped.setdefault(int(cls), []).append(float(value))
    return {str(cls): float(np.mean(grouped[cls])) for cls in sorted(grouped)}
