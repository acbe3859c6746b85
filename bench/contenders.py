"""One contender of the loop benchmark, run in a fresh process: prints one JSON line.

    python bench/contenders.py PROJECT CONTENDER MODEL [--steps N] [--warmup W] [--threads T]
        [--set key=value ...]

Without --threads, torch's threads are what train.threads chooses (see recipe.py), as in
a run of train.py.

PROJECT is a baked project folder (its package is imported from there). CONTENDER is one of:
- floor:      forward + backward + optimizer step repeated on one prepared batch: the
              compute the loop cannot avoid, with nothing else around it;
- engine:     the baked project's own loader and `train_one_epoch` (scheduler, running sums,
              progress bookkeeping included), exactly as train.py calls them;
- handloop:   a minimal hand-written loop over a torch DataLoader (TensorDataset, shuffle),
              the way most tutorials write it;
- lightning:  PyTorch Lightning's Trainer on the same module, optimizer and DataLoader;
- loader:     the project's loader alone, no model: how fast data can be served.
MODEL is `cnn` (the project's default SmallResNet and data, batch 128) or `mlp` (a 784-64-10
MLP on MNIST-sized vectors in memory, batch 64, where the loop itself is the cost).
`--set` overrides project settings (e.g. data.dataset=imagefolder data.num_workers=2).

Every contender uses the project's own model (channels-last as train.py makes it), optimizer
factory and data, the same batch size and the same number of threads; the timed window holds
`--steps` optimizer steps after `--warmup` untimed ones. (The benchmark times whole
processes of `--warmup 0 --steps 1` for the time from process start to the first step.)
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CNN_BATCH, MLP_BATCH = 128, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("contender", choices=sorted(CONTENDERS))
    parser.add_argument("model", choices=("cnn", "mlp"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch's threads (default: train.threads's choice)",
    )
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument(
        "--count", action="store_true", help="count the work of a step instead of timing it"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(args.project.resolve()))
    if args.threads is not None:
        args.overrides.append(f"train.threads={args.threads}")
    setup = build_setup(args.model, args.overrides)
    if args.count:
        counts = work_per_step(CONTENDERS[args.contender], setup, args.warmup, args.steps)
        print(json.dumps({"contender": args.contender, "model": args.model, **counts}))
        return
    seconds = CONTENDERS[args.contender](setup, args.warmup, args.steps)
    print(
        json.dumps(
            {
                "contender": args.contender,
                "model": args.model,
                "steps": args.steps,
                "step_us": seconds / args.steps * 1e6,
                "samples_per_s": args.steps * setup["batch_size"] / seconds,
                "threads": torch.get_num_threads(),
            }
        )
    )


def work_per_step(contender, setup: dict, warmup: int, steps: int) -> dict:
    """The Python calls and torch operators of one step: counted over `warmup` steps and
    over `warmup + steps`, the difference divided by `steps`, so that what is done once
    (building the loader, the first batch) drops out and what is done per epoch is shared
    out over its steps. Unlike a time, a count does not move with the machine's load: a
    loop that does more per step than before shows here in any round."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile

    def count(total: int) -> tuple[int, int]:
        profiler = cProfile.Profile()
        with profile(activities=[ProfilerActivity.CPU]) as operators:
            profiler.runcall(contender, setup, 1, total)
        calls = sum(stat[1] for stat in pstats.Stats(profiler).stats.values())
        return calls, sum(event.count for event in operators.key_averages())

    contender(setup, warmup, warmup)  # allocations and lazy imports of a first run
    short, long = count(warmup), count(warmup + steps)
    return {
        "python_calls_per_step": (long[0] - short[0]) / steps,
        "torch_ops_per_step": (long[1] - short[1]) / steps,
    }


