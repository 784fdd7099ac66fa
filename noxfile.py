"""Developer sessions: ``nox -s tests`` (every test suite), ``lint``, ``typecheck``, ``demo``, ``docs``, ``slow``.

Core runs on the CPU build ``torch==2.13.0`` (taken from local disk where pip is configured so). Plugins whose
frameworks need torchvision use ``torch==2.14.1 torchvision==0.29.1``.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.sessions = ["lint", "typecheck", "tests"]

PYTHON = "3.11"
CORE_TORCH = "torch==2.13.0"
TEST_PLUGIN = "tests/plugins/tdfusion-testplugin"


def install_core(session: nox.Session, *extras: str) -> None:
    """Install torch first (so pip does not pick a CUDA build), then tdfusion-core in editable mode."""
    session.install(CORE_TORCH)
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


PLUGIN_TORCH = ("torch==2.14.1", "torchvision==0.29.1")

#: test suite -> (torch requirements, editable installs after core, test paths). Each plugin adds its own suite.
SUITES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "core": ((CORE_TORCH,), (TEST_PLUGIN,), ("tests",)),
    "yolo": (PLUGIN_TORCH, ("plugins/tdfusion-yolo",), ("plugins/tdfusion-yolo/tests",)),
    # mmseg + mmdet on mmcv-lite with the fallback ops (the [lite] route); the shared compat package goes first
    "openmmlab": (
        PLUGIN_TORCH,
        ("plugins/tdfusion-mmcv-compat[lite]", "plugins/tdfusion-mmseg", "plugins/tdfusion-mmdet"),
        ("plugins/tdfusion-mmcv-compat/tests", "plugins/tdfusion-mmseg/tests", "plugins/tdfusion-mmdet/tests"),
    ),
}


@nox.session(python=PYTHON, name="tests")
@nox.parametrize("suite", list(SUITES))
def tests(session: nox.Session, suite: str) -> None:
    """Run a test suite (``nox -s tests`` runs them all); slow end-to-end tests are in ``nox -s slow``."""
    torch_reqs, editables, paths = SUITES[suite]
    session.install(*torch_reqs)
    session.install("-e", ".[test]")
    for path in editables:
        session.install("-e", path)
    session.run("pytest", *paths, "-m", "not slow", *session.posargs)


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """Long end-to-end tests (marked ``slow``)."""
    install_core(session, "test")
    session.install("-e", TEST_PLUGIN)
    session.run("pytest", "tests", "-m", "slow", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on tdfusion_core."""
    install_core(session)
    session.install("mypy>=1.10", "types-PyYAML", "types-tqdm")
    session.run("mypy", "tdfusion_core")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The built-in end-to-end demo on synthetic scenes (CPU, no downloads)."""
    install_core(session, "report")
    session.run("tdfusion", "demo", *(session.posargs or ["--overwrite"]))  # rerunnable: replaces runs/demo


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs, warnings as errors (broken links and anchors too), into site/.

    The docs' examples are executed by ``tests/test_docs.py`` (part of ``nox -s tests``), which also builds the site.
    """
    install_core(session, "report", "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"})
