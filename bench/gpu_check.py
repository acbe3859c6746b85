"""The GPU check: the CUDA path tested and measured in one command, within 6 minutes.

    bench/gpu_check.sh OUTDIR [--dry-run]

Stages, in this order, each with its own time limit (a stage that fails or runs out of time
is recorded, and the next one runs; the whole check stops starting stages at 6 minutes):

1. packages:   installs bench/wheels/*.whl (made by bench/gpu_wheels.sh) into a temporary
               folder without a network, and checks that every package it needs imports;
2. bake:       the all-features project (DDP, safetensors, TensorBoard, sweeps, AMP);
3. cuda-tests: its tests marked `cuda` (tests/test_cuda.py);
4. cnn:        the built-in SmallResNet at 32 px: compute floor, engine, Lightning,
               torch.compile (bench/gpu_contenders.py), AMP and channels-last as train.py
               sets them up;
5. resnet18:   the same for torchvision's ResNet-18 at 224 px, on random images;
6. default-run: `python train.py` with the defaults, until 95 % validation accuracy;
7. folder:     JPEG files in class folders, read by the project's loader with several
               data.num_workers and with data.cache=true, against ResNet-18's speed.

It writes OUTDIR/results.md (one Markdown table), OUTDIR/results.json (every number, and
the end of each stage's error output) and OUTDIR/cuda-tests.log (pytest's whole output).
`--dry-run` runs the same on the CPU with tiny sizes and a few steps, so that the script is
tested where there is no GPU (tests/test_gpu_check.py); the CUDA tests then skip.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gpu_report import markdown_report
from gpu_stages import Budget, in_process, run_command, write_jpeg_folder

BENCH = Path(__file__).resolve().parent
TEMPLATE = BENCH.parent
TOTAL_S = 360  # the 6 minutes the check is planned for; no stage starts after them
# Seconds each stage may take at most (fewer when the total runs short).
LIMITS = {
    "packages": 60,
    "bake": 60,
    "cuda-tests": 150,
    "cnn": 100,
    "resnet18": 120,
    "default-run": 90,
    "folder": 120,
}
# The modules the bake, the baked project, its tests and the benchmark import. Lightning is
# measured against where it is installed, and otherwise reported as missing in its rows.
REQUIRED = (
    "cookiecutter", "omegaconf", "optuna", "torch", "torchvision", "numpy", "PIL", "yaml",
    "matplotlib", "tqdm", "safetensors", "tensorboard", "pytest", "hypothesis",
)  # fmt: skip
ALL_FEATURES = {"use_ddp": True, "use_safetensors": True, "tracker": "tensorboard",
                "use_sweeps": True, "use_amp": True}  # fmt: skip

# What each mode measures: the contenders' arguments, the folder of JPEG files, and the
# default run's overrides. The dry run takes tiny sizes and a few steps.
SIZES = {
    "cuda": {
        "cnn": ["--warmup", "20", "--steps", "200"],
        "resnet18": ["--warmup", "10", "--steps", "60", "--images", "2048"],
        "folder": {
            "per_class": 512,
            "side": 256,
            "image_size": 224,
            "batch": 128,
            "steps": ["--warmup", "5", "--steps", "30"],
        },  # fmt: skip
        "default-run": [],
    },
    "dry": {
        "cnn": [
            "--warmup",
            "2",
            "--steps",
            "3",
            "--set",
            "data.train_size=256",
            "data.val_size=64",
        ],  # fmt: skip
        "resnet18": ["--warmup", "1", "--steps", "1", "--images", "16", "--image-size", "32"],
        "folder": {
            "per_class": 8,
            "side": 40,
            "image_size": 32,
            "batch": 8,
            "steps": ["--warmup", "1", "--steps", "3"],
        },  # fmt: skip
        "default-run": [
            "data.train_size=256",
            "data.val_size=64",
            "train.epochs=1",
            "model.width=8",
        ],  # fmt: skip
    },
}
PLATFORMS = ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
             "--platform", "manylinux2014_x86_64", "--platform", "any"]  # fmt: skip
NO_LIGHTNING = "No module named 'lightning'"
MODEL_JOBS = ["floor", "engine", "lightning", "compiled"]  # compilation last: the slowest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes")
    parser.add_argument("--wheels", type=Path, default=BENCH / "wheels")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device is visible; use --dry-run on a CPU", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    context = {
        "mode": "dry" if args.dry_run else "cuda",
        "outdir": args.outdir,
        "device": "cpu" if args.dry_run else "cuda",
        "work": work,
        "env": {**os.environ, "PYTHONUNBUFFERED": "1"},
        "budget": Budget(TOTAL_S),
        "stages": {},
    }
    try:
        started = time.perf_counter()
        ready = packages_stage(context, args.wheels)
        context["stages"]["packages"]["seconds"] = round(time.perf_counter() - started, 1)
        if not ready:
            return finish(args.outdir, context, 1)
        run_stages(context)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = any(stage["status"] != "ok" for stage in context["stages"].values())
    return finish(args.outdir, context, 1 if failed else 0)


def run_stages(context: dict) -> None:
    stages = [
        ("bake", bake_stage),
        ("cuda-tests", cuda_tests_stage),
        ("cnn", lambda c: models_stage(c, "cnn")),
        ("resnet18", lambda c: models_stage(c, "resnet18")),
        ("default-run", default_run_stage),
        ("folder", folder_stage),
    ]
    for name, stage in stages:
        if name != "bake" and context["stages"]["bake"]["status"] != "ok":
            context["stages"][name] = {"status": "skipped", "note": "the bake failed"}
            continue
        limit = context["budget"].limit(LIMITS[name])
        if limit <= 0:
            context["stages"][name] = {"status": "skipped", "note": "the 6 minutes ran out"}
            continue
        started = time.perf_counter()
        context["stages"][name] = stage({**context, "limit": limit})
        context["stages"][name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {context['stages'][name]['status']}", file=sys.stderr, flush=True)


def packages_stage(context: dict, wheels: Path) -> bool:
    """Install the wheels into a temporary folder on sys.path and PYTHONPATH; False, with
    one line naming what is missing, when a required package does not import."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    stage = {"status": "ok", "wheels": len(found)}
    if found:
        target = context["work"] / "site"
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                   "--no-compile", "--target", str(target), *map(str, found)]  # fmt: skip
        if context["mode"] == "dry":  # the wheels are for the GPU machine's Python 3.12
            command[4:4] = ["--python-version", "3.12", "--only-binary=:all:", *PLATFORMS]
        installed = run_command(command, LIMITS["packages"], TEMPLATE, context["env"])
        if installed["status"] != "ok":
            stage.update(status="failed", note=installed["tail"])
        elif context["mode"] == "cuda":  # in the dry run, this environment's packages serve
            sys.path.insert(0, str(target))
            paths = [str(target), context["env"].get("PYTHONPATH", "")]
            context["env"]["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        stage["status"] = "failed"
        stage["note"] = (
            f"missing on this machine: {', '.join(missing)}; run bench/gpu_wheels.sh where "
            "there is a network and carry bench/wheels"
        )
        print(f"error: {stage['note']}", file=sys.stderr)
    stage["lightning"] = importlib.util.find_spec("lightning") is not None
    context["stages"]["packages"] = stage
    return not missing


def bake_stage(context: dict) -> dict:
    def bake() -> str:
        from cookiecutter.main import cookiecutter

        output = context["work"] / "bake"
        return cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(output), extra_context=ALL_FEATURES
        )

    stage = in_process(bake, context["limit"])
    stage.pop("value", None)  # the project's folder: see project_of
    return stage


