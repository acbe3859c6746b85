"""A fresh bake's configs/default.yaml holds the schema's own defaults.

The baked project's tests accept any values there (the file is its user's to change, and an
update must not make its own tests fail); the template promises that, as baked, the file and
the schema in config.py agree key for key and value for value.
"""

from tests.conftest import DEFAULT, run_python

COMPARE = """
import dataclasses, math
from omegaconf import OmegaConf
from {package}.cli import DEFAULT_CONFIG
from {package}.config import schema_fields
from {package}.yaml_files import flatten

in_yaml = flatten(OmegaConf.to_container(OmegaConf.load(DEFAULT_CONFIG)))
for key, item in schema_fields():
    default = item.default
    if item.default_factory is not dataclasses.MISSING:
        default = item.default_factory()
    value = in_yaml[key]
    same = math.isclose(value, default) if isinstance(default, float) else value == default
    if not same:
        print(f"{{key}}: default.yaml {{value!r}}, schema {{default!r}}")
"""


def test_a_fresh_bake_default_yaml_equals_the_schema_defaults(baked):
    result = baked(DEFAULT)
    assert result.exit_code == 0, result.exception
    package = result.context["package_name"]
    done = run_python(["-c", COMPARE.format(package=package)], cwd=result.project_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "", f"default.yaml and config.py's schema differ:\n{done.stdout}"
