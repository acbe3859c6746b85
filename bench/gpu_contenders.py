"""The GPU benchmark's measurements of one model, in one process: prints one JSON line each.

    python bench/gpu_contenders.py PROJECT MODEL JOB [JOB ...] [--device cuda] [--warmup W]
        [--steps N] [--images N] [--image-size S] [--set key=value ...]

PROJECT is a baked project folder. MODEL is `cnn` (the project's default SmallResNet on its
built-in shapes) or `resnet18` (torchvision's, random init, on random images held on the
device, 10 classes). Every job sets up the model, optimizer, schedule and mixed precision
with the project's own functions, as train.py does (channels-last, fp16 autocast with its
grad scaler on CUDA by the project's defaults), each from a fresh model:

- floor:      forward + backward + optimizer step repeated on one prepared batch;
- engine:     the project's loader and `train_one_epoch`, as train.py calls them;
- compiled:   the same with train.compile=true; `first_step_s` holds the compilation;
- lightning:  Lightning's Trainer on the same model and optimizer, in the same precision,
              its batches sliced from the same tensors on the device;
- loader:     the project's loader alone (with `--set data.dataset=imagefolder ...`), each
              batch copied to the device as train.py copies it; `loader-wN` with N
              workers reading the files, `loader-cache` with data.cache=true.

A job that fails prints its error in its line, and the next job runs.

Timed windows start after `--warmup` steps and end with the device synchronised. With
`--device cpu` (the dry run of bench/gpu_check.py) the same code runs on the CPU, and
`compiled` uses dynamo's eager backend (no code generation, which takes minutes on a CPU).
"""

import argparse
import functools
import json
import sys
import time
from importlib import import_module
from pathlib import Path

import torch
import torch.nn.functional as F

RESNET_CLASSES = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("model", choices=("cnn", "resnet18"))
    parser.add_argument("jobs", nargs="+", help=f"{', '.join(JOBS)}, loader-wN, loader-cache")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--images", type=int, default=2048, help="resnet18: random images")
    parser.add_argument("--image-size", type=int, default=224, help="resnet18: their side")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    args = parser.parse_args()
    sys.path.insert(0, str(args.project.resolve()))
    if args.device == "cpu":
        torch.compile = functools.partial(torch.compile, backend="eager")
    for job in args.jobs:
        try:
            result = run_job(job, args)
        except Exception as error:  # one failing job is recorded; the others still run
            result = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"}
        print(json.dumps({"job": job, "model": args.model, **result}), flush=True)


def run_job(job: str, args) -> dict:
    """`loader-wN` is the loader with N workers from the files, `loader-cache` with the
    images decoded once into memory (data.cache=true); other jobs are named in JOBS."""
    if job.startswith("loader-"):
        setting = job.removeprefix("loader-")
        if setting == "cache":
            return run_loader(args, "data.cache=true")
        return run_loader(args, "data.cache=false", f"data.num_workers={setting.removeprefix('w')}")
    return JOBS[job](args)


def package(name: str):
    """A module of the baked package (the folder beside train.py that holds engine.py)."""
    root = Path(sys.path[0])
    return import_module(f"{next(root.glob('*/engine.py')).parent.name}.{name}")


def build(args, *extra: str, with_model: bool = True) -> dict:
    """Config, data, device, loaders, model and trainer, made as train.py makes them (the
    loaders alone without `with_model`)."""
    config, recipe, train = package("config"), package("recipe"), package("train")
    overrides = [f"train.device={args.device}", *args.overrides, *extra]
    if args.model == "resnet18":
        overrides += ["model.name=resnet18", f"data.image_size={args.image_size}"]
    cfg = recipe.choose_machine_settings(config.load_config([], overrides))
    torch.manual_seed(cfg.seed)
    team = package("processes").SingleProcess()
    device = train.prepare_device(cfg.train, team)
    if args.model == "resnet18" and "data.dataset=imagefolder" not in overrides:
        data = random_images(args.images, args.image_size)
    else:
        data = package("data").build_datasets(cfg.data, cfg.seed)
        cfg = package("input_size").apply_chosen(cfg, data)  # the side chosen, as train.py
    cfg = recipe.choose_data_settings(cfg, data, 1)
    loaders = train.build_loaders(data, cfg, team, device)
    if not with_model:
        return {"cfg": cfg, "data": data, "device": device, "loaders": loaders}
    model = train.build_training_model(cfg, data, device, team, resumed=False)
    trainer = train.build_trainer(cfg, model, device, loaders.batches_per_epoch)
    models = package("model")  # FLOPs counted on a fresh copy on the CPU, as train.py counts
    fresh = models.build_model(cfg.model, len(data.classes), data.in_channels)
    flops = models.flops_per_sample(fresh, data.in_channels, cfg.data.image_size)
    return {"cfg": cfg, "data": data, "device": device, "loaders": loaders, "trainer": trainer,
            "flops_per_sample": flops}  # fmt: skip