def build_setup(model_name: str, overrides: list[str]) -> dict:
    """Model, optimizer, datasets and configs, built by the project's own factories."""
    from importlib import import_module

    package = _package_name()
    config = import_module(f"{package}.config")
    data = import_module(f"{package}.data")
    model_module = import_module(f"{package}.model")
    optim = import_module(f"{package}.optim")
    recipe = import_module(f"{package}.recipe")

    # The settings a run leaves to the recipe (threads, workers, ...), chosen as train.py would.
    cfg = recipe.choose_machine_settings(config.load_config([], overrides))
    if cfg.train.threads:  # as train.py's prepare_device sets them (0: torch's default)
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    if model_name == "cnn":
        bundle = data.build_datasets(cfg.data, cfg.seed)
        # The settings left null that building the data chose (the side), as train.py takes them.
        cfg = import_module(f"{package}.input_size").apply_chosen(cfg, bundle)
        train_set = bundle.train
        model = model_module.build_model(cfg.model, len(bundle.classes), bundle.in_channels)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        cfg.data.batch_size = CNN_BATCH
    else:
        # MNIST-sized vectors in memory, served by the project's batched-indexing dataset.
        generator = torch.Generator().manual_seed(cfg.seed)
        images = torch.randint(0, 256, (10_000, 1, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (10_000,), generator=generator)
        train_set = data.ShapesDataset(images, labels, [str(i) for i in range(10)], (0.5,), (0.25,))
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        cfg.data.batch_size = MLP_BATCH
    cfg = recipe.choose_training_settings(cfg, len(train_set), val_images=1000)
    optimizer = optim.build_optimizer(cfg.optim, model)
    return {
        "package": package,
        "cfg": cfg,
        "model": model,
        "optimizer": optimizer,
        "train_set": train_set,
        "batch_size": cfg.data.batch_size,
    }


def _package_name() -> str:
    """The baked package: the folder beside train.py that holds engine.py."""
    for path in sorted(Path(sys.path[0]).glob("*/engine.py")):
        return path.parent.name
    raise SystemExit(f"no baked package found in {sys.path[0]}")


def first_batch(setup: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return setup["train_set"][list(range(setup["batch_size"]))]


def run_floor(setup: dict, warmup: int, steps: int) -> float:
    model, optimizer = setup["model"], setup["optimizer"]
    images, labels = first_batch(setup)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def run_engine(setup: dict, warmup: int, steps: int) -> float:
    """The project's loader and train_one_epoch, with its scheduler, as train.py sets them up."""
    from importlib import import_module

    package, cfg = setup["package"], setup["cfg"]
    data = import_module(f"{package}.data")
    device = import_module(f"{package}.device")
    engine = import_module(f"{package}.engine")
    device = import_module(f"{package}.device")
    log = import_module(f"{package}.log")
    optim = import_module(f"{package}.optim")

    loader = data.build_loader(setup["train_set"], cfg.data, train=True, seed=cfg.seed)
    batches = data.epoch_batch_sampler(loader)
    per_epoch = batches.batches_per_epoch
    total = warmup + steps
    scheduler = optim.build_scheduler(cfg.sched, setup["optimizer"], per_epoch, total)
    cpu = torch.device("cpu")
    cfg.train.log_every = 10**9  # logging is measured in the per-step overhead only when due
    trainer = engine.Trainer(
        setup["model"],
        setup["optimizer"],
        scheduler,
        step_scheduler_per_batch=cfg.sched.name in optim.PER_STEP_SCHEDULERS,
        precision=device.float32_precision(cpu),
        cfg=cfg.train,
        device=cpu,
    )
    state = engine.TrainState()
    marks = {}

    def after_step() -> bool:
        if state.global_step == warmup:
            marks["start"] = time.perf_counter()
        if state.global_step == total:
            marks["end"] = time.perf_counter()
        return state.global_step >= total

    while state.global_step < total:
        batches.set_epoch(state.epoch, state.batch_in_epoch)
        engine.train_one_epoch(trainer, loader, per_epoch, state, after_step, log.NoProgressBar())
        if state.batch_in_epoch >= per_epoch:
            state.start_epoch(state.epoch + 1)
    return marks["end"] - marks["start"]


def tensor_loader(setup: dict):
    """What a hand-written script would build: float tensors, a TensorDataset, shuffling."""
    from torch.utils.data import DataLoader, TensorDataset

    dataset = setup["train_set"]
    images, labels = dataset[list(range(len(dataset)))]
    return DataLoader(
        TensorDataset(images, labels),
        batch_size=setup["batch_size"],
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )


def run_handloop(setup: dict, warmup: int, steps: int) -> float:
    model, optimizer = setup["model"], setup["optimizer"]
    loader = tensor_loader(setup)
    total, step, start = warmup + steps, 0, 0.0
    model.train()
    while step < total:
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == warmup:
                start = time.perf_counter()
            if step == total:
                break
    return time.perf_counter() - start


def run_lightning(setup: dict, warmup: int, steps: int) -> float:
    import lightning as L

    model, optimizer = setup["model"], setup["optimizer"]
    marks = {}

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
            step = self.trainer.global_step
            if step == warmup:
                marks["start"] = time.perf_counter()
            if step == warmup + steps:
                marks["end"] = time.perf_counter()

    if warmup == 0:
        marks["start"] = time.perf_counter()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Module(), train_dataloaders=tensor_loader(setup))
    return marks["end"] - marks["start"]


def run_loader(setup: dict, warmup: int, steps: int) -> float:
    """The project's loader alone: batches fetched (onto the training device), no model."""
    from importlib import import_module

    data = import_module(f"{setup['package']}.data")
    cfg = setup["cfg"]
    loader = data.build_loader(setup["train_set"], cfg.data, train=True, seed=cfg.seed)
    batches = data.epoch_batch_sampler(loader)
    fetched, epoch, start = 0, 0, time.perf_counter()
    while fetched < warmup + steps:
        batches.set_epoch(epoch)
        for _ in loader:
            fetched += 1
            if fetched == warmup:
                start = time.perf_counter()
            if fetched == warmup + steps:
                break
        epoch += 1
    return time.perf_counter() - start


CONTENDERS = {
    "floor": run_floor,
    "engine": run_engine,
    "handloop": run_handloop,
    "lightning": run_lightning,
    "loader": run_loader,
}


if __name__ == "__main__":
    main()
