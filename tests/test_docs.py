"""The documentation is executable: its Python examples run, its commands exist with the options it uses, the cheap
commands run, every hook is documented, and ``mkdocs build --strict`` passes.

A Python block is skipped only when the line before it is ``<!-- no-test: REASON -->`` (a GPU or data that tests
cannot have); the reason must say which. A block that only includes a file (``--8<-- "path"``) is checked by
compiling that file (examples/run_custom_task.py itself runs in tests/test_example.py).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
from click.testing import CliRunner

from tdfusion_core.commands.cli import build_cli
from tdfusion_core.plugin import hookspecs
from tdfusion_core.plugin.manager import reset_plugin_manager
from tests.conftest import REPO
from tests.torch_threads import one_torch_thread  # noqa: F401

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<lang>[\w+-]*)[^\n]*$")
NO_TEST = re.compile(r"<!--\s*no-test:\s*(?P<reason>.*?)\s*-->")
SNIPPET = re.compile(r'^--8<--\s+"(?P<path>[^"]+)"\s*$')

#: ``tdfusion`` invocations cheap enough to run from the docs (the rest are checked against the CLI, not run)
CHEAP = (("--help",), ("plugins",), ("data", "synth"), ("data", "check"))


@attrs.define
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """Fenced code blocks of a Markdown page (indented ones too, e.g. inside admonitions), in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group("indent"), m.group("fence"), m.group("lang")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        reason = NO_TEST.search(previous)
        blocks.append(Block(page, i + 1, lang, "\n".join(body) + "\n", reason.group("reason") if reason else None))
        i = j + 1
    return blocks


def shell_commands(block: Block) -> list[str]:
    """Command lines of a bash block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block.code)
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


ALL_BLOCKS = [b for page in PAGES for b in code_blocks(page)]
PYTHON_PAGES = sorted({b.page for b in ALL_BLOCKS if b.lang == "python"})


def test_docs_have_the_pages_the_site_promises():
    names = {p.name for p in PAGES}
    assert {
        "index.md",
        "getting-started.md",
        "concepts.md",
        "training.md",
        "plugins.md",
        "datasets.md",
        "metrics.md",
        "benchmarks.md",
        "reproducing.md",
        "cli.md",
        "api.md",
        "architecture.md",
    } <= names
    assert len([b for b in ALL_BLOCKS if b.lang == "python" and b.skip_reason is None]) >= 10


def test_skipped_blocks_say_why():
    for block in ALL_BLOCKS:
        if block.skip_reason is not None:
            assert block.lang == "python", f"{block.where}: only Python blocks may be marked no-test"
            assert re.search(r"GPU|CUDA|data|dataset|plugin", block.skip_reason), (
                f"{block.where}: a skipped example must say what it needs (a GPU, data, a plugin): {block.skip_reason!r}"
            )


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: p.name)
def test_python_examples_run(page, tmp_path, monkeypatch, fresh_plugins):
    """Each page's Python blocks run in order in one namespace, in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    ran = 0
    for block in (b for b in ALL_BLOCKS if b.page == page and b.lang == "python"):
        if block.skip_reason is not None:
            compile(block.code, block.where, "exec")  # still valid Python
            continue
        lines = [line for line in block.code.splitlines() if line.strip()]
        included = [SNIPPET.match(line.strip()) for line in lines]
        if lines and all(included):
            for m in included:
                assert m is not None
                path = REPO / m.group("path")
                assert path.is_file(), f"{block.where}: included file {path} is missing"
                compile(path.read_text(encoding="utf-8"), str(path), "exec")
            continue
        padded = "\n" * block.line + block.code  # tracebacks then give the line in the Markdown file
        try:
            exec(compile(padded, str(block.page.relative_to(REPO)), "exec"), namespace)
        except Exception:
            pytest.fail(f"the example at {block.where} failed:\n{traceback.format_exc(limit=-3)}")
        ran += 1
    assert ran or any(b.page == page and b.lang == "python" for b in ALL_BLOCKS)


