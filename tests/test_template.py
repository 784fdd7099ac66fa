"""``tdfusion new-plugin``: names, rendering, and a generated plugin that installs, is discovered and passes its tests.

The install goes into a throw-away ``--target`` folder put on ``PYTHONPATH`` of subprocesses (entry points are
read from the ``.dist-info`` there), so the test environment itself is never modified.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from tdfusion_core.apps.new_plugin import TemplateError, normalise_name, render, render_plugin, template_context
from tdfusion_core.commands.cli import build_cli

EXPECTED_FILES = {
    "pyproject.toml",
    "README.md",
    ".gitignore",
    "tdfusion_crowd_count/__init__.py",
    "tdfusion_crowd_count/plugin.py",
    "tdfusion_crowd_count/task.py",
    "tests/test_plugin.py",
}


@pytest.mark.parametrize(
    ("given", "expected"),
    [("crowd-count", "crowd-count"), ("Crowd_Count", "crowd-count"), ("tdfusion-thermal", "thermal"), ("a1", "a1")],
)
def test_names_are_normalised(given, expected):
    assert normalise_name(given) == expected


@pytest.mark.parametrize("bad", ["", "1abc", "with space!", "a--b", "-a", "ü"])
def test_invalid_names_are_refused(bad):
    with pytest.raises(TemplateError, match="invalid plugin name"):
        normalise_name(bad)


def test_context_names_everything_consistently():
    ctx = template_context("crowd-count", task_name="crowd.count-v2")
    assert ctx["dist_name"] == "tdfusion-crowd-count"
    assert ctx["package"] == "tdfusion_crowd_count"
    assert ctx["task_name"] == "crowd.count-v2"
    assert ctx["class_name"] == "CrowdCountV2Task"


def test_render_substitutes_and_rejects_unknown_placeholders():
    assert render("a {{ x }} b {{y}}", {"x": "1", "y": "2"}) == "a 1 b 2"
    with pytest.raises(KeyError, match="nope"):
        render("{{ nope }}", {"x": "1"})


def test_rendered_files_are_complete_and_valid():
    files = render_plugin("crowd-count")
    assert set(files) == EXPECTED_FILES
    assert not any("{{" in text for text in files.values()), "a placeholder was left unrendered"
    for path, text in files.items():
        if path.endswith(".py"):
            ast.parse(text, filename=path)
    meta = tomllib.loads(files["pyproject.toml"])
    assert meta["project"]["name"] == "tdfusion-crowd-count"
    assert meta["project"]["entry-points"]["tdfusion"] == {"crowd-count": "tdfusion_crowd_count.plugin"}
    assert any(dep.startswith("tdfusion-core") for dep in meta["project"]["dependencies"])
    assert '{"crowd-count": CrowdCountTask}' in files["tdfusion_crowd_count/plugin.py"]


def test_cli_writes_the_distribution_and_refuses_to_overwrite(tmp_path):
    cli = build_cli()
    result = CliRunner().invoke(cli, ["new-plugin", "crowd-count", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    dest = tmp_path / "tdfusion-crowd-count"
    written = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert written == EXPECTED_FILES
    again = CliRunner().invoke(cli, ["new-plugin", "crowd-count", "--out", str(tmp_path)])
    assert again.exit_code != 0 and "already exists" in again.output
    (dest / "README.md").write_text("changed")
    forced = CliRunner().invoke(cli, ["new-plugin", "crowd-count", "--out", str(tmp_path), "--force"])
    assert forced.exit_code == 0 and (dest / "README.md").read_text() != "changed"
    bad = CliRunner().invoke(cli, ["new-plugin", "9lives", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "invalid plugin name" in bad.output


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def test_generated_plugin_installs_is_listed_and_passes_its_own_tests(tmp_path):
    cli = build_cli()
    result = CliRunner().invoke(
        cli, ["new-plugin", "crowd-count", "--task-name", "crowd-seg", "--out", str(tmp_path / "src")]
    )
    assert result.exit_code == 0, result.output
    dist = tmp_path / "src" / "tdfusion-crowd-count"
    site = tmp_path / "site"
    install = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(dist),
        ],
        dict(os.environ),
        tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (site / "tdfusion_crowd_count" / "task.py").is_file()

    env = dict(os.environ)
    env.pop("TDFUSION_LOAD_PLUGINS", None)  # the conftest's allow-list predates the new plugin: load every plugin
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"

    listed = _run(
        [sys.executable, "-c", "from tdfusion_core.commands.cli import main; main(['plugins'])"], env, tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert "crowd-count" in rows, sorted(rows)
    assert rows["crowd-count"]["error"] is None
    assert rows["crowd-count"]["version"] == "0.1.0"
    assert rows["crowd-count"]["registers"] == {"task": ["crowd-seg"]}

    built = _run(
        [
            sys.executable,
            "-c",
            "from tdfusion_core import registry; t = registry.get_task('crowd-seg', num_classes=3); "
            "print(type(t).__module__, type(t).__name__, sum(p.numel() for p in t.network.parameters()))",
        ],
        env,
        tmp_path,
    )
    assert built.returncode == 0, built.stderr
    module, cls, n_params = built.stdout.split()
    assert (module, cls) == ("tdfusion_crowd_count.task", "CrowdSegTask") and int(n_params) > 0

    # the generated plugin's own test suite, run against the installed copy (not the source folder)
    tests = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(dist / "tests")], env, tmp_path)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "5 passed" in tests.stdout
