"""The optional features of this project, found by which of their modules it has.

Each optional feature (DDP, mixed precision, safetensors, a tracker, sweeps) lives in modules
of its own. When the project was generated, the post-generation hook deleted the modules of
the features that were turned off; nothing else in the code differs between projects. The
code that uses a feature asks for its module here instead of importing it, and falls back to
the plain single-process, float32, .pt-only behaviour when the module is absent.
"""

import importlib
import importlib.util
from types import ModuleType


def has_feature(name: str) -> bool:
    """Whether this project has the module `name`, found without importing it (which may
    import torch: seconds that a usage error or --help does not need)."""
    return importlib.util.find_spec(f"{__package__}.{name}") is not None


def feature_module(name: str) -> ModuleType | None:
    """The package's module `name` (e.g. "distributed"), or None when this project has none.

    Only the module's own absence counts: an import error inside it (a missing dependency,
    say) is raised as usual, so that a broken install is not mistaken for a feature that is
    turned off.
    """
    qualified = f"{__package__}.{name}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as error:
        if error.name != qualified:
            raise
        return None
