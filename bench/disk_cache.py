"""The decoded cache on disk (data.cache=disk) and the shards (data.dataset=shards) against
the uncached image folder: loader / model samples per second, side by side in one run.

    python bench/disk_cache.py PROJECT [--rounds 3] [--model cnn|resnet18]

PROJECT is a baked project folder. The images are run.py's: 2,000 training and 200
validation PNGs of the built-in shapes at 32x32. Each measurement is a fresh process:
- model:        contenders.py's `engine` on the built-in data in memory: what the model trains;
- folder:       contenders.py's `loader` on the image folder, decoded per sample (best of
                data.num_workers 0 and 2);
- disk-first:   a run's first epoch on a new cache: the build (decoding every image once,
                in parallel, into files) plus one epoch read from them;
- disk-cold:    a later run's first epoch, the cache's files dropped from the page cache
                first (as a run on a collection larger than the memory reads them);
- disk-warm:    that run's next epoch, the files in the page cache.
- shards:       contenders.py's `loader` on the folder written by prepare_shards.py (best
                of data.num_workers 0 and 2; written before the rounds, untimed);
- decoded:      the same on shards written with --decoded at the model's input size.
Dropping the page cache needs root (`/proc/sys/vm/drop_caches`); without it the cold epoch
is reported as not measured. `--model resnet18` measures torchvision's ResNet-18 at 128 px
(fewer steps; the images are upscaled from 32 px, which costs the loader nothing extra).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CONTENDERS, package_of, run_contender, write_image_folder  # noqa: E402

# --model -> the input side its decoded shards are written for (data.image_size of MODELS)
DECODED_SIDE = {"cnn": 32, "resnet18": 128}

MODELS = {  # --model -> (settings, contender steps)
    "cnn": ([], ["--warmup", "10", "--steps", "50"]),
    "resnet18": (["model.name=resnet18", "data.image_size=128"], ["--warmup", "1", "--steps", "4"]),
}
LOADER_STEPS = ["--warmup", "2", "--steps", "40"]

# Runs in a fresh process: builds (or finds) the cache, then times whole epochs of the
# training loader. Prints one JSON line.
DISK_EPOCHS = """
import json, os, sys, time
sys.path.insert(0, {project!r})
from {package}.config import load_config
from {package}.data import build_datasets, build_loader, epoch_batch_sampler
from {package}.recipe import choose_machine_settings

def drop_page_cache():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("1")
        return True
    except OSError:
        return False

dropped = drop_page_cache() if {drop} else None
cfg = choose_machine_settings(load_config([], {overrides!r}))
cfg.data.batch_size = 128
start = time.perf_counter()
bundle = build_datasets(cfg.data, cfg.seed)
built = time.perf_counter() - start
loader = build_loader(bundle.train, cfg.data, train=True, seed=cfg.seed)
epochs = []
for epoch in range(2):
    epoch_batch_sampler(loader).set_epoch(epoch)
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    epochs.append((count, time.perf_counter() - start))
print(json.dumps({{"built_s": built, "epochs": epochs, "dropped": dropped}}))
"""


def disk_epochs(python: str, project: Path, overrides: list[str], drop: bool) -> dict:
    script = DISK_EPOCHS.format(
        project=str(project), package=package_of(project), overrides=overrides, drop=drop
    )
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=project)
    if result.returncode != 0:
        raise SystemExit(f"the disk-cache measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_shards(python: str, project: Path, folder: Path, model: str) -> dict[str, Path]:
    """The folder as shards of its files and as decoded shards, by prepare_shards.py."""
    written = {}
    for name, options in (("shards", []), ("decoded", ["--decoded", str(DECODED_SIDE[model])])):
        out = folder.with_name(f"{folder.name}-{name}")
        command = [python, "prepare_shards.py", str(folder), str(out), "--per-shard", "1000"]
        subprocess.run([*command, *options], cwd=project, check=True, capture_output=True)
        written[name] = out
    return written


def best_loader(contender: list[str], settings: list[str]) -> dict:
    """contenders.py's `loader` on `settings`, the faster of data.num_workers 0 and 2."""
    return max(
        (
            run_contender(
                [*contender, "loader", "cnn", *LOADER_STEPS, "--set", *settings]
                + [f"data.num_workers={workers}"]
            )
            for workers in (0, 2)
        ),
        key=lambda result: result["samples_per_s"],
    )


def one_round(
    python: str, project: Path, folder: Path, cache: Path, model: str, shards: dict[str, Path]
) -> dict:
    settings, steps = MODELS[model]
    contender = [python, str(CONTENDERS), str(project)]
    on_folder = ["data.dataset=imagefolder", f"data.root={folder}", *settings]
    figures = {
        "model": run_contender([*contender, "engine", "cnn", *steps, "--set", *settings]),
        "folder": best_loader(contender, [*on_folder, "data.cache=false"]),
    }
    for name, root in shards.items():
        figures[name] = best_loader(
            contender, ["data.dataset=shards", f"data.root={root}", *settings]
        )
    on_disk = [*on_folder, "data.cache=disk", f"data.cache_dir={cache}"]
    subprocess.run(["rm", "-rf", str(cache)], check=True)  # a new cache: the build is timed
    first = disk_epochs(python, project, on_disk, drop=False)
    later = disk_epochs(python, project, on_disk, drop=True)
    (count, first_s), (cold_count, cold_s), (warm_count, warm_s) = (
        first["epochs"][0],
        later["epochs"][0],
        later["epochs"][1],
    )
    model_speed = figures["model"]["samples_per_s"]
    return {
        "model samples/s": model_speed,
        "folder samples/s": figures["folder"]["samples_per_s"],
        "disk first epoch samples/s": count / (first["built_s"] + first_s),
        "disk cold epoch samples/s": cold_count / cold_s if later["dropped"] else None,
        "disk warm epoch samples/s": warm_count / warm_s,
        "folder / model": figures["folder"]["samples_per_s"] / model_speed,
        "disk first epoch (build + read) / model": count
        / (first["built_s"] + first_s)
        / model_speed,
        "disk build s": first["built_s"],
        "disk cold epoch / model": cold_count / cold_s / model_speed if later["dropped"] else None,
        "disk warm epoch / model": warm_count / warm_s / model_speed,
        "shards / model": figures["shards"]["samples_per_s"] / model_speed,
        "decoded shards / model": figures["decoded"]["samples_per_s"] / model_speed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    args = parser.parse_args()
    project, python = args.project.resolve(), sys.executable
    with tempfile.TemporaryDirectory() as scratch:
        folder, cache = Path(scratch) / "images", Path(scratch) / "cache"
        write_image_folder(project, folder, python)
        shards = write_shards(python, project, folder, args.model)
        rounds = [
            one_round(python, project, folder, cache, args.model, shards)
            for _ in range(args.rounds)
        ]
    for name in rounds[0]:
        values = [entry[name] for entry in rounds if entry[name] is not None]
        if not values:
            print(f"{name}: not measured (dropping the page cache needs root)")
            continue
        low, high = min(values), max(values)
        print(f"{name}: {statistics.median(values):.3g} ({low:.3g}-{high:.3g})")


if __name__ == "__main__":
    main()
