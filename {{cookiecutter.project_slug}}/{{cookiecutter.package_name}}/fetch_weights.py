"""Fetch the published weights of models into the local caches, on a machine with a network:

    python -m <package>.fetch_weights NAME [NAME ...]

NAME is a model.name: a torchvision model (resnet18, mobilenet_v3_small, ...) or a timm one
(timm:convnext_nano, timm:resnet18.a1_in1k). torchvision's weights are downloaded by
torchvision into torch.hub's folder (TORCH_HOME), timm's by timm and huggingface_hub into the
Hugging Face cache (HF_HOME / HF_HUB_CACHE). For each name it prints where the file is and
what to copy to a machine without a network; a file already there is not fetched again.
Training itself never downloads (see pretrained.py): `model.pretrained=true` reads these caches.
"""

import argparse
import sys

from .pretrained import (
    FETCH_COMMAND,
    TIMM_PREFIX,
    WeightsFile,
    import_timm,
    is_timm_name,
    published_weights_file,
    torchvision_weights,
    weights_only_loads,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=FETCH_COMMAND,
        description=(
            "Download the published weights of each model.name into the local caches (on a "
            "machine with a network), and say what to copy to a machine without one."
        ),
    )
    parser.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="a torchvision model (e.g. resnet18) or timm:NAME (e.g. timm:convnext_nano)",
    )
    names = parser.parse_args(argv).names
    from .errors import exit_code_of

    return exit_code_of(fetch_all, names, fix="set TORCH_HOME or HF_HOME to a writable folder")


def fetch_all(names: list[str]) -> int:
    """Fetch the weights of every name not cached yet: every name is checked first, so a typo
    in the last one stops the command before any download."""
    from .model import check_model_name

    for name in names:
        check_model_name(name)
        published_weights_file(name)  # one line for a model without published weights
    for name in names:
        located = published_weights_file(name)
        if located.found is None:
            download(located)
            located = published_weights_file(name)
        if located.found is None:
            from .errors import EnvironmentProblem

            raise EnvironmentProblem(
                f"the weights of {name} were downloaded but are not at {located.expected}; "
                "check TORCH_HOME, HF_HOME and HF_HUB_CACHE"
            )
        print(f"{name}: {located.found}")
        print(f"  for a machine without a network: {located.copy_hint}")
    return 0


def download(located: WeightsFile) -> None:
    """The library's own download of `located` into its cache (read back weights-only)."""
    from .errors import EnvironmentProblem

    print(f"{located.name}: downloading {located.label}", file=sys.stderr)
    try:
        with weights_only_loads():
            if is_timm_name(located.name):
                import_timm().create_model(located.name.removeprefix(TIMM_PREFIX), pretrained=True)
            else:
                torchvision_weights(located.name).get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, ValueError) as error:  # network, HTTP, hash, a bad file
        problem = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise EnvironmentProblem(
            f"could not download the weights of {located.name} ({type(error).__name__}: "
            f"{problem[:300]}); run this on a machine with a network (behind a proxy, set "
            "HTTPS_PROXY)"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