def project_of(context: dict) -> Path:
    return next((context["work"] / "bake").iterdir())


def cuda_tests_stage(context: dict) -> dict:
    """`pytest -m cuda` in the baked project; on a CPU every test skips ("no CUDA device")."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
               "-rs", "tests/test_cuda.py"]  # fmt: skip
    ran = run_command(command, context["limit"], project_of(context), context["env"])
    counts, status = pytest_counts(ran["stdout"]), ran["status"]
    skipped_here = counts.get("skipped") and "no CUDA device" in ran["stdout"]
    if context["mode"] == "dry" and status == "ok" and not skipped_here:
        status = "failed"  # on a CPU every one of them must skip, for that reason
    if context["mode"] == "cuda" and status == "ok" and not counts.get("passed"):
        status = "failed"  # on a GPU they must run
    (context["outdir"] / "cuda-tests.log").write_text(ran["stdout"] + ran["tail"])
    failures = [line for line in ran["stdout"].splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"status": status, "counts": counts, "note": "; ".join(failures)}


def pytest_counts(output: str) -> dict:
    """{'passed': N, 'failed': N, 'skipped': N, ...} from pytest's last summary line."""
    import re

    lines = [line for line in output.splitlines() if " in " in line and "=" not in line[:1]]
    found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", "\n".join(lines[-1:]))
    return {word: int(number) for number, word in found}


