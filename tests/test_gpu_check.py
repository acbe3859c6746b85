"""The GPU check (bench/gpu_check.sh): its dry run on the CPU goes through every stage, so
that the script cannot rot between the rare times a GPU is lent; and the parts of its table.

The figures of the dry run are never asserted (tiny sizes on a CPU measure nothing).
"""

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

BENCH = Path(__file__).resolve().parent.parent / "bench"
STAGES = ["packages", "bake", "cuda-tests", "cnn", "resnet18", "default-run", "folder"]


@pytest.fixture
def bench_module(monkeypatch):
    """import_module for bench/'s modules, imported as gpu_check.py imports them."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def run_check(*args: str, folder: Path) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "PYTHON": sys.executable}
    command = [str(BENCH / "gpu_check.sh"), str(folder), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def test_the_dry_run_goes_through_every_stage(tmp_path):
    result = run_check("--dry-run", folder=tmp_path / "out")
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    stages = report["stages"]
    assert list(stages) == STAGES
    assert {name: stage["status"] for name, stage in stages.items()} == dict.fromkeys(STAGES, "ok")
    counts = stages["cuda-tests"]["counts"]
    assert counts["skipped"] >= 7 and "failed" not in counts and "passed" not in counts
    for model in ("cnn", "resnet18"):
        results = stages[model]["results"]
        for job in ("floor", "engine", "compiled"):
            assert results[job]["samples_per_s"] > 0 and results[job]["flops_per_sample"] > 0
        assert results["compiled"]["first_step_s"] > 0
        lightning = results["lightning"]
        assert lightning.get("samples_per_s", 0) > 0 or "lightning" in lightning["error"]
    folder = stages["folder"]
    assert folder["images"] == 80
    assert set(folder["results"]) == {"loader-w0", "loader-w2", "loader-cache"}
    assert all(measured["samples_per_s"] > 0 for measured in folder["results"].values())
    assert report["header"]["mode"] == "dry"

    table = (tmp_path / "out" / "results.md").read_text()
    assert table.startswith("# GPU check: cpu (dry run), ")
    for measure in ("engine / compute floor", "engine / Lightning", "torch.compile on / off",
                    "model FLOP utilisation", "JPEG folder", "95 % validation accuracy",
                    "tests marked `cuda`"):  # fmt: skip
        assert measure in table
    assert "| unknown |" in table  # no bf16 peak for a CPU


def test_without_a_gpu_the_check_itself_refuses_in_one_line(tmp_path):
    result = run_check(folder=tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: no CUDA device is visible; use --dry-run on a CPU"


def test_missing_packages_are_named_in_one_line(bench_module, monkeypatch, capsys, tmp_path):
    gpu_check = bench_module("gpu_check")
    monkeypatch.setattr(gpu_check, "REQUIRED", ("torch", "no_such_package_here"))
    context = {"mode": "cuda", "work": tmp_path, "env": {}, "stages": {}}
    assert gpu_check.packages_stage(context, tmp_path / "no-wheels") is False
    line = capsys.readouterr().err.strip()
    assert line == (
        "error: missing on this machine: no_such_package_here; run bench/gpu_wheels.sh where "
        "there is a network and carry bench/wheels"
    )
    assert context["stages"]["packages"]["status"] == "failed"


@pytest.mark.parametrize(
    ("device", "peak"),
    [
        ("NVIDIA H200", 989.5),
        ("NVIDIA H200 NVL", 835.5),
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", None),
        ("Tesla V100-SXM2-16GB", None),
        ("cpu (dry run)", None),
    ],
)
def test_bf16_peaks_by_device_name(bench_module, device, peak):
    assert bench_module("gpu_report").peak_tflops(device) == peak


def test_model_flop_utilisation(bench_module):
    report = bench_module("gpu_report")
    engine = {"samples_per_s": 1000.0, "flops_per_sample": 1e9, "precision": "torch.float16",
              "batch_size": 128}  # fmt: skip
    name, value, detail = report.mfu_row("ResNet-18", engine, 300.0, "some GPU")
    assert value == "1.0 %" and "3.00 TFLOP/s" in detail  # 3 x 1 GFLOP x 1000 / 300 TFLOP/s
    assert report.mfu_row("ResNet-18", engine, None, "some GPU")[1] == "unknown"
    assert report.mfu_row("ResNet-18", {"error": "boom"}, 300.0, "x")[1:] == ["n/a", "engine: boom"]


def test_a_stage_is_stopped_at_its_time_limit(bench_module, tmp_path):
    stages = bench_module("gpu_stages")
    started = time.perf_counter()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    ran = stages.run_command(sleeper, 1, tmp_path, subprocess_env())
    assert ran["status"] == "timeout" and "limit of 1 s" in ran["tail"]
    assert stages.in_process(lambda: time.sleep(60), 0.5)["status"] == "timeout"
    assert time.perf_counter() - started < 30
    failed = stages.in_process(lambda: 1 / 0, 5)
    assert failed == {"status": "failed", "note": "ZeroDivisionError: division by zero"}
