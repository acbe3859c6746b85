"""Fuzzing of what a user hands the project besides model files: YAML settings, run
folders and image trees, mutated the way a bad copy, an old version, an editor or a hostile
sender leaves them. Each ends in a result or one `error:` line (in-process: a Config, a
DataBundle, or one ConfigError / DataError line), never a traceback, a hang, or memory
without bound. (tests/test_fuzz_files.py does the same for safetensors, .pt2 and ONNX.)

The neighbours fuzz other sides: tests/test_config_properties.py random command lines and
YAML documents, tests/test_data_properties.py image modes, formats and odd files. Here:
byte-level mutations of the project's own config files, alias bombs, code tags and wrong
types of every kind of setting; every file of a real run folder damaged, swapped, or
replaced by a folder, a link, a pipe or an endless device; image trees with links (loops
included), pipes, folders named like images, names that are not UTF-8 and images whose
header declares a huge size.

Examples are derandomized (the same on every run, a failure reproducible) and few where
each costs a training run. What could hang (a pipe) or grow without bound (/dev/zero) runs
in a child process with a time limit and an address-space limit, or in-process under an
alarm that raises past the project's handlers.
"""

import contextlib
import io
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
import torch
from conftest import SMALL_OVERRIDES, write_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.config import Config, ConfigError, load_config, schema_fields
from {{ cookiecutter.package_name }}.data import build_datasets, build_loader
from {{ cookiecutter.package_name }}.resume_rules import settings_given

# Left out of the quick subset (pytest -m "not slow"): every test here fuzzes configs, image trees
# and run folders, many in processes.
pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The address space a child process may take: torch's libraries need a few GiB of it,
# reading a record file far less; an endless read fails well before the machine is full.
CHILD_ADDRESS_SPACE = 8 << 30
# Seconds a child process may take: a resume of the tiny run takes a few on a loaded machine.
CHILD_TIMEOUT = 120
# Seconds one in-process example may take before it counts as a hang.
EXAMPLE_ALARM = 120


def examples(count: int) -> settings:
    # No deadline and no health checks: a loaded machine is slow, not wrong. derandomize
    # and no database: the same examples on every run, nothing written into the project.
    return settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so that no `except Exception` of the project
    turns a hang into a tidy error line."""


@contextlib.contextmanager
def no_hang(seconds: int = EXAMPLE_ALARM):
    def ring(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_one_line(message: str) -> None:
    assert message.strip() and "\n" not in message.strip(), message
    assert "Traceback" not in message, message


def limited_child() -> None:
    """preexec_fn of a child process: bounded address space, so that an endless read
    fails (MemoryError, a traceback) instead of filling the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))


def run_child(*args: str) -> subprocess.CompletedProcess:
    """`python ARGS` in the project root, one thread, bounded in time and address space."""
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        preexec_fn=limited_child,
    )