def contenders(context: dict, model: str, jobs: list[str], extra: list[str]) -> dict:
    """bench/gpu_contenders.py in one process: its JSON lines, kept also when it stops."""
    command = [sys.executable, str(BENCH / "gpu_contenders.py"), str(project_of(context)),
               model, *jobs, "--device", context["device"], *extra]  # fmt: skip
    ran = run_command(command, context["limit"], project_of(context), context["env"])
    results = {}
    for line in ran["stdout"].splitlines():
        if line.startswith("{"):
            measured = json.loads(line)
            results[measured.pop("job")] = measured
    missing = [job for job in jobs if job not in results]
    errors = [job for job, measured in results.items() if "error" in measured]
    # Lightning is only a yardstick: where it is not installed, its rows say so.
    failures = [job for job in errors if NO_LIGHTNING not in results[job]["error"]]
    status = ran["status"]
    if status == "ok" and (missing or failures):
        status = "failed"
    note = f"no result for {', '.join(missing)}" if missing else ""
    if errors:
        note = "; ".join(filter(None, [note, f"errors in {', '.join(errors)}"]))
    return {"status": status, "results": results, "note": note, "tail": ran["tail"]}


def models_stage(context: dict, model: str) -> dict:
    return contenders(context, model, MODEL_JOBS, SIZES[context["mode"]][model])


def default_run_stage(context: dict) -> dict:
    """`python train.py` (defaults) until metrics.csv shows 95 % validation accuracy; the
    run is stopped there (SIGTERM: it saves and exits)."""
    project = project_of(context)
    run_dir = context["work"] / "default-run"
    overrides = SIZES[context["mode"]]["default-run"]
    command = [sys.executable, "train.py", f"run.dir={run_dir}", *overrides]
    ran = run_command(command, context["limit"], project, context["env"], until=reached_95(run_dir))
    stage = {"status": ran["status"], "seconds_to_95": ran.get("until_s"), "tail": ran["tail"]}
    if ran["status"] == "ok" and ran.get("until_s") is None and context["mode"] == "cuda":
        stage.update(status="failed", note="the run ended below 95 % validation accuracy")
    return stage


def reached_95(run_dir: Path):
    sys.path.insert(0, str(BENCH))
    from run import val_accuracy_reached

    return lambda: val_accuracy_reached(run_dir / "metrics.csv", 0.95)


def folder_stage(context: dict) -> dict:
    """JPEG files written here, then the project's loader over them with several worker
    counts and with data.cache=true, at ResNet-18's input size."""
    sizes = SIZES[context["mode"]]["folder"]
    folder = context["work"] / "jpeg"
    started = time.perf_counter()
    written = in_process(
        lambda: write_jpeg_folder(project_of(context), folder, sizes["per_class"], sizes["side"]),
        context["limit"],
    )
    if written["status"] != "ok":
        return written
    context["limit"] -= time.perf_counter() - started
    cores = os.cpu_count() or 2
    workers = sorted({0, 2} if context["mode"] == "dry" else {4, 8, max(cores - 1, 1)})
    jobs = [f"loader-w{count}" for count in workers] + ["loader-cache"]
    overrides = [
        "data.dataset=imagefolder", f"data.root={folder}", f"data.batch_size={sizes['batch']}",
    ]  # fmt: skip
    extra = [*sizes["steps"], "--image-size", str(sizes["image_size"]), "--set", *overrides]
    stage = contenders(context, "resnet18", jobs, extra)
    stage["images"] = written.get("value")
    return stage


def finish(outdir: Path, context: dict, code: int) -> int:
    import torch

    device = torch.cuda.get_device_name(0) if context["mode"] == "cuda" else "cpu (dry run)"
    header = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "mode": context["mode"],
    }
    report = {"header": header, "stages": context["stages"]}
    (outdir / "results.json").write_text(json.dumps(report, indent=1, default=str))
    (outdir / "results.md").write_text(markdown_report(header, context["stages"]))
    print(f"wrote {outdir / 'results.md'} and {outdir / 'results.json'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
