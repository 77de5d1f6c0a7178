"""Tables and plots of tools/repro.py from what the stages wrote (results/*.json, metrics_protocol.json, TensorBoard
event files, runs.jsonl): tables.md, results.json and PNG plots under <out>/report/. Values are reported as found;
a stage that did not run shows as "not run"."""

from __future__ import annotations

import json
from pathlib import Path

from repro_settings import sweep_entries

from grn_lightning.data.fashion_mnist import CLASS_NAMES

TARGETS = {"psnr": 26.0, "c2i": 0.80, "t2i": 0.75, "direction": 0.75, "consistency": 0.90, "i2v": 0.90}


def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "not run"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _mark(value, target) -> str:
    return "" if value is None else (" ✓" if value >= target else " ✗")


def _tokenizer_metrics(out: Path, name: str) -> dict | None:
    entries = _json(out / name / "tb" / "test" / "metrics_protocol.json")
    return entries[-1]["metrics"] if entries else None


def _loss_curves(out: Path, report: Path) -> list[str]:
    """One PNG per fit run with its training loss tags (TensorBoard scalars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    written = []
    for run in ("tokenizer_image", "tokenizer_video", "c2i_ind", "c2i_bit", "t2x"):
        folder = out / run / "tb" / "fit"
        if not folder.is_dir():
            continue
        events = EventAccumulator(str(folder)).Reload()
        tags = [t for t in events.Tags()["scalars"] if t.startswith("train/") and ("loss" in t or t.endswith("rec"))]
        if not tags:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for tag in tags:
            points = events.Scalars(tag)
            ax.plot([p.step for p in points], [p.value for p in points], label=tag)
        ax.set_xlabel("step"), ax.set_yscale("log"), ax.set_title(f"{run}: training loss"), ax.legend(fontsize=7)
        fig.tight_layout()
        path = report / f"loss_{run}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def _curve(report: Path, name: str, xs: list[float], rows: list[dict], xlabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(xs, [r.get("class_accuracy") for r in rows], "o-", color="tab:blue", label="class accuracy")
    ax.set_xlabel(xlabel), ax.set_ylabel("class accuracy", color="tab:blue")
    twin = ax.twinx()
    twin.plot(xs, [r.get("frechet_distance") for r in rows], "s--", color="tab:red", label="Fréchet distance")
    twin.set_ylabel("Fréchet distance (classifier features)", color="tab:red")
    ax.set_title(f"GRN_ind C2I: quality vs {xlabel}")
    fig.tight_layout()
    path = report / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# seconds cell of a sweep row whose sampler equals an earlier row's (classifier_metrics.sampling_key): scored once
_REUSED = " (same sampler as an earlier sweep entry: scored once)"
TIME_STRIDE = 4  # clip frames per latent frame after the first, in the joint tokenizer (configs/repro/tokenizer_video.yaml)


def _latent_frame_groups(frames: int) -> list[tuple[int, int]]:
    """[start, stop) clip frames of each latent frame of the causal tokenizer: frame 0 alone, then TIME_STRIDE frames
    each (17 frames: 0 | 1-4 | ... | 13-16)."""
    return [(0, 1)] + [(start, min(start + TIME_STRIDE, frames)) for start in range(1, frames, TIME_STRIDE)]


def _latent_frame_means(values: list[float] | None, first_frame: int) -> list[float | None]:
    """Per-frame values (list index k = clip frame first_frame + k) averaged over each latent frame's clip frames;
    None for a latent frame with no values (I2V's given frame 0)."""
    if not values:
        return []
    means = []
    for start, stop in _latent_frame_groups(first_frame + len(values)):
        picked = values[max(start - first_frame, 0) : max(stop - first_frame, 0)]
        means.append(sum(picked) / len(picked) if picked else None)
    return means


def _per_frame_lines(t2v: dict, i2v: dict) -> list[str]:
    """Where along a clip the class is lost: the per-frame judge scores grouped by the tokenizer's latent frames."""
    rows = [("T2V", "frame caption-class accuracy", t2v.get("frame_class_accuracy_by_frame"), 0),
            ("T2V", "agreement with the clip's majority class", t2v.get("majority_agreement_by_frame"), 0),
            ("I2V", "frame class accuracy", i2v.get("frame_class_accuracy_by_frame"), 1),
            ("I2V", "agreement with the clip's majority class", i2v.get("majority_agreement_by_frame"), 1),
            ("I2V ceiling", "frame class accuracy", i2v.get("reconstruction_frame_class_accuracy_by_frame"), 1),
            ("I2V real clips", "frame class accuracy", i2v.get("real_frame_class_accuracy_by_frame"), 1)]  # fmt: skip
    frames = max((first + len(values) for _, _, values, first in rows if values), default=0)
    rows = [(task, measure, _latent_frame_means(values, first)) for task, measure, values, first in rows if values]
    if not rows:
        return []
    groups = _latent_frame_groups(frames)
    width = len(groups)
    heads = [f"frame {a}" if b - a == 1 else f"frames {a}-{b - 1}" for a, b in groups]
    lines = [f"Per latent frame of the joint tokenizer (frame 0 is encoded alone, then {TIME_STRIDE} frames per latent frame; "
             "I2V frame 0 is the given one):", "", "| task | measure | " + " | ".join(heads) + " |",
             "|---|---|" + "---|" * width]  # fmt: skip
    for task, measure, means in rows:
        cells = ["given" if m is None else _fmt(m) for m in means] + [""] * (width - len(means))  # None: I2V frame 0
        lines.append(f"| {task} | {measure} | " + " | ".join(cells) + " |")
    return lines + [""]


def _per_class_lines(c2i: dict, t2i: dict, t2v: dict, i2v: dict) -> list[str]:
    """Where a mean score's miss comes from: each class score per requested class (`SampleJudge`'s `*_by_class`),
    beside the tokenizer ceiling and the real media where the run judged them; rows a run did not write are left out."""
    rows = [("C2I (GRN_ind)", "class accuracy", c2i, "class_accuracy_by_class"),
            ("C2I ceiling", "class accuracy", c2i, "reconstruction_class_accuracy_by_class"),
            ("T2I", "caption-class accuracy", t2i, "class_accuracy_by_class"),
            ("T2I ceiling", "caption-class accuracy", t2i, "reconstruction_class_accuracy_by_class"),
            # the judge on the real test images: the same in the C2I and T2I results (one judge, one test split)
            ("real test images", "class accuracy", t2i if t2i.get("real_class_accuracy_by_class") else c2i,
             "real_class_accuracy_by_class"),
            ("T2V", "class consistency", t2v, "class_consistency_by_class"),
            ("T2V", "frame caption-class accuracy", t2v, "frame_class_accuracy_by_class"),
            ("I2V", "keeps the first frame's class", i2v, "keeps_first_frame_class_by_class"),
            ("I2V ceiling", "keeps the first frame's class", i2v, "reconstruction_keeps_first_frame_class_by_class"),
            ("I2V real clips", "keeps the first frame's class", i2v, "real_keeps_first_frame_class_by_class"),
            ("I2V", "class consistency", i2v, "class_consistency_by_class")]  # fmt: skip
    rows = [(task, measure, row[key]) for task, measure, row, key in rows if row.get(key)]
    if not rows:
        return []
    classes = sorted({int(c) for _, _, values in rows for c in values})
    names = [CLASS_NAMES[c] if c < len(CLASS_NAMES) else str(c) for c in classes]
    lines = ["Per requested class (the miss of a mean score, class by class):", "",
             "| task | measure | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(classes)]  # fmt: skip
    for task, measure, values in rows:
        cells = [_fmt(values.get(str(c)), 2) if str(c) in values else "" for c in classes]
        lines.append(f"| {task} | {measure} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(out: Path, s: dict) -> Path:
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    lines, results = [], {}
    classifier = _json(out / "classifier.pt.json")
    results["classifier"] = classifier
    lines += ["### Classifier (judge)", "", "| real test accuracy | shrunk/shifted test accuracy | Fréchet floor (real train vs real test) |",
              "|---|---|---|"]  # fmt: skip
    c = classifier or {}
    lines += [f"| {_fmt(c.get('test_accuracy'))} | {_fmt(c.get('test_shifted_accuracy'))} | {_fmt(c.get('frechet_floor_train_vs_test'))} |", ""]
    lines += ["### Tokenizers (test split, 32²)", "", "| tokenizer | steps | PSNR (dB) | SSIM | target PSNR ≥ 26 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, label, steps in (("tokenizer_image", "HBQ M=4, C=8, stride 4 (the C2I tokenizer)", s["tokenizer_steps"]),
                               ("tokenizer_video", "joint image+video M=4, C=16, stride 4×4 (images)", s["video_tokenizer_steps"])):  # fmt: skip
        m = _tokenizer_metrics(out, name)
        results[name] = m
        psnr = None if m is None else m.get("psnr")
        lines.append(f"| {label} | {steps} | {_fmt(psnr, 2)} | {_fmt(None if m is None else m.get('ssim'))} | "
                     f"{_mark(psnr, TARGETS['psnr']).strip() if name == 'tokenizer_image' else ''} |")  # fmt: skip
    lines += ["", f"### HBQ rounds M vs continuous (paper Tab. 2 in miniature; C=8, stride 4, {s['ablation_steps']} steps each)", "",
              "| tokenizer | PSNR (dB) | SSIM |", "|---|---|---|"]  # fmt: skip
    for name, label in (("tokenizer_m2", "HBQ M=2"), ("tokenizer_m4", "HBQ M=4"), ("tokenizer_m8", "HBQ M=8"),
                        ("tokenizer_continuous", "continuous (no quantization)")):  # fmt: skip
        m = _tokenizer_metrics(out, name)
        results[name] = m
        lines.append(f"| {label} | {_fmt(None if m is None else m.get('psnr'), 2)} | {_fmt(None if m is None else m.get('ssim'))} |")
    lines.append("")
    ind, bit = _json(out / "results" / "c2i_ind.json"), _json(out / "results" / "c2i_bit.json")
    results["c2i_ind"], results["c2i_bit"] = ind, bit
    lines += ["### C2I (class-balanced samples, config sampling)", "",
              "| model | training steps | samples | class accuracy (target ≥ 0.80) | Fréchet distance | mean steps |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for label, r, steps in (("GRN_ind", ind, s["c2i_steps"]), ("GRN_bit", bit, s["c2i_bit_steps"])):
        row = (r or {"results": [{}]})["results"][0]
        acc = row.get("class_accuracy")
        lines.append(f"| {label} | {steps} | {_fmt(row.get('num_images'))} | {_fmt(acc)}{_mark(acc, TARGETS['c2i'])} | "
                     f"{_fmt(row.get('frechet_distance'), 2)} | {_fmt(row.get('mean_steps'), 1)} |")  # fmt: skip
    ceiling = (ind or {"results": [{}]})["results"][0]
    lines += ["", f"The judge on the tokenizer's reconstructions of real test images (the best a generator on these tokens "
              f"can score): class accuracy {_fmt(ceiling.get('reconstruction_class_accuracy'))}, Fréchet distance "
              f"{_fmt(ceiling.get('reconstruction_frechet_distance'), 2)}; on the real test images themselves (the judge's "
              f"own ceiling): {_fmt(ceiling.get('real_class_accuracy'))}.", ""]  # fmt: skip
    t2i, t2v, i2v = (_json(out / "results" / f"{k}.json") for k in ("t2i", "t2v", "i2v"))
    results.update(t2i=t2i, t2v=t2v, i2v=i2v)
    first = [(r or {"results": [{}]})["results"][0] for r in (t2i, t2v, i2v)]
    # (task, measure, scores, key, target); the ceilings are in the t2i (images) and i2v (clips) results
    t2x_rows = [("T2I", "caption-class accuracy", first[0], "class_accuracy", "t2i"),
                ("T2I", "Fréchet distance", first[0], "frechet_distance", None),
                ("T2V", "direction accuracy", first[1], "direction_accuracy", "direction"),
                ("T2V", "class consistency across frames", first[1], "class_consistency", "consistency"),
                ("T2V", "frame caption-class accuracy", first[1], "frame_class_accuracy", None),
                ("I2V", "keeps the first frame's class (its label)", first[2], "keeps_first_frame_class", "i2v"),
                ("I2V", "keeps the class the judge gives the first frame", first[2], "keeps_judged_first_frame_class", None),
                ("I2V", "class consistency across frames", first[2], "class_consistency", None),
                ("I2V", "frame class accuracy", first[2], "frame_class_accuracy", None),
                ("I2V", "direction accuracy", first[2], "direction_accuracy", None)]  # fmt: skip
    lines += ["### T2I / T2V / I2V (random-init umT5-structured text encoder, byte tokenizer)", "",
              "Ceilings: the judge on the real test images (T2I rows) and on the I2V reference clips, frames after the "
              "first (clip rows), as they are (real media: the best any generator can score with this judge) and as "
              "the joint tokenizer reconstructs them (tokenizer ceiling: the best a generator decoded by it can "
              "score).", "",
              "| task | measure | value | tokenizer ceiling | real media | target |", "|---|---|---|---|---|---|"]  # fmt: skip
    for task, measure, row, key, target in t2x_rows:
        digits = 2 if key == "frechet_distance" else 3
        reference = first[0] if task == "T2I" else first[2]
        bound, real = reference.get("reconstruction_" + key), reference.get("real_" + key)
        mark = _mark(row.get(key), TARGETS[target]) if target else ""
        target_text = f"≥ {TARGETS[target]:.2f}" if target else ("floor above" if key == "frechet_distance" else "")
        # real images are the Fréchet reference (no distance of their own): the floor is real train vs test
        real_text = "" if key == "frechet_distance" else _fmt(real, digits)
        lines.append(f"| {task} | {measure} | {_fmt(row.get(key), digits)}{mark} | {_fmt(bound, digits)} | "
                     f"{real_text} | {target_text} |")  # fmt: skip
    lines.append("")
    lines += _per_frame_lines(first[1], first[2])
    lines += _per_class_lines((ind or {"results": [{}]})["results"][0], *first)
    if ind:
        rows = list(ind["results"])
        entries = list(sweep_entries(s))
        extra = _json(out / "results" / "c2i_ind_curves.json")  # an optional second sweep (more CFG / τ points)
        for row in (extra or {"results": []})["results"]:
            table, key = ("cfg", "cfg_scale") if "cfg_scale" in row["sampling"] else ("tau", "temperature")
            entries.append((table, f"{row['sampling'][key]}", row["sampling"]))
            rows.append(row)
        titles = {"decoding": "Refinement vs mask-based decoding at equal steps (paper Tab. 7)",
                  "selection": "Random vs confidence-based selection (paper Tab. 10)",
                  "adaptive": "Entropy-guided adaptive steps vs fixed 50 (paper Tab. 11)",
                  "cfg": "CFG scale sweep", "tau": "Temperature τ sweep"}  # fmt: skip
        for table, title in titles.items():
            picked = [(label, row) for (t, label, _), row in zip(entries, rows) if t == table]
            if table in ("cfg", "tau"):
                picked.sort(key=lambda item: float(item[0]))
            lines += [f"### {title}", "", "| setting | class accuracy | Fréchet distance | mean steps | forward rows | seconds |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            lines += [f"| {label} | {_fmt(r.get('class_accuracy'))} | {_fmt(r.get('frechet_distance'), 2)} | {_fmt(r.get('mean_steps'), 1)} | "
                      f"{_fmt(r.get('rows_forwarded'))} | {_fmt(r.get('seconds'), 1)}{_REUSED if 'same_as_entry' in r else ''} |"
                      for label, r in picked]  # fmt: skip
            lines.append("")
            if table in ("cfg", "tau") and len(picked) > 1:
                xs = [float(label) for label, _ in picked]
                name = _curve(report, f"quality_vs_{table}", xs, [r for _, r in picked], "CFG scale" if table == "cfg" else "τ")
                lines += [f"![quality vs {table}]({name})", ""]
    try:
        for name in _loss_curves(out, report):
            lines += [f"![{name}]({name})", ""]
    except ImportError as err:  # tensorboard/matplotlib missing: tables only
        lines += [f"(loss curves not drawn: {err})", ""]
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()] if (out / "runs.jsonl").exists() else []
    lines += ["### Runs", "", "| stage | wall time (s) | commit | device | exit |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['seconds']} | {r['commit']} | {r['device']} | {r['exit']} |" for r in runs]
    (report / "tables.md").write_text("\n".join(lines) + "\n")
    (report / "results.json").write_text(json.dumps({"results": results, "runs": runs}, indent=1, default=str))
    return report / "tables.md"
