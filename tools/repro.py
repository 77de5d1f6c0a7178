#!/usr/bin/env python
"""Fashion-MNIST reproduction of GRN in miniature (docs/REPRODUCTION.md): every stage through `grn fit/test` and the
configs in configs/repro/, then the tables and plots.

    python tools/repro.py --setting cpu --out outputs/repro              (make repro)
    python tools/repro.py --setting gpu --out outputs/repro_gpu          (make repro REPRO_SETTING=gpu)
    python tools/repro.py --setting ci --out /tmp/repro --stages data,classifier,tokenizer,tokens,c2i

Stages (each skipped when its result exists, so an interrupted run resumes): data (tools/make_fashion_mnist.py),
classifier (tools/train_classifier.py), tokenizer (image M=4 fit + test), ablation (M=2, M=8, continuous),
tokens (tools/tokenize_shards.py), c2i (GRN_ind with the sampling sweeps, GRN_bit; either alone: c2i_ind, c2i_bit),
t2x (joint tokenizer, then T2I + T2V + I2V), report (tables.md, results.json, PNG plots). Every command, its wall
time and the commit go to runs.jsonl; the report quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from repro_settings import SETTINGS, sweep_entries  # noqa: E402
from repro_report import write_report  # noqa: E402

from grn_lightning.data.fashion_mnist import read_patterns  # noqa: E402
from grn_lightning.training.thread_budget import write_thread_budget  # noqa: E402

CONFIGS = "configs/repro"


def _utc(seconds: float | None = None) -> str:
    """A UTC time stamp as runs.jsonl and repro.lock write it (now, or `seconds` since the epoch)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _lock_folder(out: Path):
    """Hold an exclusive lock on `out/repro.lock` for this process's life (released by the OS when it ends, crash or
    kill included, so a stopped run never leaves a stale lock). A second runner on the same folder would train the
    stages the first is training and split its cores (three processes on two cores took a fit from 0.21 to 4.3
    s/step in the fourteenth session's run): it stops here, naming the first one's pid."""
    import fcntl

    handle = open(out / "repro.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise SystemExit(
            f"tools/repro.py: another run is using {out} ({holder}). Wait for it to end, or stop it (kill <pid>) and "
            "start again: finished stages are kept and a stopped fit resumes from its last checkpoint"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, started {_utc()}")
    handle.flush()
    return handle


class Runner:
    """Runs stage commands, logs each (wall time, commit, device, concurrent jobs) to runs.jsonl. With `jobs` > 1
    the chains of main() run side by side, each command given the cores shared out among the chains still running
    (on 2 CPU cores two one-thread trainings finish sooner than the same two run one after the other on two threads
    each), and when a chain ends, the fits still running take up its cores (`ThreadBudget` files)."""

    def __init__(self, out: Path, setting: dict, force: bool, jobs: int = 1, train_seed: int | None = None) -> None:
        self.out, self.setting, self.force, self.jobs = out, setting, force, jobs
        # every `grn fit` gets `--seed_everything train_seed` (None: the configs' seeds); data and judge keep theirs, so
        # two runs differ only in how their models were trained: the spread a one-run comparison of recipes hides
        self.train_seed = train_seed
        self.out.mkdir(parents=True, exist_ok=True)
        self._folder_lock = _lock_folder(out)
        check_train_seed(out, train_seed)  # under the folder's lock: one runner, one training seed per folder
        self.log = out / "runs.jsonl"
        self._lock = threading.Lock()
        self.chains_left = jobs  # main() sets the chains it starts
        self._budgets: set[Path] = set()  # thread-budget files of the fits running now

    def threads(self) -> int | None:
        """Threads for a command of one chain now: the cores over the chains still running (None with one job: the
        process's own default)."""
        if self.jobs <= 1:
            return None
        return max(1, (os.cpu_count() or 1) // max(1, min(self.jobs, self.chains_left)))

    def chain_done(self) -> None:
        """A chain has ended: the fits still running get its share of the cores."""
        with self._lock:
            self.chains_left -= 1
            for path in self._budgets:
                write_thread_budget(path, self.threads())

    def run(self, name: str, command: list[str], done: Path | None = None, budget: Path | None = None) -> None:
        """Run `command` (logged with its wall time) unless `done` exists. budget: the command's `ThreadBudget` file,
        kept at its share of the cores while it runs."""
        if done is not None and done.exists() and not self.force:
            print(f"== {name}: done ({done})", flush=True)
            return
        print(f"== {name}: {' '.join(command)}", flush=True)
        started, commit = time.time(), _commit()  # the tree that runs, not the one there when it ends
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        with self._lock:
            threads = self.threads()
            if threads is not None:
                env["OMP_NUM_THREADS"] = str(threads)
                if budget is not None:
                    write_thread_budget(budget, threads)
                    self._budgets.add(budget)
        try:
            with open(self.out / f"{name}.log", "w") as log:
                code = subprocess.call(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            with self._lock:
                self._budgets.discard(budget)
        entry = {"name": name, "command": command, "seconds": round(time.time() - started, 1), "exit": code,
                 "commit": commit, "device": self.setting["device"], "jobs": self.jobs, "threads_at_start": threads,
                 "started_utc": _utc(started),
                 "time_utc": _utc()}  # fmt: skip
        with self._lock, open(self.log, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if code != 0:
            tail = (self.out / f"{name}.log").read_text().splitlines()[-30:]
            raise StageFailed(f"stage {name} failed (exit {code}); last lines of {self.out / name}.log:\n" + "\n".join(tail))

    def fit(self, name: str, args: list[str]) -> None:
        """`grn fit <args>` of the run whose checkpoints are under out/name, finished once it has exited 0. A fit
        stopped before (crash, preemption, Ctrl-C) has left a last.ckpt, written every 200 steps: it resumes from
        there, data stream included, instead of being taken for finished (last.ckpt alone says nothing) or restarted."""
        done, last = self.out / name / "fit.done", _ckpt(self.out, name)
        resume = ["--ckpt_path", str(last)] if last.exists() and not done.exists() and not self.force else []
        budget = self.out / name / "threads" if self.jobs > 1 else None
        if budget is not None:  # appended to the config's callbacks (and to any list the args set)
            callback = {"class_path": "grn_lightning.training.thread_budget.ThreadBudget", "init_args": {"path": str(budget)}}
            args = [*args, f"--trainer.callbacks+={json.dumps(callback)}"]
        seed = [] if self.train_seed is None else ["--seed_everything", str(self.train_seed)]
        self.run(f"{name}_fit", _grn("fit", *args, *seed, *resume), done, budget)
        done.touch()


class StageFailed(RuntimeError):
    pass


def check_train_seed(out: Path, train_seed: int | None) -> None:
    """Keep one folder to one training seed: finished stages are skipped, so a run resumed with another
    `--train-seed` would mix models of two seeds. The seed goes to out/train_seed; a folder that already has runs
    (runs.jsonl) and no such file was run with the configs' seeds."""
    marker, wanted = out / "train_seed", "config" if train_seed is None else str(train_seed)
    found = marker.read_text().strip() if marker.exists() else "config" if (out / "runs.jsonl").exists() else None
    if found is not None and found != wanted:
        raise ValueError(f"{out} holds a run with training seed {found!r}, not {wanted!r}: give each training seed its "
                         "own --out (make repro: REPRO_OUT, or leave it to REPRO_TRAIN_SEED's default folder)")
    marker.write_text(wanted + "\n")


def _commit() -> str:
    """Short HEAD, with "-dirty" when tracked files differ from it (the run is then not exactly that commit)."""
    try:
        command = ["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*"]  # tags excluded: a hash
        return subprocess.check_output(command, cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _grn(*args: str) -> list[str]:
    return [sys.executable, "-m", "grn_lightning.cli", *args]


def _run_dir(out: Path, name: str) -> list[str]:
    """Overrides that put a run's checkpoints and logs at out/name/tb/{fit,test}."""
    return ["--trainer.default_root_dir", str(out / name), "--trainer.logger.init_args.save_dir", str(out / name)]


def _ckpt(out: Path, name: str) -> Path:
    return out / name / "tb" / "fit" / "checkpoints" / "last.ckpt"


def _judge(task: str, out: Path, s: dict, reference: str | None, sweep: list[dict] | None = None, name: str = "",
           ceiling: bool = False) -> dict:  # fmt: skip
    """ClassifierSampleMetrics callback config; ceiling: also judge the tokenizer's reconstructions of `reference`."""
    init = {"classifier": str(out / "classifier.pt"), "task": task, "batch_size": s["judge_batch"],
            "samples_per_condition": s["i2v_clips"] if task == "i2v" else s["samples_per_condition"],
            "reference_shards": reference, "reference_limit": s["reference_limit"], "sweep": sweep,
            "output_json": str(out / "results" / f"{name or task}.json"), "grid_dir": str(out / "grids" / (name or task)),
            "every_n_val_runs": 0, "log_prefix": name or task, "reconstruction_ceiling": ceiling}  # fmt: skip
    return {"class_path": "grn_lightning.eval.classifier_metrics.ClassifierSampleMetrics", "init_args": init}


# Stages that depend on each other run in order inside a chain; chains run side by side with --jobs > 1 (the
# classifier comes first in its chain and ends long before the T2X chain's test needs it). "stage/k" is part k of a
# stage: the ablation's two halves are separate chains, so that each worker takes one when its long chain ends.
CHAINS = (("classifier", "tokenizer", "tokens", "c2i/ind", "c2i/bit"), ("t2x",), ("ablation/0",), ("ablation/1",))
ABLATION = ((("tokenizer_m2", "tokenizer_m2.yaml"), ("tokenizer_m8", "tokenizer_m8.yaml")),
            (("tokenizer_m4", None), ("tokenizer_continuous", "tokenizer_continuous.yaml")))  # fmt: skip


def _stage(item: str) -> str:
    """The stage a chain item runs: "ablation/1" -> "ablation"."""
    return item.split("/")[0]


def _names(item: str) -> set[str]:
    """The --stages names that select a chain item: its stage (all parts: "c2i") and the part on its own with an
    underscore ("c2i_bit": GRN_bit alone, on the token shards and tokenizer an earlier run left)."""
    return {_stage(item), item.replace("/", "_")}


def _selected(item: str, stages: list[str]) -> bool:
    return bool(_names(item) & set(stages))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    parser.add_argument("--out", default="outputs/repro")
    parser.add_argument("--idx-dir", default=None, help="Fashion-MNIST IDX folder (default: tools/make_fashion_mnist.py's)")
    parser.add_argument("--stages", default="data,classifier,tokenizer,ablation,tokens,c2i,t2x,report",
                        help="stages to run, in chain order; one part of a stage alone: c2i_ind, c2i_bit, ablation_0, "
                             "ablation_1")
    parser.add_argument("--jobs", type=int, default=None, help="chains run side by side (default: the setting's)")
    parser.add_argument("--force", action="store_true", help="rerun stages whose results exist")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="seed of every model fit (default: the configs'); data and judge keep theirs")
    args = parser.parse_args(argv)
    s, out = SETTINGS[args.setting], Path(args.out).resolve()
    stages = args.stages.split(",")
    items = [item for chain in CHAINS for item in chain]
    known = {"data", "report", *(name for item in items for name in _names(item))}
    unknown = sorted(set(stages) - known)
    if unknown:
        parser.error(f"unknown stages {unknown}")
    try:
        runner = Runner(out, s, args.force, args.jobs or s["jobs"], args.train_seed)
    except ValueError as err:  # a folder of another training seed
        parser.error(str(err))
    data = out / "data"
    py = sys.executable
    if "data" in stages:
        cmd = [py, "tools/make_fashion_mnist.py", "--out", str(data), "--train-clips", str(s["train_clips"]),
               "--test-clips", str(s["test_clips"])] + (["--idx-dir", args.idx_dir] if args.idx_dir else [])  # fmt: skip
        if s["max_train_images"]:
            cmd += ["--max-train-images", str(s["max_train_images"])]
        runner.run("data", cmd, None)
    patterns = read_patterns(data)
    images = ["--data.train_shards", patterns["images-train"], "--data.val_shards", patterns["images-val"],
              "--data.test_shards", patterns["images-test"]]  # fmt: skip
    trainer = s["trainer"]

    def classifier() -> None:
        runner.run("classifier", [py, "tools/train_classifier.py", "--train", patterns["images-train"], "--test",
                                  patterns["images-test"], "--out", str(out / "classifier.pt"), *s["classifier_args"]],
                   out / "classifier.pt")  # fmt: skip

    def tokenizer(name: str, overlays: list[str], steps: int, extra: list[str] = ()) -> None:
        configs = ["--config", f"{CONFIGS}/tokenizer_image.yaml"] + [a for o in overlays for a in ("--config", f"{CONFIGS}/{o}")]
        common = [*configs, *_run_dir(out, name), *images, *trainer, *s["tokenizer_args"], *extra]
        runner.fit(name, [*common, "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
                          "--trainer.logger.init_args.version", "fit"])  # fmt: skip
        runner.run(f"{name}_test", _grn("test", *common, "--ckpt_path", str(_ckpt(out, name)),
                                        "--trainer.limit_test_batches", str(s["limit_test_batches"]),
                                        "--trainer.logger.init_args.version", "test"),
                   out / name / "tb" / "test" / "metrics_protocol.json")  # fmt: skip

    def ablation(half: str) -> None:  # M = 2 / 4 / 8 / continuous at one equal, shorter length (paper Table 2 in miniature)
        for name, overlay in ABLATION[int(half)]:
            tokenizer(name, [overlay] if overlay else [], s["ablation_steps"])

    tokens = out / "tokens"

    def tokenize() -> None:
        for split in ("images-train", "images-val"):
            runner.run(f"tokens_{split}", [py, "tools/tokenize_shards.py", "--input", patterns[split], "--output", str(tokens),
                                           "--tokenizer-config", f"{CONFIGS}/c2i_ind.yaml", "--tokenizer-ckpt",
                                           str(_ckpt(out, "tokenizer_image")), "--resolution", "32", "--device", s["device_name"],
                                           "--batch-size", "256", "--no-progress"],
                       tokens / f"{split}.done")  # fmt: skip
            (tokens / f"{split}.done").touch()

    def c2i(variant: str) -> None:
        token_patterns = {k: patterns[k].replace(str(data / "shards"), str(tokens)) for k in ("images-train", "images-val")}
        name = f"c2i_{variant}"
        configs = ["--config", f"{CONFIGS}/c2i_ind.yaml"] + (["--config", f"{CONFIGS}/c2i_bit.yaml"] if variant == "bit" else [])
        common = [*configs, *_run_dir(out, name), *trainer, *s["c2i_args"],
                  "--model.init_args.tokenizer_ckpt", str(_ckpt(out, "tokenizer_image")),
                  "--data.train_shards", token_patterns["images-train"], "--data.val_shards", token_patterns["images-val"],
                  "--data.test_shards", token_patterns["images-val"]]  # fmt: skip
        steps = s["c2i_steps"] if variant == "ind" else s["c2i_bit_steps"]
        grid = _judge("c2i", out, {**s, "samples_per_condition": 4}, None, None, f"{name}_train")
        grid["init_args"].update(every_n_val_runs=1, output_json=None)
        runner.fit(name, [*common, "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps // 2),
                          "--trainer.logger.init_args.version", "fit", "--trainer.callbacks",
                          json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"save_last": True}}, grid])])  # fmt: skip
        sweep = [entry for _, _, entry in sweep_entries(s)] if variant == "ind" else [{}]
        # ceiling: what the judge makes of the tokenizer's own output (once: both variants share the tokenizer)
        judge = _judge("c2i", out, s, patterns["images-test"], sweep, name, ceiling=variant == "ind")
        runner.run(f"{name}_test", _grn("test", *common, "--ckpt_path", str(_ckpt(out, name)),
                                        "--trainer.limit_test_batches", "2", "--trainer.logger.init_args.version", "test",
                                        "--trainer.callbacks", json.dumps([judge])),
                   out / "results" / f"{name}.json")  # fmt: skip

    def t2x() -> None:
        video = ["--data.train_video_shards", patterns["clips-train"], "--data.val_video_shards", patterns["clips-test"]]
        tokenizer("tokenizer_video", ["tokenizer_video.yaml"], s["video_tokenizer_steps"], video)
        common = ["--config", f"{CONFIGS}/t2x.yaml", *_run_dir(out, "t2x"), *images, *video, *trainer, *s["t2x_args"],
                  "--model.init_args.tokenizer_ckpt", str(_ckpt(out, "tokenizer_video"))]  # fmt: skip
        runner.fit("t2x", [*common, "--trainer.max_steps", str(s["t2x_steps"]), "--trainer.val_check_interval",
                           str(s["t2x_steps"] // 2), "--trainer.logger.init_args.version", "fit"])  # fmt: skip
        judges = [_judge("t2i", out, s, patterns["images-test"], s["t2x_sweep"], ceiling=True),
                  _judge("t2v", out, {**s, "samples_per_condition": s["t2v_per_condition"]}, None, s["t2x_sweep"]),
                  _judge("i2v", out, s, patterns["clips-test"], s["t2x_sweep"], ceiling=True)]  # fmt: skip
        runner.run("t2x_test", _grn("test", *common, "--ckpt_path", str(_ckpt(out, "t2x")), "--trainer.limit_test_batches", "2",
                                    "--trainer.logger.init_args.version", "test", "--trainer.callbacks", json.dumps(judges)),
                   out / "results" / "i2v.json")  # fmt: skip

    stage_functions = {"classifier": classifier, "tokenizer": lambda: tokenizer("tokenizer_image", [], s["tokenizer_steps"]),
                       "ablation": ablation, "tokens": tokenize, "c2i": c2i, "t2x": t2x}  # fmt: skip

    def run_chain(chain: tuple[str, ...]) -> None:
        try:
            for item in chain:
                stage, *part = item.split("/")
                if _selected(item, stages):
                    stage_functions[stage](*part)
        finally:
            runner.chain_done()

    started = time.time()
    chains = [chain for chain in CHAINS if any(_selected(item, stages) for item in chain)]
    runner.chains_left = len(chains)
    with ThreadPoolExecutor(max_workers=runner.jobs) as pool:
        futures = [pool.submit(run_chain, chain) for chain in chains]
        failures = [str(f.exception()) for f in futures if f.exception() is not None]
    if failures:
        raise SystemExit("\n\n".join(failures))
    if len(stages) > 1:
        print(f"== stages {','.join(stages)}: {time.time() - started:.0f} s with {runner.jobs} job(s)", flush=True)
    if "report" in stages:
        path = write_report(out, s)
        print(f"== report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
