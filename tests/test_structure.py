"""The baked training code keeps the shape of "one code path" (bench/structure.py)."""

from bench.structure import function_lengths, measure, parameter_count


def test_the_all_features_bake_meets_the_structure_goals(baked):
    from tests.conftest import ALL_FEATURES

    result = baked(ALL_FEATURES)
    assert result.exit_code == 0, result.exception
    structure = measure(result.project_path / result.context["package_name"])
    assert structure.problems() == []
    assert 0 < structure.main_lines <= 120


def test_the_measures_see_long_functions_and_parameters(tmp_path):
    module = tmp_path / "engine.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    source = f"def long():\n{body}\n\n\nclass A:\n    def short(self):\n        return 1\n\n\n"
    source += "def train_one_epoch(a, b, c, d, e, f, g=1, *, h=2):\n    return a\n"
    module.write_text(source, encoding="utf-8")
    lengths = function_lengths(module)
    assert lengths["long"] == 71 and lengths["A.short"] == 2
    assert parameter_count(module, "train_one_epoch") == 8