def _resolve(cli: click.Group, args: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The (sub)command ``args`` invoke, the path to it, and the remaining arguments."""
    command: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            raise AssertionError(f"`tdfusion {' '.join([*path, rest[0]])}` is not a command")
        command, path, rest = sub, [*path, rest.pop(0)], rest
    return command, path, rest


def _tdfusion_invocations() -> list[tuple[Block, dict[str, str], list[str]]]:
    found = []
    for block in ALL_BLOCKS:
        if block.lang not in ("bash", "sh", "console"):
            continue
        for line in shell_commands(block):
            words = shlex.split(line)
            env = {}
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            if words and words[0] == "tdfusion":
                found.append((block, env, words[1:]))
    return found


INVOCATIONS = _tdfusion_invocations()


def test_documented_commands_and_options_exist():
    cli = build_cli()
    assert len(INVOCATIONS) >= 20
    for block, _, args in INVOCATIONS:
        command, path, rest = _resolve(cli, args)
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
        for word in rest:
            if word.startswith("-") and not re.match(r"^-?\d", word):
                option = word.split("=", 1)[0]
                assert option in known, f"{block.where}: `tdfusion {' '.join(path)}` has no option {option}"


def test_cheap_documented_commands_run(tmp_path, monkeypatch, fresh_plugins):
    monkeypatch.chdir(tmp_path)
    ran = []
    cheap = [inv for inv in INVOCATIONS if any(tuple(inv[2][: len(p)]) == p for p in CHEAP)]
    cheap.sort(key=lambda inv: inv[2][:2] != ["data", "synth"])  # the data the checks read is written first
    for block, env, args in cheap:
        with monkeypatch.context() as patch:  # restores the conftest's allow-list afterwards
            for key, value in env.items():
                patch.setenv(key, value)
            reset_plugin_manager()
            result = CliRunner().invoke(build_cli(), args)
        reset_plugin_manager()
        assert result.exit_code == 0, f"{block.where}: `tdfusion {' '.join(args)}` failed:\n{result.output}"
        ran.append(" ".join(args))
    assert "--help" in ran and "plugins" in ran
    assert any(r.startswith("data synth") for r in ran) and any(r.startswith("data check") for r in ran)


def test_example_script_flags_in_the_docs_exist():
    script = REPO / "examples" / "run_custom_task.py"
    lines = [
        line
        for block in ALL_BLOCKS
        if block.lang == "bash"
        for line in shell_commands(block)
        if line.startswith("python examples/run_custom_task.py")
    ]
    assert lines, "the docs should show how to run the example"
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    for line in lines:
        for flag in re.findall(r"(--[a-z][a-z-]*)", line):
            assert flag in help_text, f"examples/run_custom_task.py has no flag {flag}"


def test_every_hook_and_the_task_contract_are_documented():
    text = (DOCS / "plugins.md").read_text(encoding="utf-8")
    hooks = [name for name in dir(hookspecs) if name.startswith("tdfusion_")]
    assert len(hooks) >= 12
    missing = [h for h in hooks if f"`{h}(" not in text]
    assert not missing, f"hooks not documented in docs/plugins.md: {missing}"
    for name in (
        "build_network",
        "compute_loss",
        "evaluate",
        "input_kind",
        "target_kind",
        "default_input_size",
        "make_optimizer",
        "load_checkpoint",
        "collate_targets",
        "resize_targets",
        "targets_to",
    ):
        assert f"`{name}" in text, f"Task.{name} is not documented in docs/plugins.md"


def test_mkdocs_build_is_strict_and_passes(tmp_path):
    """The site builds with warnings as errors (broken links and anchors included), as ``nox -s docs`` does."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    cli_page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("tdfusion train", "tdfusion fuse", "tdfusion new-plugin", "tdfusion data synth"):
        assert command in cli_page, f"{command} missing from the generated CLI reference"
    api_page = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert (
        'id="tdfusion_core.kernel.task.Task"' in api_page
        and 'id="tdfusion_core.training.trainer.MetaTrainer"' in api_page
    )
    concepts = (site / "concepts" / "index.html").read_text(encoding="utf-8")
    assert 'class="mermaid"' in concepts
    # offline: formulas are MathML already, mermaid is the vendored copy, and no page loads anything from a network
    assert concepts.count("<math") >= 10 and 'class="arithmatex">\\' not in concepts
    assert (site / "javascripts" / "vendor" / "mermaid.tiny.js").is_file()
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not remote, f"{page.relative_to(site)} loads {remote} from the network"
    config_page = (site / "config" / "index.html").read_text(encoding="utf-8")
    assert "lr_fusion" in config_page and "val_split" in config_page
