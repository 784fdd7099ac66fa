"""Issue 17 item 2: one plugin cannot take the host down (import, registration, commands, event hooks, hangs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.plugin import registry
from tdfusion_core.plugin.manager import PluginLoadWarning, describe_plugins, get_plugin_manager
from tests.faults.plugin_helpers import (
    BAD_COMMANDS,
    EXITING,
    EXITING_EVENT,
    RAISING_REGISTER,
    install_fake_plugins,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_plugins(tmp_path, fresh_plugins):
    root = install_fake_plugins(
        tmp_path / "site",
        {"exiting": EXITING, "raising": RAISING_REGISTER, "exitevent": EXITING_EVENT, "badcommands": BAD_COMMANDS},
    )
    fresh_plugins.syspath_prepend(str(root))
    fresh_plugins.setenv("TDFUSION_LOAD_PLUGINS", "exiting,raising,exitevent,badcommands,testplugin")
    return fresh_plugins


def test_sys_exit_at_import_is_a_failed_plugin_not_an_exit(fake_plugins):
    with pytest.warns(PluginLoadWarning, match=r"'exiting'.*sys\.exit\(3\)"):
        pm = get_plugin_manager()
    assert not pm.has_plugin("exiting") and pm.has_plugin("testplugin")
    rows = {row["name"]: row for row in describe_plugins()}
    assert rows["exiting"]["error"] == "SystemExit: the plugin called sys.exit(3)"


def test_raising_registration_hook_leaves_builtins_and_others_working(fake_plugins):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        get_plugin_manager()
    with pytest.warns(PluginLoadWarning, match="register hook broken on purpose"):
        tasks = registry.available("task")
    assert "tiny-seg" in tasks and "constant-test" in tasks
    rows = {row["name"]: row for row in describe_plugins()}
    assert "tdfusion_register_tasks: RuntimeError: register hook broken on purpose" in rows["raising"]["error"]
    assert rows["testplugin"]["error"] is None


def test_cli_works_and_plugins_command_names_each_error(fake_plugins):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        cli = build_cli()
        result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    by_name = {r["name"]: r for r in json.loads(result.output)}
    assert "sys.exit" in by_name["exiting"]["error"]
    assert "command hook broken on purpose" in by_name["badcommands"]["error"]
    assert CliRunner().invoke(cli, ["hello-test"]).output.strip() == "hello from testplugin"


def test_event_hook_that_exits_does_not_stop_training(fake_plugins):
    from tests.trainer_utils import small_trainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        get_plugin_manager()
    with pytest.warns(PluginLoadWarning, match="event hook exits on purpose"):
        history = small_trainer(epochs=1, meta_steps=1, fusion_steps=1).fit()
    assert len(history) == 1


def _run_cli(args, root: Path, **env):
    environ = {k: v for k, v in os.environ.items() if k != "TDFUSION_LOAD_PLUGINS"}
    environ["PYTHONPATH"] = os.pathsep.join([str(root), str(REPO), str(REPO / "tests/plugins/tdfusion-testplugin")])
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", "from tdfusion_core.commands.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=90,
    )


def test_help_and_version_survive_an_exiting_plugin_in_a_fresh_process(tmp_path):
    root = install_fake_plugins(tmp_path / "site", {"exiting": EXITING})
    result = _run_cli(["--help"], root)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "fuse" in result.stdout
    assert "'exiting'" in result.stderr and "sys.exit(3)" in result.stderr


def test_hanging_plugin_is_diagnosable_by_trace_and_avoidable_by_allow_list(tmp_path):
    root = install_fake_plugins(tmp_path / "site", {"hanging": "import time\ntime.sleep(600)\n"})
    with pytest.raises(subprocess.TimeoutExpired) as hung:
        environ = {k: v for k, v in os.environ.items() if k != "TDFUSION_LOAD_PLUGINS"}
        environ.update(PYTHONPATH=os.pathsep.join([str(root), str(REPO)]), TDFUSION_TRACE_PLUGINS="1")
        subprocess.run(
            [sys.executable, "-c", "from tdfusion_core.commands.cli import main; main()", "plugins"],
            capture_output=True,
            env=environ,
            timeout=20,
        )
    assert b"loading plugin 'hanging'" in (hung.value.stderr or b"")
    escaped = _run_cli(["plugins"], root, TDFUSION_LOAD_PLUGINS="")
    assert escaped.returncode == 0 and "hanging" not in escaped.stdout
    version = _run_cli(["--version"], root)  # never imports plugins
    assert version.returncode == 0 and "tdfusion" in version.stdout
