"""The Fashion-MNIST reproduction end to end at its reduced size (tools/repro.py --setting ci): data → classifier →
image tokenizer (fit + test) → token shards → GRN_ind / GRN_bit (fit + judged test with the sampling ablations) →
report, all through `grn fit/test` and configs/repro/. A lower bar than the CPU targets (the issue's: C2I ≥ 40%).

Measured on the 2-core machine (2026-12-05, with 700 tokenizer steps, two other trainings running beside it at lower
priority): 539 s for the stages; judge 0.815 on real test images; tokenizer 24.3 dB; GRN_ind 0.52 class accuracy
(50 samples; the judge scores the tokenizer's reconstructions of real test images at 0.79); GRN_bit 0.52. The
tokenizer now trains 600 steps to leave more room under the 10 minutes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grn_lightning.data.fashion_mnist import APT_PACKAGE, DEBIAN_DIR, IDX_FILES
from tests.test_eval_tools import _load_tool

ROOT = Path(__file__).resolve().parents[1]
CI_PSNR = 22.0  # 24.3 dB measured after 700 steps


def _idx_dir() -> str | None:
    folder = os.environ.get("FASHION_MNIST_DIR", DEBIAN_DIR)
    names = [name for pair in IDX_FILES.values() for name in pair]
    return folder if all((Path(folder) / name).is_file() for name in names) else None


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_reduced_reproduction_learns(tmp_path):
    idx = _idx_dir()
    if idx is None:
        pytest.skip(f"Fashion-MNIST not installed: `apt-get install {APT_PACKAGE}` or set FASHION_MNIST_DIR to a folder "
                    f"with {', '.join(n for pair in IDX_FILES.values() for n in pair)}")  # fmt: skip
    out = tmp_path / "repro"
    command = [sys.executable, "tools/repro.py", "--setting", "ci", "--out", str(out), "--idx-dir", idx,
               "--stages", "data,classifier,tokenizer,tokens,c2i,report"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)  # the 10 minutes
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    classifier = json.loads((out / "classifier.pt.json").read_text())
    assert classifier["test_accuracy"] >= 0.75  # the judge itself
    tokenizer = json.loads((out / "tokenizer_image" / "tb" / "test" / "metrics_protocol.json").read_text())[-1]["metrics"]
    assert tokenizer["psnr"] >= CI_PSNR
    ind = json.loads((out / "results" / "c2i_ind.json").read_text())["results"]
    bit = json.loads((out / "results" / "c2i_bit.json").read_text())["results"]
    # The lower bar for CI: C2I samples classified as their class >= 40% (chance 10%); GRN_bit trains 400
    # steps only and must show its classes above chance.
    assert ind[0]["class_accuracy"] >= 0.40, ind[0]
    assert bit[0]["class_accuracy"] >= 0.25, bit[0]
    assert all(row["num_images"] == 50 for row in ind)  # every sweep entry judged its 5 samples per class
    assert (out / "report" / "tables.md").read_text().count("|") > 50


def test_an_interrupted_fit_resumes_from_its_last_checkpoint_and_a_finished_one_is_skipped(tmp_path, monkeypatch):
    """make repro after a crash: last.ckpt exists (written every 200 steps) but the fit never exited 0, so the fit
    must run again from that checkpoint, neither be taken for finished nor start from step 0."""
    repro = _load_tool("repro")
    commands: list[list[str]] = []
    exits = iter([1, 0])  # the first fit is preempted, the second (the rerun of make repro) ends normally

    def fake_call(command, **kwargs):
        commands.append(command)
        last = tmp_path / "t2x" / "tb" / "fit" / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True, exist_ok=True)
        last.write_bytes(b"checkpoint")  # what a real fit leaves behind after 200 steps
        return next(exits)

    monkeypatch.setattr(repro.subprocess, "call", fake_call)
    runner = repro.Runner(tmp_path, {"device": "CPU"}, force=False)
    with pytest.raises(repro.StageFailed, match="t2x_fit failed"):
        runner.fit("t2x", ["--config", "configs/repro/t2x.yaml"])
    assert "--ckpt_path" not in commands[0]  # nothing to resume from yet
    assert not (tmp_path / "t2x" / "fit.done").exists()

    runner.fit("t2x", ["--config", "configs/repro/t2x.yaml"])  # make repro again
    assert commands[1][-2:] == ["--ckpt_path", str(tmp_path / "t2x" / "tb" / "fit" / "checkpoints" / "last.ckpt")]
    assert (tmp_path / "t2x" / "fit.done").exists()

    runner.fit("t2x", ["--config", "configs/repro/t2x.yaml"])  # a third time: finished, not run again
    assert len(commands) == 2
    assert [json.loads(line)["exit"] for line in (tmp_path / "runs.jsonl").read_text().splitlines()] == [1, 0]


@pytest.mark.parametrize("grid, count", [((5, 8, 8), 4), ((1, 8, 8), 16)])
def test_the_t2x_recipe_packs_every_sample_of_its_batches(grid, count):
    """configs/repro/t2x.yaml packs short rows (attention work grows with the row): a batch of 4 clips (17 frames at
    32², stride 4 x 4: 5 x 8 x 8 latent tokens, I2V or not) or 16 images must pack whole even with captions at the
    text encoder's full length, else training silently loses samples (train/dropped_samples)."""
    from grn_lightning.generator.t2x.bucket_packing import plan_bucket

    init = yaml.safe_load((ROOT / "configs" / "repro" / "t2x.yaml").read_text())["model"]["init_args"]
    packing, text = init["packing"], init["text_encoder"]["init_args"]["max_length"]
    i2v = [grid[0] > 1 and i % 2 == 0 for i in range(count)]
    plan = plan_bucket(grid, [text] * count, i2v, [None] * count, packing["token_budget"], packing["max_fraction"],
                       pad_multiple=packing["pad_multiple"])  # fmt: skip
    assert plan.dropped == [] and len(plan.kept_indices) == count
    if grid[0] > 1:  # 320 + 48 + 1 = 369 tokens a clip: one clip per row, the short rows the recipe is after
        assert plan.rows == count