def assert_result_or_one_error_line(result: subprocess.CompletedProcess) -> None:
    """Exit 0, or a non-zero exit with exactly one `error:` line on stderr, as its last
    line; no traceback, and no running out of memory on files of a few kilobytes."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if result.returncode == 0:
        return
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    assert "memory" not in errors[0].lower(), errors[0]


# ---------------------------------------------------------------------------------------
# YAML: the config files the user writes or copies
# ---------------------------------------------------------------------------------------

CONFIG_FILES = [DEFAULT_CONFIG, *sorted((PROJECT_ROOT / "configs").rglob("*.yaml"))]
CONFIG_FILES = sorted(set(CONFIG_FILES))
# Lines or values that mean something to YAML, PyYAML or OmegaConf beyond plain settings.
HOSTILE_SNIPPETS = (
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/tuple [1, 2]",
    "!!binary aGVsbG8=",
    "!!timestamp 2024-01-01",
    "!!set {a, b}",
    "!!omap [{a: 1}]",
    "!!int x",
    "!!float [1]",
    "!!str",
    "!<tag:yaml.org,2002:python/object:os.PathLike> {}",
    "&anchor [*anchor]",
    "*nowhere",
    "<<: *nowhere",
    "<<: [1, 2]",
    "? [complex, key]\n: 1",
    "{a: 1, a: 2}",
    "[" * 3000 + "]" * 3000,
    "{a: " * 1500 + "1" + "}" * 1500,
    "1e999",
    "-.inf",
    ".nan",
    "9" * 5000,
    "0x" + "f" * 3000,
    "0o" + "7" * 3000,
    "1_000_000_000_000_000_000_000_000",
    "${oc.env:HOME}",
    "${oc.decode:'[1, 2]'}",
    "${data}",
    "${nowhere.at.all}",
    "???",
    "---\nseed: 1",
    "...",
    "%YAML 1.1",
    "%TAG ! tag:example.com,2000:",
    "\t",
    "\ufeff",
    "\u2028",
    "\x85",
    "é" * 100,
    "'unterminated",
    '"\\x"',
    "|\n  block\n text",
    "- a\n- b",
)
# Bytes that are not UTF-8 text or that YAML forbids.
HOSTILE_BYTES = (
    b"\xff",
    b"\xfe\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\x00",
    b"\x1b[31m",
    b"\r",
    b"\x7f",
    b"\xef\xbb\xbf",
)


@st.composite
def mutated_config_files(draw) -> bytes:
    """A config file of the project with one to four mutations: a byte flipped, bytes
    inserted or cut, the file cut off, a line repeated (a duplicate key), re-indented, or
    a value or line replaced by something YAML reads differently."""
    data = bytearray(draw(st.sampled_from(CONFIG_FILES)).read_bytes())
    # A changed value or line reaches the checks of settings; a broken byte mostly the
    # parser's: the first two kinds are drawn more often.
    kinds = ["value", "line", "value", "line", "value"]
    kinds += ["flip", "insert", "cut", "truncate", "repeat", "indent"]
    for _ in range(draw(st.sampled_from([1, 1, 2, 4]))):
        kind = draw(st.sampled_from(kinds))
        lines = bytes(data).split(b"\n")
        at = draw(st.integers(0, max(0, len(data) - 1)))
        line = draw(st.integers(0, len(lines) - 1))
        snippet = draw(st.sampled_from(HOSTILE_SNIPPETS)).encode()
        settings_lines = [number for number, text in enumerate(lines) if b": " in text]
        if kind == "value" and settings_lines:  # keep a key, change its value
            line = draw(st.sampled_from(settings_lines))
            key = lines[line].split(b": ", 1)[0]
            lines[line] = key + b": " + snippet
        elif kind == "line":
            indent = draw(st.sampled_from([b"", b"  ", b"    ", b" "]))
            lines.insert(line, indent + draw(st.sampled_from([snippet, b"key: " + snippet])))
        elif kind == "repeat":
            lines.insert(line, lines[line])
        elif kind == "indent":
            lines[line] = draw(st.sampled_from([b"\t", b" ", b"   "])) + lines[line]
        elif kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
            continue
        elif kind == "insert":
            extra = draw(
                st.one_of(st.sampled_from(HOSTILE_BYTES), st.binary(min_size=1, max_size=8))
            )
            data[at:at] = extra
            continue
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
            continue
        elif kind == "truncate":
            del data[at:]
            continue
        data = bytearray(b"\n".join(lines))
    return bytes(data)


def load_one(path: Path) -> Config | ConfigError:
    """What train.py builds from the file: a Config, or the one-line ConfigError."""
    try:
        return load_config([DEFAULT_CONFIG, path], [])
    except ConfigError as error:
        assert_one_line(str(error))
        return error


@examples(100)
@given(document=mutated_config_files())
def test_a_mutated_config_file_gives_a_config_or_one_error_line(document):
    with tempfile.TemporaryDirectory() as folder:
        marker = Path(folder) / "code-ran"
        path = Path(folder) / "settings.yaml"
        path.write_bytes(document.replace(b"{marker}", str(marker).encode()))
        with no_hang():
            outcome = load_one(path)
            if isinstance(outcome, Config):
                # train.py reads the files once more, for the settings given on a resume
                assert isinstance(settings_given([path], []), set)
        assert not marker.exists(), "a YAML tag ran code"


def key_classes() -> dict[str, str]:
    """One setting of each kind (its type and the rules it has), named by that kind."""
    chosen = {}
    for key, item in schema_fields():
        kind = f"{item.type}{sorted(set(item.metadata) - {'help'})}"
        chosen.setdefault(kind, key)
    return chosen


KEY_CLASSES = key_classes()
# Values of every YAML kind, several of which no setting takes.
WRONG_VALUES = (
    "null", "true", "no", "0", "-1", "3", "99999999999999999999999999", "9" * 5000, "1e999",
    "-.inf", ".nan", "0.5", "-0.0", "''", "'text'", "'3'", "[]", "[1, 2]", "['a', null]",
    "[[1]]", "{}", "{a: 1}", "{lr: 0.1}", "!!binary aGk=", "2024-01-01", "!!set {a}",
    "${seed}", "${data}", "${oc.env:NO_SUCH_VARIABLE_HERE}", "'\\u0000'", "\"\\x00\"",
    "'é\\n'", "!!python/tuple [1]",
)  # fmt: skip


@pytest.mark.parametrize("key", sorted(KEY_CLASSES.values()))
def test_a_value_of_the_wrong_kind_gives_a_config_or_one_error_line(tmp_path, key):
    """Each kind of setting (bool, int with bounds, optional float, list, choices, ...)
    given every kind of YAML value, in a file and as an override."""
    section, _, name = key.rpartition(".")
    path = tmp_path / "settings.yaml"
    for value in WRONG_VALUES:
        text = f"{section}:\n  {name}: {value}\n" if section else f"{name}: {value}\n"
        path.write_text(text, encoding="utf-8")
        # (the schema's defaults without configs/default.yaml: the same checks, faster)
        for files, overrides in (([path], []), ([], [f"{key}={value}"])):
            try:
                load_config(files, overrides)
            except ConfigError as error:
                assert_one_line(str(error))


def alias_bomb(levels: int, shape: str) -> str:
    """A document of `levels` anchors, each holding ten aliases of the one before: a few
    hundred bytes that expand to 10**levels values (the "billion laughs")."""
    lines = ["laughs:", "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels):
        aliases = [f"*a{level - 1}"] * 10
        if shape == "list":
            lines.append(f"  a{level}: &a{level} [{', '.join(aliases)}]")
        elif shape == "mapping":
            pairs = ", ".join(f"k{index}: {alias}" for index, alias in enumerate(aliases))
            lines.append(f"  a{level}: &a{level} " + "{" + pairs + "}")
        else:  # merge keys of mappings that hold the list
            previous = f"*a{level - 1}"
            lines.append(
                f"  a{level}: &a{level} " + "{<<: [{x: " + previous + "}], y: " + previous + "}"
            )
    return "\n".join(lines) + f"\ndata:\n  mean: *a{levels - 1}\n"


BOMBS = {
    "list": alias_bomb(9, "list"),
    "mapping": alias_bomb(9, "mapping"),
    "merge": alias_bomb(30, "merge"),
    "under a setting": alias_bomb(9, "list").replace("laughs:", "optim:\n  betas: *a8\nx:", 1),
    "recursive list": "data:\n  mean: &a [1, *a]\n",
    "recursive mapping": "data: &a\n  root: *a\n",
    "self merge": "data: &a\n  <<: *a\n",
}


def test_alias_bombs_and_huge_files_stop_with_one_error_line(tmp_path):
    """Every bomb, and a config file of 16 GiB (sparse: free on disk), read in a child
    process limited in time and address space: each is one ConfigError line; none expands
    or is read whole (that would take minutes and gigabytes)."""
    for name, text in BOMBS.items():
        (tmp_path / f"{name.replace(' ', '_')}.yaml").write_text(text, encoding="utf-8")
    huge(tmp_path / "huge.yaml")
    script = (
        "import sys\n"
        "from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG\n"
        "from {{ cookiecutter.package_name }}.config import ConfigError, load_config\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_config([DEFAULT_CONFIG, path], [])\n"
        "        print('loaded', path)\n"
        "    except ConfigError as error:\n"
        "        print('error:', ' '.join(str(error).split()))\n"
    )
    files = sorted(str(path) for path in tmp_path.glob("*.yaml"))
    result = run_child("-c", script, *files)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(files) and all(line.startswith("error: ") for line in lines), lines


# ---------------------------------------------------------------------------------------
# Run folders: what train.py run.resume=... and evaluate.py read back
# ---------------------------------------------------------------------------------------

TINY_RUN = (
    *SMALL_OVERRIDES,
    "data.dataset=imagefolder",
    "data.image_size=8",
    "data.batch_size=4",
    "data.val_fraction=0.25",
)
# Resumed one epoch further, so that the resume reads every record of the folder.
EXTEND = ("run.extend=true", "train.epochs=2")


def close_log_files() -> None:
    """The conftest fixture's clean-up, after each in-process run: one run's log handlers
    must not write into the next example's folder."""
    logger = logging.getLogger("{{ cookiecutter.package_name }}")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """(a run folder of one finished epoch on a tiny image folder, the overrides that made
    it): config.yaml, manifest.json, normalization.json, run-folder.json, metrics, plots,
    a step checkpoint with its sidecar, and last.pt / best.pt beside it."""
    from {{ cookiecutter.package_name }}.train import run

    base = tmp_path_factory.mktemp("fuzz_run")
    write_images(base / "data", {"circle": 6, "square": 6}, size=12)
    overrides = (*TINY_RUN, f"data.root={base / 'data'}")
    cfg = load_config([DEFAULT_CONFIG], [*overrides, f"run.dir={base / 'run'}"])
    try:
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            assert run(cfg) == 0, stderr.getvalue()[-3000:]
    finally:
        close_log_files()
    folder = base / "run"
    for name in ("config.yaml", "manifest.json", "normalization.json", "run-folder.json"):
        assert (folder / name).is_file(), name
    assert list((folder / "checkpoints").glob("step-*.pt.sha256"))
    return folder, overrides


