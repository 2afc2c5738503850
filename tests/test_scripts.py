import importlib.util

from tests.conftest import REPO


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_preset_table_is_what_the_plan_says():
    table = load_script("preset_table").table([])
    readme = (REPO / "README.md").read_text()
    assert table in readme, "README's preset table is stale: regenerate it with scripts/preset_table.py"