def test_a_second_runner_on_the_same_folder_stops_naming_the_first_and_starts_once_it_ends(tmp_path):
    """Two runners on one folder would train the same stages twice on shared cores. The second stops with the first
    one's pid; once that process ends (here: killed, as a crash would end it) the folder can be run again."""
    repro = _load_tool("repro")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, 'tools'); import repro; from pathlib import Path; "
         f"r = repro.Runner(Path({str(tmp_path)!r}), {{'device': 'CPU'}}, force=False); print('held', flush=True); "
         "time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match=re.escape(f"another run is using {tmp_path} (pid {holder.pid}, started ")):
            repro.Runner(tmp_path, {"device": "CPU"}, force=False)
    finally:
        holder.kill()
        holder.wait()
    runner = repro.Runner(tmp_path, {"device": "CPU"}, force=False)  # the lock went with the process
    assert f"pid {os.getpid()}" in (tmp_path / "repro.lock").read_text()
    del runner


def _data_folder(out: Path) -> None:
    """out/data as the data stage leaves it (its shard patterns), for runner tests that fake every command."""
    (out / "data").mkdir(parents=True)
    splits = ("images-train", "images-val", "images-test", "clips-train", "clips-test")
    marker = {"patterns": {split: f"shards/{split}-{{000000..000000}}.tar" for split in splits}}
    (out / "data" / "fashion_mnist.json").write_text(json.dumps(marker))


def _fake_commands(repro, monkeypatch) -> list[list[str]]:
    """Replace the runner's subprocess.call: every command is recorded (the returned list) and exits 0, and a fit
    makes its run folder, where the runner marks it done."""
    commands: list[list[str]] = []

    def fake_call(command, **kwargs):
        commands.append(command)
        if "--trainer.default_root_dir" in command:
            Path(command[command.index("--trainer.default_root_dir") + 1]).mkdir(parents=True, exist_ok=True)
        return 0

    monkeypatch.setattr(repro.subprocess, "call", fake_call)
    return commands


def test_one_part_of_a_stage_runs_alone_and_a_misspelt_stage_is_refused(tmp_path, monkeypatch):
    """`--stages c2i_bit` runs GRN_bit's fit and judged test and nothing else (the tokenizer and token shards of an
    earlier run are reused); `c2i` runs both variants, GRN_ind first; an unknown part stops before any command."""
    repro = _load_tool("repro")
    _data_folder(tmp_path)
    _fake_commands(repro, monkeypatch)

    def stages_run(stages: str, out: Path) -> list[str]:
        repro.main(["--setting", "ci", "--out", str(out), "--stages", stages])
        return [json.loads(line)["name"] for line in (out / "runs.jsonl").read_text().splitlines()]

    assert stages_run("c2i_bit", tmp_path) == ["c2i_bit_fit", "c2i_bit_test"]
    other = tmp_path / "both"
    _data_folder(other)
    assert stages_run("c2i", other) == ["c2i_ind_fit", "c2i_ind_test", "c2i_bit_fit", "c2i_bit_test"]
    with pytest.raises(SystemExit):
        repro.main(["--setting", "ci", "--out", str(tmp_path / "typo"), "--stages", "c2i_bits"])
    assert not (tmp_path / "typo").exists()


def test_a_training_seed_reaches_every_fit_and_a_folder_keeps_one_seed(tmp_path, monkeypatch, capsys):
    """`--train-seed 7` (make repro REPRO_TRAIN_SEED=7) appends `--seed_everything 7` to every `grn fit` and to no
    judged test or data command; a folder run with the configs' seeds refuses a resume with seed 7 before any command
    (finished stages would be skipped and two seeds' models mixed), and the message names the fix."""
    repro = _load_tool("repro")
    commands = _fake_commands(repro, monkeypatch)
    for out in (tmp_path / "seed7", tmp_path / "config"):
        _data_folder(out)
    repro.main(["--setting", "ci", "--out", str(tmp_path / "seed7"), "--stages", "c2i_bit", "--train-seed", "7"])
    fit, test = commands
    assert fit[1:4] == ["-m", "grn_lightning.cli", "fit"] and test[1:4] == ["-m", "grn_lightning.cli", "test"]
    assert fit[-2:] == ["--seed_everything", "7"] and "--seed_everything" not in test
    assert (tmp_path / "seed7" / "train_seed").read_text() == "7\n"

    repro.main(["--setting", "ci", "--out", str(tmp_path / "config"), "--stages", "c2i_bit"])
    assert "--seed_everything" not in commands[2]
    (tmp_path / "config" / "train_seed").unlink()  # a folder of an older run: runs.jsonl, no train_seed file
    with pytest.raises(SystemExit):
        repro.main(["--setting", "ci", "--out", str(tmp_path / "config"), "--stages", "c2i_bit", "--force",
                    "--train-seed", "7"])  # fmt: skip
    err = capsys.readouterr().err
    assert len(commands) == 4 and "training seed 'config', not '7'" in err and "own --out" in err