def run_files(folder: Path) -> list[str]:
    """The paths of everything in a run folder, relative to it (folders included)."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def replace_path(path: Path) -> None:
    """Remove whatever is at `path` (a file, a link, a folder)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


# JSON that is valid but not the record, or not JSON a reader can take.
HOSTILE_JSON = (
    b"[]",
    b"null",
    b"{}",
    b'"text"',
    b'{"mean": [1e999], "std": [0]}',
    b'{"mean": [NaN, 1, 2], "std": [-1, 0, 1]}',
    b'{"mean": "abc", "std": {"a": 1}}',
    b'{"kind": 1, "made_by": null}',
    b'{"data": {"fingerprint": 7}, "torch": [], "git": "x"}',
    b"[" * 100_000,
    b'{"a": ' * 50_000,
    b"9" * 10_000,
    b'{"a": 1, "a": 2}',
    b"\xff\xfe{}",
)


@st.composite
def run_folder_mutations(draw, names: list[str]) -> list[tuple[str, str, bytes]]:
    """One to three (path in the run folder, kind of damage, bytes it uses)."""
    # Mostly what a resume reads back (the plots and the log it only writes).
    read_back = [name for name in names if not name.endswith((".png", ".log"))]
    targets = st.one_of(
        st.sampled_from(read_back), st.sampled_from(read_back), st.sampled_from(names)
    )
    chosen = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(targets)
        kind = draw(
            st.sampled_from(
                [
                    "truncate",
                    "flip",
                    "random bytes",
                    "empty",
                    "delete",
                    "hostile json",
                    "hostile yaml",
                    "other file",
                    "folder",
                    "dangling link",
                    "link loop",
                ]
            )
        )
        payload = draw(st.binary(min_size=0, max_size=64))
        if kind == "hostile json":
            payload = draw(st.sampled_from(HOSTILE_JSON))
        elif kind == "hostile yaml":
            payload = draw(st.sampled_from([*BOMBS.values(), *HOSTILE_SNIPPETS])).encode()
        elif kind == "other file":
            payload = draw(st.sampled_from(names)).encode()
        chosen.append((name, kind, payload))
    return chosen


