"""``tdfusion plugins`` reports whether each plugin can work here (``tdfusion_plugin_ready``), and a plugin's
missing dependency (:class:`PluginNotReadyError`) reaches the user as one line with the fix, without a traceback."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from tdfusion_core import hookimpl
from tdfusion_core.plugin.hookspecs import PluginNotReadyError

FIX = 'pip install "tdfusion-frob[lite]"'


class NotReady:
    @hookimpl(optionalhook=True)
    def tdfusion_plugin_ready(self) -> str | None:
        return f"frobnicator is not installed: {FIX}"


class Ready:
    @hookimpl(optionalhook=True)
    def tdfusion_plugin_ready(self) -> str | None:
        return None


class BrokenCheck:
    @hookimpl(optionalhook=True)
    def tdfusion_plugin_ready(self) -> str | None:
        raise RuntimeError("boom")


class NeedsFrob:
    @hookimpl
    def tdfusion_register_commands(self, cli: Any) -> None:
        @cli.command(name="frob-test")
        def frob() -> None:
            raise PluginNotReadyError(f"frobnicator is not installed: {FIX}")


@pytest.fixture
def registered(fresh_plugins: pytest.MonkeyPatch) -> Any:
    from tdfusion_core.plugin.manager import register_plugin

    fresh_plugins.setenv("TDFUSION_LOAD_PLUGINS", "")
    for name, plugin in (("not-ready", NotReady()), ("ready", Ready()), ("broken-check", BrokenCheck())):
        register_plugin(plugin, name=name)
    return fresh_plugins


def test_report_marks_each_plugin_ready_or_not_with_the_fix(registered: Any) -> None:
    from tdfusion_core.commands.plugins_cmd import plugin_report

    rows = {row["name"]: row for row in plugin_report()}
    assert rows["not-ready"]["ready"] is False and rows["not-ready"]["problem"].endswith(FIX)
    assert rows["ready"]["ready"] is True and rows["ready"]["problem"] is None
    assert rows["broken-check"]["ready"] is False and "RuntimeError: boom" in rows["broken-check"]["problem"]
    assert rows["tdfusion_core.plugin.builtin_tasks"]["ready"] is True  # plugins without the hook are ready


def test_plugins_command_json_and_check(registered: Any) -> None:
    from tdfusion_core.commands.cli import build_cli

    cli = build_cli()
    listed = CliRunner().invoke(cli, ["plugins"])
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["not-ready"]["ready"] is False and FIX in rows["not-ready"]["problem"]
    checked = CliRunner().invoke(cli, ["plugins", "--check"])
    assert checked.exit_code == 1
    lines = checked.output.strip().splitlines()
    assert f"not-ready: NOT READY: frobnicator is not installed: {FIX}" in lines
    assert "ready: ready" in lines


def test_check_passes_when_every_plugin_is_ready(fresh_plugins: pytest.MonkeyPatch) -> None:
    from tdfusion_core.commands.cli import build_cli

    fresh_plugins.setenv("TDFUSION_LOAD_PLUGINS", "")
    checked = CliRunner().invoke(build_cli(), ["plugins", "--check"])
    assert checked.exit_code == 0, checked.output
    assert all(line.endswith(": ready") for line in checked.output.strip().splitlines())


def test_plugin_not_ready_error_is_one_line_without_traceback(
    fresh_plugins: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tdfusion_core.commands.cli import main
    from tdfusion_core.plugin.manager import register_plugin

    fresh_plugins.setenv("TDFUSION_LOAD_PLUGINS", "")
    register_plugin(NeedsFrob(), name="needs-frob")
    with pytest.raises(SystemExit) as info:
        main(["frob-test"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == f"Error: frobnicator is not installed: {FIX} (--debug shows the traceback)\n"
