"""Structure figures of the baked training code, against the goals of "one code path".

    python bench/structure.py

Bakes the all-features project into a temporary folder and reports: the Jinja tags left in
the package's Python templates, the length of `train.main`, every other function over 60
lines, the parameters of `train_one_epoch`, and every module over 450 lines. Exits 1 when a
goal is missed. tests/test_structure.py runs the same measurement.
"""

import ast
import contextlib
import io
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent
PACKAGE_TEMPLATE = TEMPLATE / "{{cookiecutter.project_slug}}" / "{{cookiecutter.package_name}}"
GOALS = {"jinja_tags": 10, "main_lines": 120, "function_lines": 60, "loop_params": 6}
MODULE_LINES = 450


@dataclass
class Structure:
    jinja_tags: int
    main_lines: int
    loop_params: int
    long_functions: dict[str, int] = field(default_factory=dict)  # "module:function" -> lines
    long_modules: dict[str, int] = field(default_factory=dict)  # module -> lines

    def problems(self) -> list[str]:
        found = []
        if self.jinja_tags > GOALS["jinja_tags"]:
            found.append(f"{self.jinja_tags} Jinja tags in the package (goal <= 10)")
        if self.main_lines > GOALS["main_lines"]:
            found.append(f"train.main has {self.main_lines} lines (goal <= 120)")
        if self.loop_params > GOALS["loop_params"]:
            found.append(f"train_one_epoch takes {self.loop_params} parameters (goal <= 6)")
        for name, lines in self.long_functions.items():
            found.append(f"{name}: {lines} lines (goal <= 60)")
        for name, lines in self.long_modules.items():
            found.append(f"{name}: {lines} lines (goal <= 450)")
        return found


def count_jinja_tags(package_template: Path = PACKAGE_TEMPLATE) -> int:
    """`{% ... %}` tags in the Python templates of the package (subpackages included)."""
    modules = package_template.rglob("*.py")
    return sum(path.read_text(encoding="utf-8").count("{%") for path in modules)


def all_features() -> dict:
    """The answers that turn on every feature: each yes/no prompt of cookiecutter.json on,
    and the last choice of the tracker."""
    prompts = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
    answers = {key: True for key, value in prompts.items() if isinstance(value, bool)}
    return {**answers, "tracker": prompts["tracker"][-1]}


def bake_all_features(output: Path) -> Path:
    """The package folder of an all-features bake made in `output`."""
    from cookiecutter.main import cookiecutter

    with contextlib.redirect_stdout(io.StringIO()):  # the hook's next steps
        project = cookiecutter(
            str(TEMPLATE), no_input=True, extra_context=all_features(), output_dir=str(output)
        )
    return next(path.parent for path in sorted(Path(project).glob("*/train.py")))


def function_lengths(module: Path) -> dict[str, int]:
    """Lines of every function and method in `module`, by qualified name."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    lengths = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return lengths


def parameter_count(module: Path, function: str) -> int:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            arguments = node.args
            return len(arguments.posonlyargs + arguments.args + arguments.kwonlyargs)
    raise LookupError(f"no function {function} in {module}")


def measure(package: Path) -> Structure:
    """The figures of the baked package at `package`."""
    structure = Structure(
        jinja_tags=count_jinja_tags(),
        main_lines=function_lengths(package / "train.py")["main"],
        loop_params=parameter_count(package / "engine.py", "train_one_epoch"),
    )
    for module in sorted(package.rglob("*.py")):
        name = str(module.relative_to(package))
        lines = len(module.read_text(encoding="utf-8").splitlines())
        if lines > MODULE_LINES:
            structure.long_modules[name] = lines
        for function, length in function_lengths(module).items():
            if length > GOALS["function_lines"] and not (name == "train.py" and function == "main"):
                structure.long_functions[f"{name}:{function}"] = length
    return structure


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        package = bake_all_features(Path(folder))
        structure = measure(package)
        modules = len(list(package.rglob("*.py")))
    print("| measure | goal | all-features bake |")
    print("| --- | --- | --- |")
    print(f"| Jinja tags in the package's Python templates | <= 10 | {structure.jinja_tags} |")
    print(f"| lines of train.main | <= 120 | {structure.main_lines} |")
    print(f"| parameters of train_one_epoch | <= 6 | {structure.loop_params} |")
    print(f"| other functions over 60 lines | 0 | {len(structure.long_functions)} |")
    print(f"| modules over 450 lines (of {modules}) | 0 | {len(structure.long_modules)} |")
    for problem in structure.problems():
        print(f"goal missed: {problem}")
    return 1 if structure.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
