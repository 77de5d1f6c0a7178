"""The torchvision compatibility module and the `grn` entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from grn_lightning.cli import main


def test_torchvision_imports_and_compat_is_idempotent():
    from grn_lightning.compat import ensure_torchvision_importable

    import torchvision.models  # noqa: F401  (lpips / pytorch-fid need this pure-Python part)

    assert ensure_torchvision_importable() is False  # already importable now: nothing to patch


def test_compat_patch_in_a_fresh_interpreter():
    """In a new process: if the wheel's C extension is broken, plain `import torchvision` fails and the
    compat module makes it work; if it is not broken, nothing is patched."""
    code = textwrap.dedent(
        """
        import torch
        try:
            import torchvision
            broken = False
        except RuntimeError as err:
            broken = "torchvision::" in str(err)
        import sys
        for m in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[m]
        import importlib.util  # load compat.py alone: the package __init__ would already apply it
        spec = importlib.util.spec_from_file_location("compat", COMPAT)
        compat = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compat)
        patched = compat.ensure_torchvision_importable()
        import torchvision, lightning, lpips, torchmetrics, pytorch_fid
        assert patched == broken, (patched, broken)
        print("ok", broken)
        """
    )
    import grn_lightning.compat

    code = code.replace("COMPAT", repr(grn_lightning.compat.__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ok")


def test_grn_help_and_subcommands(capsys):
    for args in (["--help"], ["fit", "--help"], ["test", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0
    assert "--trainer.max_steps" in capsys.readouterr().out


DATA_ONLY = """
model:
  class_path: lightning.pytorch.demos.boring_classes.BoringModel
data:
  class_path: grn_lightning.data.datamodule.GRNDataModule
  init_args:
    kind: image
    train_shards: {shards}
    resolution: 32
"""


def test_print_config_and_typo_fails_fast(tmp_path, demo_image_shards, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(DATA_ONLY.format(shards=demo_image_shards))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "GRNDataModule" in printed and "shuffle_buffer: 1000" in printed and "skipped_samples" in printed

    config.write_text(DATA_ONLY.format(shards=demo_image_shards).replace("resolution: 32", "resolutoin: 32"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code != 0
    assert "resolutoin" in capsys.readouterr().err


def test_cpu_torch_pulled_no_cuda_wheels():
    """On a CPU torch build (this machine, CI) pip must not have installed any nvidia-* CUDA wheel."""
    import importlib.metadata

    import torch

    if torch.version.cuda is not None:
        pytest.skip("CUDA build of torch: CUDA wheels are expected here")
    names = sorted({d.metadata["Name"] for d in importlib.metadata.distributions()})
    assert not [n for n in names if n.lower().startswith("nvidia")], names


def test_grn_console_script_exits_zero_after_a_run(tmp_path, demo_data):
    """The installed `grn` script (what users and `make demo` run): a finished fit must exit with status 0."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "grn"
    if not script.exists():
        pytest.skip("grn console script not installed next to this interpreter")
    config = Path(__file__).resolve().parents[1] / "configs/smoke/tokenizer_image.yaml"
    args = [str(script), "fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--data.train_shards", demo_data["images-train"], "--data.val_shards", demo_data["images-val"]]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "GRNCLI object" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "override,expected",
    [
        (["--model.init_args.task", "t3v"], "model.task='t3v' is not one of"),
        ("missing_umt5.yaml", "tools/fetch_weights.py umt5_xxl"),
    ],
    ids=["bad-value", "missing-weights"],
)
def test_grn_console_script_reports_configuration_errors_in_one_message(tmp_path, override, expected):
    """A bad option value or a missing weight folder: exit status 2 and the framework's own message (naming the option
    or the file and the fix), not jsonargparse's traceback and dump of every parsed option."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "grn"
    if not script.exists():
        pytest.skip("grn console script not installed next to this interpreter")
    config = Path(__file__).resolve().parents[1] / "configs/smoke/t2i.yaml"
    if override == "missing_umt5.yaml":  # the real umT5 loading path, pointed at a folder that does not exist
        extra = tmp_path / override
        extra.write_text("model:\n  init_args:\n    text_encoder:\n      init_args:\n"
                         "        path: /nowhere/umt5-xxl\n        random_init: null\n")  # fmt: skip
        override = ["--config", str(extra)]
    proc = subprocess.run([str(script), "fit", "--config", str(config), *override], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GRN_DEBUG": ""})  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr and "Namespace(" not in proc.stderr


@pytest.mark.parametrize(
    "env,make_args,python",
    [
        ({"VIRTUAL_ENV": "/opt/cluster-env"}, [], "/opt/cluster-env/bin/python"),
        ({"CONDA_PREFIX": "/opt/conda/envs/mine"}, [], "/opt/conda/envs/mine/bin/python"),
        ({}, ["PYTHON=/opt/my/python3"], "/opt/my/python3"),
        ({}, [], "/nonexistent/venv/bin/python"),
    ],
    ids=["virtualenv", "conda", "PYTHON=", "no-env"],
)
def test_make_eval_imagenet_runs_in_the_active_environment(env, make_args, python):
    """`make eval-imagenet` on a GPU cluster uses the active environment (its own torch) or PYTHON=..., and builds
    .venv with the CPU constraints only when neither is given (`make -n`: the commands, nothing is run)."""
    import shutil
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON")}
    # VENV= a folder that does not exist: the answer must not depend on a .venv already built in this checkout.
    proc = subprocess.run(["make", "-n", "eval-imagenet", "CKPT=run/last.ckpt", "CONFIG=c.yaml",
                           "VENV=/nonexistent/venv", *make_args],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                          env={**clean, **env}, check=True)  # fmt: skip
    commands = proc.stdout
    assert f"{python} tools/eval_imagenet.py" in commands, commands
    builds_venv = "-m venv /nonexistent/venv" in commands and "constraints.txt" in commands
    assert builds_venv == python.startswith("/nonexistent/venv"), commands
