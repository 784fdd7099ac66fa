"""Old import paths (from before the layer folders) work for one release: the same module, with a warning."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys

import pytest

from tdfusion_core._moved import MOVED, new_path


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_gives_the_module_at_its_new_path_with_a_warning(old: str) -> None:
    new = MOVED[old]
    module = importlib.import_module(new)
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old} moved to {new}")):
        assert importlib.import_module(old) is module
    assert module.__spec__ is not None and module.__spec__.name == new


def test_modules_below_a_moved_package_follow_it_and_others_stay():
    package = next(old for old, new in MOVED.items() if importlib.util.find_spec(new).submodule_search_locations)
    assert new_path(package + ".anything") == MOVED[package] + ".anything"
    assert new_path("tdfusion_core.nets") is None
    assert new_path("tdfusion_core.commandsx") is None