def damage(folder: Path, name: str, kind: str, payload: bytes) -> None:
    """Do one mutation of `run_folder_mutations` to the copy of a run folder."""
    path = folder / name
    if not (path.exists() or path.is_symlink()):
        return  # an earlier mutation took it (or its folder) away
    if kind in ("truncate", "flip") and path.is_file():
        data = bytearray(path.read_bytes())
        if data:
            at = int.from_bytes(payload[:4] or b"\0", "little") % len(data)
            if kind == "truncate":
                del data[at:]
            else:
                for offset, byte in enumerate(payload[4:12] or b"\x01"):
                    data[(at + 97 * offset) % len(data)] ^= byte or 1
        path.write_bytes(bytes(data))  # through a link: the file it leads to
        return
    replace_path(path)
    if kind in ("random bytes", "hostile json", "hostile yaml"):
        path.write_bytes(payload)
    elif kind in ("empty", "truncate", "flip"):
        path.write_bytes(b"")
    elif kind == "other file":
        source = folder / payload.decode()
        if source.is_file() and source != path:
            shutil.copyfile(source, path)
    elif kind == "folder":
        (path / "inside").mkdir(parents=True)
    elif kind == "dangling link":
        path.symlink_to(folder / "nowhere" / path.name)
    elif kind == "link loop":
        path.symlink_to(path)


