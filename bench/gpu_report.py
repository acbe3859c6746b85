"""The GPU check's table: ratios, model FLOP utilisation and times from the stages' results.

Model FLOP utilisation (MFU) = 3 x the forward FLOPs of one sample (torch's FlopCounterMode,
as the project's model summary counts them: backward ~ 2 x forward) x samples/s, over the
device's dense bf16 tensor-core peak. The training runs fp16 autocast, whose dense peak
equals bf16's on every GPU of the table below.
"""

import re

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by the name torch reports for the
# device; the first pattern that matches wins. Sources: NVIDIA's datasheets, which give the
# figures "with sparsity", twice the dense ones.
PEAKS = [
    # H200 NVL datasheet (2024): BF16 1,671 TFLOPS with sparsity.
    (r"H200 NVL", 835.5),
    # H200 datasheet (SXM, 2024): BF16 1,979 TFLOPS with sparsity.
    (r"H200", 989.5),
    # H100 datasheet (2023), NVL: BF16 1,671 TFLOPS with sparsity.
    (r"H100 NVL", 835.5),
    # H100 datasheet, PCIe: BF16 1,513 TFLOPS with sparsity.
    (r"H100 PCIe", 756.5),
    # H100 datasheet, SXM ("NVIDIA H100 80GB HBM3"): BF16 1,979 TFLOPS with sparsity.
    (r"H100", 989.5),
    # A100 datasheet (2021): BF16 312 TFLOPS, 624 with sparsity (SXM and PCIe alike).
    (r"A100", 312.0),
    # L40S datasheet (2023): BF16 362.05 TFLOPS, 733 with sparsity.
    (r"L40S", 362.05),
    # L4 datasheet (2023): BF16 242 TFLOPS with sparsity.
    (r"\bL4\b", 121.0),
    # A10 datasheet (2021): BF16 125 TFLOPS, 250 with sparsity. (Not the A10G.)
    (r"\bA10\b", 125.0),
]
TRAINING_FLOPS_PER_FORWARD = 3
MODELS = {
    "cnn": "SmallResNet, 32 px, built-in shapes",
    "resnet18": "ResNet-18, 224 px, random images",
}


def peak_tflops(device: str) -> float | None:
    """The dense bf16 peak of the device named `device`; None for a device not in PEAKS."""
    for pattern, tflops in PEAKS:
        if re.search(pattern, device):
            return tflops
    return None


def speed(measured: dict | None) -> float | None:
    if not measured or "samples_per_s" not in measured:
        return None
    return measured["samples_per_s"]


def why_missing(measured: dict | None) -> str:
    if measured and "error" in measured:
        return measured["error"]
    return "not measured"


def ratio_row(name: str, results: dict, top: str, bottom: str) -> list[str]:
    """| name | top / bottom | both speeds |, or why it could not be formed."""
    high, low = speed(results.get(top)), speed(results.get(bottom))
    if high is None or low is None:
        missing = top if high is None else bottom
        return [name, "n/a", f"{missing}: {why_missing(results.get(missing))}"]
    detail = f"{top} {high:,.0f}, {bottom} {low:,.0f} samples/s"
    return [name, f"{high / low:.2f}x", detail]


def model_rows(stages: dict, peak: float | None, device: str) -> list[list[str]]:
    rows = []
    for model, label in MODELS.items():
        results = stages.get(model, {}).get("results", {})
        rows.append(ratio_row(f"{label}: engine / compute floor", results, "engine", "floor"))
        rows.append(ratio_row(f"{label}: engine / Lightning", results, "engine", "lightning"))
        compiled = ratio_row(f"{label}: torch.compile on / off", results, "compiled", "engine")
        if speed(results.get("compiled")) is not None:
            compiled[2] += f"; first step after {results['compiled']['first_step_s']:.1f} s"
        rows.append(compiled)
        rows.append(mfu_row(label, results.get("engine"), peak, device))
    return rows


def mfu_row(label: str, engine: dict | None, peak: float | None, device: str) -> list[str]:
    name = f"{label}: model FLOP utilisation (engine)"
    if speed(engine) is None:
        return [name, "n/a", f"engine: {why_missing(engine)}"]
    flops = TRAINING_FLOPS_PER_FORWARD * engine["flops_per_sample"] * engine["samples_per_s"]
    detail = (
        f"{flops / 1e12:,.2f} TFLOP/s, autocast {engine['precision']}, batch {engine['batch_size']}"
    )
    if peak is None:
        return [name, "unknown", f"{detail}; no bf16 peak known for {device}"]
    return [name, f"{100 * flops / (peak * 1e12):.1f} %", f"{detail}, of {peak:g} TFLOP/s"]


def folder_rows(stages: dict) -> list[list[str]]:
    folder = stages.get("folder", {}).get("results", {})
    engine = stages.get("resnet18", {}).get("results", {}).get("engine")
    workers = {job: measured for job, measured in folder.items() if speed(measured)}
    workers = {job: measured for job, measured in workers.items() if job != "loader-cache"}
    name = "JPEG folder at 224 px: loader (best data.num_workers) / ResNet-18 engine"
    if not workers or speed(engine) is None:
        rows = [[name, "n/a", "loader or engine not measured"]]
    else:
        best = max(workers, key=lambda job: workers[job]["samples_per_s"])
        tried = ", ".join(f"{job[8:]}: {speed(m):,.0f}" for job, m in sorted(workers.items()))
        value = speed(workers[best]) / speed(engine)
        detail = f"best {best[8:]} workers; images/s by workers {tried}"
        rows = [[name, f"{value:.2f}x", detail]]
    cache_name = "JPEG folder with data.cache=true: loader / ResNet-18 engine"
    cache = folder.get("loader-cache")
    if speed(cache) is None or speed(engine) is None:
        rows.append([cache_name, "n/a", f"loader-cache: {why_missing(cache)}"])
    else:
        rows.append([cache_name, f"{speed(cache) / speed(engine):.2f}x", ""])
    return rows


def other_rows(stages: dict) -> list[list[str]]:
    run = stages.get("default-run", {})
    seconds = run.get("seconds_to_95")
    value = f"{seconds:.1f} s" if seconds is not None else "not reached"
    rows = [["`python train.py` (defaults) to 95 % validation accuracy", value, ""]]
    tests = stages.get("cuda-tests", {})
    counts = ", ".join(f"{number} {word}" for word, number in tests.get("counts", {}).items())
    rows.append(["baked tests marked `cuda`", tests.get("status", "not run"), counts])
    return rows


def markdown_report(header: dict, stages: dict) -> str:
    device = header["device"]
    peak = peak_tflops(device)
    rows = model_rows(stages, peak, device) + folder_rows(stages) + other_rows(stages)
    lines = [
        f"# GPU check: {device}, {header['date']}",
        "",
        f"torch {header['torch']}, CUDA {header['cuda']}, Python {header['python']}, "
        f"{header['cpu_cores']} CPU cores; dense bf16 peak "
        + (f"{peak:g} TFLOP/s" if peak else "unknown"),
        "",
        "| measure | value | details |",
        "| --- | --- | --- |",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        "| stage | status | seconds | note |",
        "| --- | --- | --- | --- |",
    ]
    for name, stage in stages.items():
        note = str(stage.get("note", "")).replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {name} | {stage['status']} | {stage.get('seconds', '')} | {note} |")
    return "\n".join(lines) + "\n"
