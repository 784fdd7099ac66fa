"""Developer sessions: ``nox -s tests`` (every test suite), ``lint``, ``typecheck``, ``demo``, ``docs``, ``slow``,
``wheels`` (every distribution built and installed as a user would, then used), ``gpu`` (the GPU benchmark suite).

Core runs on the CPU build ``torch==2.13.0`` (taken from local disk where pip is configured so). Plugins whose
frameworks need torchvision use ``torch==2.14.1 torchvision==0.29.1``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

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
    # mmseg + mmdet on mmcv-lite with the fallback ops (the [lite] route); the shared packages go first
    "openmmlab": (
        PLUGIN_TORCH,
        (
            "plugins/tdfusion-mmcv-compat[lite]",
            "plugins/tdfusion-openmmlab",
            "plugins/tdfusion-mmseg",
            "plugins/tdfusion-mmdet",
        ),
        (
            "plugins/tdfusion-mmcv-compat/tests",
            "plugins/tdfusion-openmmlab/tests",
            "plugins/tdfusion-mmseg/tests",
            "plugins/tdfusion-mmdet/tests",
        ),
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


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """Every GPU performance figure next to its target (``tdfusion bench suite --device cuda``), < 8 min on one GPU.

    Runs in the current environment (a CUDA build of torch and the plugins to measure must be installed there);
    writes ``bench-suite/suite.json`` and ``bench-suite/suite.md``. Extra arguments go to the command.
    """
    session.run("tdfusion", "bench", "suite", "--device", "cuda", *session.posargs, external=True)


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


#: every distribution of the repository (core first), as ``nox -s wheels`` builds them
DISTRIBUTIONS = (
    ".",
    "plugins/tdfusion-mmcv-compat",
    "plugins/tdfusion-openmmlab",
    "plugins/tdfusion-yolo",
    "plugins/tdfusion-mmseg",
    "plugins/tdfusion-mmdet",
)
#: the user's install line for each wheel (the OpenMMLab plugins with the mmcv-lite route, as README says)
WHEEL_EXTRAS = {"tdfusion_mmseg": "[lite]", "tdfusion_mmdet": "[lite]"}
#: a training run small enough for a minute on one CPU core: tiny-seg on 4 synthetic 48x64 scenes, smallest F and G
TINY_TRAIN = (
    "--task", "tiny-seg", "--data", "synthetic", "--epochs", "1", "--meta-steps", "1", "--fusion-steps", "1",
    "--device", "cpu", "--set", "data_options={n: 4, size: [48, 64]}", "--set", "crop_size=32",
    "--set", "task_size=[48, 64]", "--set", "batch_size=1", "--set", "progress=false", "--set", "log_images=false",
    "--set", "fusion_options={dim: 4, num_blocks: 1, heads: 1}",
    "--set", "loss_generator_options={dim: 4, num_blocks: 1, heads: 1}", "--set", "task_options={width: 4}",
)  # fmt: skip


@nox.session(python=PYTHON)
def wheels(session: nox.Session) -> None:
    """Build every distribution as a wheel, install the wheels (not editable) as a user would, then use them.

    Runs outside the repository so nothing is imported from the source tree: ``tdfusion plugins --check`` (every
    plugin loads and reports ready), creating each plugin task, and a tiny ``tdfusion train`` with its outputs.
    """
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install(*PLUGIN_TORCH)  # first, so pip does not swap torch for another build
    session.run("pip", "wheel", "--no-deps", "--wheel-dir", str(dist), *DISTRIBUTIONS)
    built = sorted(dist.glob("*.whl"))
    names = {path.name.split("-")[0] for path in built}
    expected = {Path(d).resolve().name.replace("-", "_") for d in DISTRIBUTIONS[1:]} | {"tdfusion_core"}
    if names != expected:
        session.error(f"built wheels {sorted(names)}, expected {sorted(expected)}")
    session.install(*(f"{path}{WHEEL_EXTRAS.get(path.name.split('-')[0], '')}" for path in built))
    run = tmp / "run"
    shutil.rmtree(run, ignore_errors=True)
    session.chdir(tmp)
    session.run("tdfusion", "plugins", "--check")
    session.run(
        "python",
        "-c",
        "from tdfusion_core.plugin.registry import get_task\n"
        "for name in ('tiny-seg', 'yolo', 'mmseg', 'segformer', 'mmdet'):\n"
        "    print(name, type(get_task(name, num_classes=2)).__name__)",
    )
    session.run("tdfusion", "train", "--out", str(run), *TINY_TRAIN)
    for output in ("model.pt", "config.yaml", "checkpoints/last.pt"):
        if not (run / output).is_file():
            session.error(f"tdfusion train wrote no {output} in {run}")