def resume_in_process(folder: Path, overrides: tuple[str, ...]) -> tuple[int, str]:
    """train.py run.resume=FOLDER, as its main() runs it (errors become one line and an
    exit code; a bug escapes as an exception): (exit code, stderr)."""
    from {{ cookiecutter.package_name }}.train import run

    arguments = [*overrides, f"run.resume={folder}", *EXTEND]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            cfg = load_config([DEFAULT_CONFIG], arguments)
            code = run(cfg, given=settings_given([], arguments))
    except ConfigError as error:  # train.py prints it as one error line, exit 2
        assert_one_line(str(error))
        return 2, f"error: {error}"
    finally:
        close_log_files()
    return code, stderr.getvalue()


@examples(15)
@given(data=st.data())
def test_a_damaged_run_folder_resumes_or_ends_with_one_error_line(finished_run, data):
    original, overrides = finished_run
    names = run_files(original)
    mutations = data.draw(run_folder_mutations(names))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "run"
        shutil.copytree(original, folder, symlinks=True)
        for mutation in mutations:
            damage(folder, *mutation)
        with no_hang():
            code, stderr = resume_in_process(folder, overrides)
    lines = stderr.strip().splitlines()
    assert not any("Traceback" in line for line in lines), stderr[-3000:]
    if code != 0:
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0] == lines[-1], stderr[-3000:]


