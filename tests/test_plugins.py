"""Entry-point discovery, the allow-list and broken plugins, with the test distribution in tests/plugins."""

import importlib.metadata
import json
import warnings

import pytest
from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.plugin import registry
from tdfusion_core.plugin.manager import PluginLoadWarning, describe_plugins, get_plugin_manager


@pytest.fixture(autouse=True)
def _require_test_plugin():
    names = {ep.name for ep in importlib.metadata.entry_points(group="tdfusion")}
    if "testplugin" not in names:
        pytest.fail(
            "the test plugin distribution is not installed: pip install -e tests/plugins/tdfusion-testplugin "
            "(nox -s tests does this)",
            pytrace=False,
        )


def test_installed_plugin_is_discovered(fresh_plugins):
    fresh_plugins.delenv("TDFUSION_LOAD_PLUGINS", raising=False)
    with pytest.warns(PluginLoadWarning, match="brokenplugin"):
        pm = get_plugin_manager()
    assert pm.has_plugin("testplugin")
    assert "constant-test" in registry.available("task")
    assert "tiny-seg" in registry.available("task")


def test_broken_plugin_is_reported_and_others_work(fresh_plugins):
    fresh_plugins.delenv("TDFUSION_LOAD_PLUGINS", raising=False)
    with pytest.warns(PluginLoadWarning, match="broken on purpose"):
        rows = {row["name"]: row for row in describe_plugins()}
    assert rows["brokenplugin"]["error"] == "ImportError: this test plugin is broken on purpose"
    assert rows["testplugin"]["error"] is None
    assert rows["testplugin"]["version"] == "0.0.1"
    assert rows["testplugin"]["registers"] == {"task": ["constant-test"]}


def test_allow_list_limits_plugins(fresh_plugins):
    fresh_plugins.setenv("TDFUSION_LOAD_PLUGINS", "testplugin")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)  # the broken plugin is not even tried
        pm = get_plugin_manager()
    assert pm.has_plugin("testplugin")
    assert not pm.has_plugin("brokenplugin")


def test_empty_allow_list_loads_only_builtins(fresh_plugins):
    fresh_plugins.setenv("TDFUSION_LOAD_PLUGINS", "")
    names = {row["name"] for row in describe_plugins()}
    assert names and all(n.startswith("tdfusion_core") for n in names)
    assert "constant-test" not in registry.available("task")


def test_cli_plugins_lists_builtin_and_installed(fresh_plugins):
    fresh_plugins.setenv("TDFUSION_LOAD_PLUGINS", "testplugin,brokenplugin")
    with pytest.warns(PluginLoadWarning):
        cli = build_cli()
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    by_name = {r["name"]: r for r in rows}
    assert by_name["tdfusion_core.plugin.builtin_tasks"]["registers"]["task"] == ["tiny-seg"]
    assert "testplugin" in by_name and by_name["brokenplugin"]["error"]
    assert CliRunner().invoke(cli, ["hello-test"]).output.strip() == "hello from testplugin"


def test_every_announced_command_has_help():
    cli = build_cli()
    for name in ("plugins", "train", "fuse", "eval", "data", "demo", "bench", "downstream", "new-plugin"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name
