"""Readiness: a missing or incompatible mmcv / framework is reported with the one-command fix, before any work."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

import pytest


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def test_ready_in_this_environment() -> None:
    from tdfusion_openmmlab.readiness import problem

    assert problem("mmseg") is None and problem("mmdet") is None


@pytest.mark.parametrize("package", ["mmseg", "mmdet"])
def test_missing_mmcv_names_the_lite_extra(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    from tdfusion_openmmlab.readiness import OpenMMLabNotReadyError, ensure_ready, problem

    _without(monkeypatch, "mmcv")
    text = problem(package)
    assert text is not None and "mmcv is not installed" in text and f'pip install "tdfusion-{package}[lite]"' in text
    assert "\n" not in text
    with pytest.raises(OpenMMLabNotReadyError, match="mmcv is not installed") as info:
        ensure_ready(package)
    from tdfusion_core.plugin.hookspecs import PluginNotReadyError

    assert isinstance(info.value, PluginNotReadyError) and isinstance(info.value, ImportError)


def test_missing_framework_and_too_new_mmcv(monkeypatch: pytest.MonkeyPatch) -> None:
    from tdfusion_openmmlab import readiness

    _without(monkeypatch, "ftfy")
    assert readiness.problem("mmseg") == 'ftfy not installed (needed by mmseg): pip install "tdfusion-mmseg[lite]"'
    assert readiness.problem("mmdet") is None  # mmdet does not import ftfy
    monkeypatch.setattr(readiness, "mmcv_version", lambda: "2.2.0")
    text = readiness.problem("mmdet")
    assert text is not None and "mmcv 2.2.0 is too new" in text and "mmcv-lite==2.1.0" in text
    monkeypatch.setattr(readiness, "mmcv_version", lambda: "2.0.0rc4")
    assert readiness.problem("mmdet") is None


def test_tasks_refuse_to_be_created_without_mmcv(monkeypatch: pytest.MonkeyPatch) -> None:
    from tdfusion_mmdet.task import MMDetTask
    from tdfusion_mmseg.task import SegFormerTask
    from tdfusion_openmmlab.readiness import OpenMMLabNotReadyError

    _without(monkeypatch, "mmcv")
    for cls in (SegFormerTask, MMDetTask):
        with pytest.raises(OpenMMLabNotReadyError, match=r"pip install \"tdfusion-mm(seg|det)\[lite\]\""):
            cls(num_classes=2)


def test_tdfusion_plugins_reports_the_missing_mmcv(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from tdfusion_core.commands.plugins_cmd import plugin_report, plugins_command
    from tdfusion_core.plugin.manager import reset_plugin_manager

    monkeypatch.setenv("TDFUSION_LOAD_PLUGINS", "mmseg,mmdet")
    reset_plugin_manager()
    try:
        rows: dict[str, Any] = {row["name"]: row for row in plugin_report()}
        assert rows["mmseg"]["ready"] and rows["mmseg"]["problem"] is None
        _without(monkeypatch, "mmcv")
        rows = {row["name"]: row for row in plugin_report()}
        for name in ("mmseg", "mmdet"):
            assert rows[name]["ready"] is False and f'pip install "tdfusion-{name}[lite]"' in rows[name]["problem"]
        assert rows["tdfusion_core.plugin.builtin_tasks"]["ready"]
        result = CliRunner().invoke(plugins_command, ["--check"])
        assert result.exit_code == 1
        assert (
            'mmseg 0.1.0: NOT READY: mmcv is not installed (needed by mmseg): pip install "tdfusion-mmseg[lite]"'
            in (result.output)
        )
    finally:
        monkeypatch.undo()
        reset_plugin_manager()


def test_cli_prints_a_missing_dependency_as_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Any
) -> None:
    from tdfusion_core.commands.cli import main
    from tdfusion_core.plugin.manager import reset_plugin_manager

    monkeypatch.setenv("TDFUSION_LOAD_PLUGINS", "mmseg")
    reset_plugin_manager()
    _without(monkeypatch, "mmcv")
    try:
        with pytest.raises(SystemExit) as info:
            main(
                ["train", "--task", "segformer", "--data", "synthetic", "--out", str(tmp_path / "run"), "--epochs", "1"]
            )
    finally:
        monkeypatch.undo()
        reset_plugin_manager()
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1
    assert err[-1].startswith("Error: mmcv is not installed (needed by mmseg)") and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training