@st.composite
def damaged_contents(draw, original: bytes) -> bytes:
    """The bytes of a run-folder file after one to three edits: cut off, bytes flipped,
    inserted or cut out, or the whole replaced by hostile JSON or YAML or random bytes."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "cut", "replace"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b"\x00", b"\xff", b"[", b"{", b'"', b"1e999"]))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 32))]
        else:
            hostile = st.sampled_from([*HOSTILE_JSON, *(text.encode() for text in BOMBS.values())])
            data = bytearray(draw(st.one_of(hostile, st.binary(max_size=64))))
    return bytes(data)


RECORDS = ("config.yaml", "normalization.json", "manifest.json", "checkpoint", "sidecar")


@examples(150)
@given(data=st.data())
def test_each_record_of_a_run_folder_reads_or_is_refused_in_one_line(finished_run, data):
    """The readers a resume uses, called directly (many more examples than whole resumes):
    a damaged config.yaml, normalization.json or manifest.json is a record that warns, a
    damaged checkpoint or sidecar is refused with one CheckpointError line, or skipped."""
    from {{ cookiecutter.package_name }}.checkpoint import CheckpointError, CheckpointManager
    from {{ cookiecutter.package_name }}.data.stats import read_stats_record
    from {{ cookiecutter.package_name }}.manifest import read_manifest
    from {{ cookiecutter.package_name }}.resume import check_config_record
    from {{ cookiecutter.package_name }}.runs import RunFolder

    original, overrides = finished_run
    record = data.draw(st.sampled_from(RECORDS))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "run"
        shutil.copytree(original, folder, symlinks=True)
        step = the_step_checkpoint(folder)
        path = {"checkpoint": step, "sidecar": Path(f"{step}.sha256")}.get(record)
        path = path or folder / record
        path.write_bytes(data.draw(damaged_contents(path.read_bytes())))
        cfg = load_config([DEFAULT_CONFIG], [*overrides, f"run.dir={folder}"])
        with no_hang():
            check_config_record(RunFolder(folder), cfg, step, given=set())
            stats, problem = read_stats_record(folder / "normalization.json", 3)
            assert (stats is None) != (problem is None)
            manifest = read_manifest(folder)
            assert manifest is None or isinstance(manifest, dict)
            try:
                found = CheckpointManager(folder / "checkpoints", is_main=False).load_newest_valid()
                assert found is None or isinstance(found[1], dict)
            except CheckpointError as error:
                assert_one_line(str(error))


def the_step_checkpoint(folder: Path) -> Path:
    return next((folder / "checkpoints").glob("step-*.pt"))


def endless(path: Path) -> None:
    """`path` becomes a link to /dev/zero: a file whose size says 0 and whose reading
    never ends."""
    replace_path(path)
    path.symlink_to("/dev/zero")


def pipe(path: Path) -> None:
    """`path` becomes a named pipe that nobody writes: opening it waits forever."""
    replace_path(path)
    os.mkfifo(path)


def huge(path: Path) -> None:
    """`path` becomes a sparse file of 16 GiB: cheap on disk, not to be read whole."""
    replace_path(path)
    with path.open("wb") as file:
        file.truncate(16 << 30)


def other_kind(path: Path) -> None:
    """A checkpoint replaced by a file of another kind with its name: a PNG of the run."""
    replace_path(path)
    shutil.copyfile(path.parent.parent / "loss.png", path)


def torch_save_of_a_list(path: Path) -> None:
    """A real torch archive that holds no checkpoint."""
    replace_path(path)
    torch.save([1, 2, 3], path)


def records_that_never_end(folder: Path) -> None:
    """The records a resume reads back become pipes nobody writes and links to /dev/zero
    (run-folder.json stays: without it the folder is not taken for a run folder at all)."""
    pipe(folder / "normalization.json")
    pipe(folder / "config.yaml")
    endless(folder / "manifest.json")


def records_of_16_gib(folder: Path) -> None:
    for name in ("normalization.json", "manifest.json", "config.yaml"):
        huge(folder / name)


# What a record or a checkpoint can be replaced by that a plain mutation does not make,
# each resumed in a child process (the real entry point, limited in time and memory).
# Records only are damaged in the first two: the checkpoint is the truth, so the run goes
# on (with warnings).
RECORDS_ONLY = ("records are pipes and /dev/zero", "records are 16 GiB")
SPECIAL_DAMAGE = {
    "records are pipes and /dev/zero": records_that_never_end,
    "records are 16 GiB": records_of_16_gib,
    "the checkpoint's sidecar is /dev/zero": lambda f: endless(
        Path(f"{the_step_checkpoint(f)}.sha256")
    ),
    "the checkpoint's sidecar is 16 GiB": lambda f: huge(Path(f"{the_step_checkpoint(f)}.sha256")),
    "the checkpoint is a PNG": lambda f: other_kind(the_step_checkpoint(f)),
    "the checkpoint is a pickle of a list": lambda f: torch_save_of_a_list(the_step_checkpoint(f)),
}


@pytest.mark.parametrize("case", sorted(SPECIAL_DAMAGE))
def test_train_py_resumes_a_run_folder_with_special_files_or_ends_with_one_line(
    finished_run, tmp_path, case
):
    original, overrides = finished_run
    folder = tmp_path / "run"
    shutil.copytree(original, folder, symlinks=True)
    SPECIAL_DAMAGE[case](folder)
    result = run_child("train.py", *overrides, f"run.resume={folder}", *EXTEND)
    assert_result_or_one_error_line(result)
    if case in RECORDS_ONLY:
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    "case",
    ["records are pipes and /dev/zero", "the checkpoint is a PNG"],
)
def test_evaluate_py_on_a_damaged_run_folder_ends_with_a_result_or_one_line(
    finished_run, tmp_path, case
):
    original, overrides = finished_run
    folder = tmp_path / "run"
    shutil.copytree(original, folder, symlinks=True)
    SPECIAL_DAMAGE[case](folder)
    result = run_child("evaluate.py", str(folder), "train.device=cpu", "data.num_workers=0")
    assert_result_or_one_error_line(result)
    if case in RECORDS_ONLY:
        assert result.returncode == 0, result.stderr[-3000:]


# ---------------------------------------------------------------------------------------
# Image trees: data.root as the user's disk holds it
# ---------------------------------------------------------------------------------------


def png_bytes(side: int, seed: int) -> bytes:
    """A small real PNG of noise (through torchvision's encoder: no PIL state involved)."""
    from torchvision.io import encode_png

    pixels = torch.randint(0, 256, (3, side, side), generator=torch.Generator().manual_seed(seed))
    return bytes(encode_png(pixels.to(torch.uint8)).numpy())


def jpeg_bytes(side: int, seed: int) -> bytes:
    from torchvision.io import encode_jpeg

    pixels = torch.randint(0, 256, (3, side, side), generator=torch.Generator().manual_seed(seed))
    return bytes(encode_jpeg(pixels.to(torch.uint8)).numpy())


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header that declares `width` x `height` pixels, followed by almost no data:
    a decompression bomb's size without its bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".jfif", ".bmp", ".gif", ".webp", ".tif")


@st.composite
def entries(draw, depth: int) -> dict:
    """One entry of a tree: ("file", bytes), ("dir", {name: entry}), ("link", target
    relative to data.root, or None for a link that leads nowhere), ("pipe",)."""
    kind = draw(
        st.sampled_from(["image", "bad", "image", "bad", "dir", "link", "pipe", "empty dir", "bad"])
    )
    if kind == "dir" and depth < 3:
        return ("dir", draw(trees(depth + 1)))
    if kind == "empty dir":
        return ("dir", {})
    if kind == "link":
        return ("link", draw(st.sampled_from([None, ".", "..", "loop", "class0", "class1"])))
    if kind == "pipe":
        return ("pipe",)
    seed = draw(st.integers(0, 2**16))
    if kind == "image" or kind == "dir":
        side = draw(st.sampled_from([12, 16, 3, 40]))
        encode = draw(st.sampled_from([png_bytes, jpeg_bytes]))
        return ("file", encode(side, seed))
    good = png_bytes(12, seed)
    bad = draw(
        st.sampled_from(
            [
                b"",
                good[: len(good) // 2],
                jpeg_bytes(12, seed)[:100],
                bytes(draw(st.binary(min_size=1, max_size=256))),
                png_declaring(100_000, 100_000),
                png_declaring(9_500, 9_500),
                png_declaring(0, 5),
                b"GIF89a" + b"\xff" * 20,
                b"II*\x00" + b"\xff" * 20,
            ]
        )
    )
    return ("file", bad)


# Names a disk may hold: hidden, spaced, unicode, with shell characters, image suffixes on
# folders, and bytes that are not UTF-8 (read back by Python as surrogate escapes).
ODD_NAMES = (
    ".hidden", " spaced ", "__MACOSX", "-dash", "a\nb", "中文", "emoji🙂", "x.png",
    os.fsdecode(b"bad\xff\xfe"), os.fsdecode(b"\xe9t\xe9"), "train", "val", "#%&;$",
)  # fmt: skip
names = st.one_of(
    st.sampled_from(ODD_NAMES),
    st.text("abcxyz019_-", min_size=1, max_size=6),
)


@st.composite
def trees(draw, depth: int = 0) -> dict:
    """{name: entry}: up to four entries, names with or without an image suffix."""
    tree = {}
    for _ in range(draw(st.integers(0, 4))):
        name = draw(names)
        entry = draw(entries(depth))
        if entry[0] == "file" or draw(st.booleans()):
            name += draw(st.sampled_from(IMAGE_SUFFIXES))
        tree[name] = entry
    return tree


@st.composite
def data_roots(draw) -> dict:
    """Two or three class folders (a usable start), each with a tree inside, and maybe
    odd entries beside them."""
    classes = {}
    for number in range(draw(st.integers(2, 3))):
        images = {f"{index}.png": ("file", png_bytes(12, index)) for index in range(2)}
        classes[f"class{number}"] = ("dir", {**images, **draw(trees(1))})
    return {**classes, **draw(trees(1))}


def write_entries(folder: Path, tree: dict, root: Path) -> None:
    """The tree on disk; an entry whose name the OS refuses is left out."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, entry in tree.items():
        path = folder / name
        with contextlib.suppress(OSError):
            if entry[0] == "file":
                path.write_bytes(entry[1])
            elif entry[0] == "dir":
                write_entries(path, entry[1], root)
            elif entry[0] == "pipe":
                os.mkfifo(path)
            elif entry[1] is None:
                path.symlink_to(root / "nowhere")
            elif entry[1] == "loop":
                path.symlink_to(path)
            else:  # ".", "..", a class folder: a folder walked twice, or a loop
                path.symlink_to(folder / entry[1] if entry[1] in (".", "..") else root / entry[1])


@pytest.mark.parametrize("skip_bad", [False, True], ids=["strict", "skip_bad"])
@pytest.mark.parametrize("cache", [False, True], ids=["from_files", "cached"])
@examples(15)
@given(tree=data_roots())
def test_any_image_tree_builds_the_data_or_stops_with_one_line(tree, skip_bad, cache):
    from {{ cookiecutter.package_name }}.config import DataConfig

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary) / "data"
        write_entries(root, tree, root)
        cfg = DataConfig(
            dataset="imagefolder",
            root=str(root),
            image_size=8,
            batch_size=4,
            num_workers=0,
            val_fraction=0.5,
            skip_bad=skip_bad,
            cache=cache,
        )
        try:
            with no_hang():
                bundle = build_datasets(cfg, seed=0)
                for train, dataset in ((True, bundle.train), (False, bundle.val)):
                    for images, labels in build_loader(dataset, cfg, train=train, seed=0):
                        assert images.shape[1:] == (bundle.in_channels, 8, 8)
                        assert torch.isfinite(images).all()
                        assert int(labels.max()) < len(bundle.classes)
        except ConfigError as error:  # DataError is one
            assert_one_line(str(error))
