"""The Fashion-MNIST reproduction end to end at its reduced size (tools/repro.py --setting ci): data → classifier →
image tokenizer (fit + test) → token shards → GRN_ind / GRN_bit (fit + judged test with the sampling ablations) →
report, all through `grn fit/test` and configs/repro/. A lower bar than the CPU targets: the judge classifies real
test images, the tokenizer learns, and C2I samples show their class far above chance (10%)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grn_lightning.data.fashion_mnist import APT_PACKAGE, DEBIAN_DIR, IDX_FILES

ROOT = Path(__file__).resolve().parents[1]


def _idx_dir() -> str | None:
    folder = os.environ.get("FASHION_MNIST_DIR", DEBIAN_DIR)
    names = [name for pair in IDX_FILES.values() for name in pair]
    return folder if all((Path(folder) / name).is_file() for name in names) else None


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("GRN_RUN_REPRO") != "1",
    reason="opt-in (GRN_RUN_REPRO=1): the reduced pipeline has not yet been measured to fit CI's 15-minute test "
    "timeout (one end-to-end try on the shared 2-core machine, beside a full test run, ran past 900 s)",
)
def test_reduced_reproduction_learns(tmp_path):
    idx = _idx_dir()
    if idx is None:
        pytest.skip(f"Fashion-MNIST not installed: `apt-get install {APT_PACKAGE}` or set FASHION_MNIST_DIR to a folder "
                    f"with {', '.join(n for pair in IDX_FILES.values() for n in pair)}")  # fmt: skip
    out = tmp_path / "repro"
    command = [sys.executable, "tools/repro.py", "--setting", "ci", "--out", str(out), "--idx-dir", idx,
               "--stages", "data,classifier,tokenizer,tokens,c2i,report"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    classifier = json.loads((out / "classifier.pt.json").read_text())
    assert classifier["test_accuracy"] >= 0.60  # the judge itself: 0.73 after its 150 CI steps (full CNNs reach ~0.9)
    tokenizer = json.loads((out / "tokenizer_image" / "tb" / "test" / "metrics_protocol.json").read_text())[-1]["metrics"]
    assert tokenizer["psnr"] >= 14.0  # 17.0 dB measured after the 150 CI steps (EMA 0.99 weights)
    ind = json.loads((out / "results" / "c2i_ind.json").read_text())["results"]
    bit = json.loads((out / "results" / "c2i_bit.json").read_text())["results"]
    # 1.5x chance (0.10). Measured at this size: 0.20 (test, 50 samples) and 0.35 (validation, 40 samples) with a judge
    # that is 0.73 accurate on real images and sees blurry 17 dB decodes; the 0.40 is NOT met at CI size
    assert ind[0]["class_accuracy"] >= 0.15, ind[0]
    assert bit[0]["class_accuracy"] >= 0.15, bit[0]
    assert all(row["num_images"] == 50 for row in ind)  # every sweep entry judged its 5 samples per class
    assert (out / "report" / "tables.md").read_text().count("|") > 50
