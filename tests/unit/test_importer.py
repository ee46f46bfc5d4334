"""Loading apps from 'module:attr' strings."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestrelpy.errors import AppImportError
from kestrelpy.importer import is_asgi3, load_app


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "good_app.py").write_text(
        "class Nested:\n"
        "    async def app(self, scope, receive, send):\n"
        "        pass\n"
        "nested = Nested()\n"
        "async def app(scope, receive, send):\n"
        "    pass\n"
        "def create():\n"
        "    return app\n"
        "not_callable = 42\n"
        "class Asgi2:\n"
        "    def __init__(self, scope):\n"
        "        self.scope = scope\n"
        "    async def __call__(self, receive, send):\n"
        "        pass\n"
    )
    (tmp_path / "broken_app.py").write_text("import not_a_real_dependency_xyz\n")
    (tmp_path / "raising_app.py").write_text("raise RuntimeError('config missing')\n")
    yield tmp_path
    for name in ("good_app", "broken_app", "raising_app"):
        sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_loads_attribute_and_nested_attribute(app_dir: Path) -> None:
    assert load_app("good_app:app", app_dir=str(app_dir)).__name__ == "app"
    nested = load_app("good_app:nested.app", app_dir=str(app_dir))
    assert callable(nested)


def test_factory(app_dir: Path) -> None:
    assert load_app("good_app:create", factory=True, app_dir=str(app_dir)).__name__ == "app"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing_module_xyz:app", "Could not import module 'missing_module_xyz'"),
        ("good_app:nope", "Attribute 'nope' not found"),
        ("good_app:not_callable", "must be an ASGI callable"),
        ("broken_app:app", "not_a_real_dependency_xyz"),
        ("raising_app:app", "RuntimeError: config missing"),
        ("no_colon", "module:attribute"),
    ],
)
def test_clear_errors(app_dir: Path, target: str, message: str) -> None:
    with pytest.raises(AppImportError, match=message):
        load_app(target, app_dir=str(app_dir))


def test_asgi2_apps_are_adapted(app_dir: Path) -> None:
    from kestrelpy.importer import import_from_string

    sys.path.insert(0, str(app_dir))
    assert not is_asgi3(import_from_string("good_app:Asgi2"))
    assert is_asgi3(import_from_string("good_app:app"))
    adapted = load_app("good_app:Asgi2", app_dir=str(app_dir))
    assert is_asgi3(adapted)
