"""The task-plugin template behind ``tdfusion new-plugin NAME``: a ready-to-install distribution ``tdfusion-NAME``.

What is written (``NAME`` normalised to lower case with hyphens; ``PKG = tdfusion_NAME`` with underscores)::

    tdfusion-NAME/
      pyproject.toml        distribution tdfusion-NAME, entry point NAME = "PKG.plugin" in the group "tdfusion"
      README.md             install, check, train, what to change
      .gitignore
      PKG/__init__.py
      PKG/plugin.py         @hookimpl tdfusion_register_tasks -> {TASK: TaskClass}
      PKG/task.py           a small working segmentation Task (network, cross-entropy loss, mIoU evaluation)
      tests/test_plugin.py  entry-point registration, the Task contract, one short TDFusion epoch

The template files are package data under ``tdfusion_core/apps/templates/plugin`` (``*.tmpl``, ``{{ key }}``
placeholders), so they are neither imported nor linted as part of core.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from tdfusion_core import __version__

#: template file (relative to templates/plugin) -> output path pattern (relative to the distribution folder)
TEMPLATE_FILES: dict[str, str] = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "gitignore.tmpl": ".gitignore",
    "package/__init__.py.tmpl": "{package}/__init__.py",
    "package/plugin.py.tmpl": "{package}/plugin.py",
    "package/task.py.tmpl": "{package}/task.py",
    "tests/test_plugin.py.tmpl": "tests/test_plugin.py",
}

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


class TemplateError(ValueError):
    """An invalid plugin name or an output folder that already exists."""


def normalise_name(name: str) -> str:
    """``"My_Task"`` -> ``"my-task"``; raises :class:`TemplateError` if the result is not a valid plugin name.

    A valid name starts with a letter and holds lower-case letters, digits and single hyphens; a leading
    ``tdfusion-`` is dropped (``tdfusion-foo`` and ``foo`` give the same distribution ``tdfusion-foo``).
    """
    norm = re.sub(r"[\s_]+", "-", name.strip().lower())
    if norm.startswith("tdfusion-"):
        norm = norm[len("tdfusion-") :]
    if not _NAME.match(norm):
        raise TemplateError(
            f"invalid plugin name {name!r}: use lower-case letters, digits and hyphens, starting with a letter "
            "(e.g. 'crowd-count')"
        )
    return norm


def template_context(name: str, task_name: str | None = None) -> dict[str, str]:
    """The values substituted into the templates for plugin ``name`` (and task ``task_name``, default ``name``)."""
    norm = normalise_name(name)
    task = (task_name or norm).strip()
    if not re.match(r"^[A-Za-z][A-Za-z0-9_.-]*$", task):
        raise TemplateError(
            f"invalid task name {task_name!r}: letters, digits, '-', '_' and '.', starting with a letter"
        )
    class_name = "".join(part.capitalize() for part in re.split(r"[-_.]", task) if part) + "Task"
    return {
        "plugin_name": norm,
        "dist_name": f"tdfusion-{norm}",
        "package": "tdfusion_" + norm.replace("-", "_"),
        "task_name": task,
        "class_name": class_name,
        "core_version": __version__,
    }


def render(text: str, context: Mapping[str, str]) -> str:
    """Replace every ``{{ key }}`` of ``text`` by ``context[key]``; an unknown key raises ``KeyError``."""

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in context:
            raise KeyError(f"template placeholder {{{{ {key} }}}} has no value; known: {', '.join(sorted(context))}")
        return context[key]

    return _PLACEHOLDER.sub(substitute, text)


def render_plugin(name: str, task_name: str | None = None) -> dict[str, str]:
    """``{relative path: file content}`` of the plugin distribution, without writing anything."""
    context = template_context(name, task_name)
    root = resources.files("tdfusion_core.apps").joinpath("templates", "plugin")
    files: dict[str, str] = {}
    for template, target in TEMPLATE_FILES.items():
        text = root.joinpath(*template.split("/")).read_text(encoding="utf-8")
        files[target.format(package=context["package"])] = render(text, context)
    return files


def write_plugin(name: str, out_dir: str | Path = ".", task_name: str | None = None, overwrite: bool = False) -> Path:
    """Write the distribution ``tdfusion-NAME/`` under ``out_dir`` and return its path.

    Refuses (:class:`TemplateError`) to write into an existing non-empty folder unless ``overwrite``, which replaces
    only the template's own files.
    """
    context = template_context(name, task_name)
    dest = Path(out_dir) / context["dist_name"]
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise TemplateError(f"{dest} already exists and is not empty (pass --force to overwrite the template's files)")
    for rel, content in render_plugin(name, task_name).items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return dest