@functools.cache  # made once for all the jobs of the process
def random_images(count: int, side: int):
    """A DataBundle of `count` random RGB images of side `side`, 10 classes."""
    data = package("data")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, RESNET_CLASSES, (count,), generator=generator)
    classes = [str(label) for label in range(RESNET_CLASSES)]
    train_set = data.ShapesDataset(images, labels, classes)
    val_set = data.ShapesDataset(images[:64], labels[:64], classes)
    return data.DataBundle(train_set, val_set, classes, 3)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def result(setup: dict, seconds: float, steps: int, **extra) -> dict:
    batch = setup["cfg"].data.batch_size
    measured = {"samples_per_s": steps * batch / seconds, "step_ms": seconds / steps * 1e3}
    if "trainer" in setup:
        measured["flops_per_sample"] = setup["flops_per_sample"]
        measured["precision"] = setup["trainer"].precision.describe()
    return {**measured, "batch_size": batch, **extra}


def run_floor(args) -> dict:
    setup = build(args)
    trainer, device = setup["trainer"], setup["device"]
    model, optimizer, precision = trainer.model, trainer.optimizer, trainer.precision
    images, labels = next(iter(setup["loaders"].train))
    images, labels = images.to(device), labels.to(device)

    def step() -> None:
        with precision.autocast():
            loss = F.cross_entropy(model(images), labels)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    return result(setup, time.perf_counter() - start, args.steps)


def run_engine(args, *extra: str) -> dict:
    """The project's loop for warmup + steps optimizer steps; the first step's time apart."""
    engine, log = package("engine"), package("log")
    started = time.perf_counter()
    setup = build(args, *extra)
    setup["cfg"].train.log_every = 10**9  # no log lines inside the timed window
    loaders, device = setup["loaders"], setup["device"]
    state, total, marks = engine.TrainState(), args.warmup + args.steps, {}

    def after_step() -> bool:
        if state.global_step in (1, args.warmup, total):
            synchronize(device)
            marks[state.global_step] = time.perf_counter()
        return state.global_step >= total

    while state.global_step < total:
        loaders.batches.set_epoch(state.epoch, state.batch_in_epoch)
        engine.train_one_epoch(
            setup["trainer"], loaders.train, loaders.batches_per_epoch, state, after_step,
            log.NoProgressBar(),
        )  # fmt: skip
        if state.batch_in_epoch >= loaders.batches_per_epoch:
            state.start_epoch(state.epoch + 1)
    first_step = marks[1] - started  # set-up, data on the device and compilation included
    return result(setup, marks[total] - marks[args.warmup], args.steps, first_step_s=first_step)


def run_compiled(args) -> dict:
    return run_engine(args, "train.compile=true")


def run_lightning(args) -> dict:
    import lightning as L

    setup = build(args)
    trainer, device = setup["trainer"], setup["device"]
    model, optimizer, marks = trainer.model, trainer.optimizer, {}
    precision = {torch.float16: "16-mixed", torch.bfloat16: "bf16-mixed"}
    total = args.warmup + args.steps

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def training_step(self, batch, batch_index):
            images, labels = batch
            return F.cross_entropy(self.net(images), labels)

        def configure_optimizers(self):
            return optimizer

        def on_train_batch_end(self, outputs, batch, batch_index) -> None:
            if self.trainer.global_step in (args.warmup, total):
                synchronize(device)
                marks[self.trainer.global_step] = time.perf_counter()

    L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision.get(trainer.precision.dtype, "32-true"),
        max_steps=total,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    ).fit(Module(), train_dataloaders=device_batches(setup))
    return result(setup, marks[total] - marks[args.warmup], args.steps)


def device_batches(setup: dict):
    """A DataLoader of shuffled batches sliced from the training tensors on the device,
    one indexing operation a batch (per-sample collation would be slower than the model)."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    copy_to = package("device").copy_to  # as the engine's loader copies its indices
    dataset = setup["data"].train.to(setup["device"])
    generator = torch.Generator().manual_seed(0)
    order = RandomSampler(range(len(dataset)), generator=generator)
    batches = BatchSampler(order, setup["cfg"].data.batch_size, drop_last=True)

    class Batches(torch.utils.data.Dataset):
        def __getitem__(self, indices: list[int]):
            return dataset[copy_to(torch.tensor(indices), setup["device"])]

    return DataLoader(Batches(), batch_size=None, sampler=batches)


def run_loader(args, *extra: str) -> dict:
    """The project's training loader alone, each batch copied to the device (non-blocking,
    from pinned memory where train.py pins it); no model runs."""
    setup = build(args, *extra, with_model=False)
    loaders, device = setup["loaders"], setup["device"]
    fetched, epoch, total, marks = 0, 0, args.warmup + args.steps, {}
    while fetched < total:
        loaders.batches.set_epoch(epoch)
        for images, _ in loaders.train:
            images.to(device, non_blocking=True)
            fetched += 1
            if fetched in (args.warmup, total):
                synchronize(device)
                marks[fetched] = time.perf_counter()
            if fetched == total:
                break
        epoch += 1
    return result(setup, marks[total] - marks[args.warmup], args.steps)


JOBS = {
    "floor": run_floor,
    "engine": run_engine,
    "compiled": run_compiled,
    "lightning": run_lightning,
    "loader": run_loader,
}


if __name__ == "__main__":
    main()
