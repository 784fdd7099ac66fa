from typing import Any

import pytest
import torch

from tdfusion_core import hookimpl
from tdfusion_core.kernel.task import Task, TaskDefinitionError
from tdfusion_core.plugin import registry
from tdfusion_core.plugin.manager import register_plugin, unregister_plugin
from tdfusion_core.plugin.registry import RegistryError, get_task


def test_unknown_task_lists_available_names():
    with pytest.raises(RegistryError) as err:
        get_task("tiny-sge")
    message = str(err.value)
    assert "tiny-seg" in message and "Did you mean 'tiny-seg'" in message


def test_unknown_kind():
    with pytest.raises(RegistryError, match="kinds: task"):
        registry.available("nope")


class _Incomplete(Task):
    def build_network(self) -> torch.nn.Module:
        return torch.nn.Identity()


class _Plugin:
    def __init__(self, mapping: dict[str, Any]) -> None:
        self.mapping = mapping

    @hookimpl
    def tdfusion_register_tasks(self) -> dict[str, Any]:
        return self.mapping


@pytest.fixture
def plugin_slot():
    names = []

    def add(mapping: dict[str, Any]) -> None:
        name = f"test-{len(names)}"
        register_plugin(_Plugin(mapping), name=name)
        names.append(name)

    yield add
    for name in names:
        unregister_plugin(name)


def test_incomplete_task_fails_at_registration(plugin_slot):
    plugin_slot({"incomplete": _Incomplete})
    with pytest.raises(TaskDefinitionError, match="compute_loss, evaluate"):
        registry.available("task")


def test_non_task_class_is_rejected(plugin_slot):
    plugin_slot({"dict": dict})
    with pytest.raises(RegistryError, match="does not subclass"):
        registry.available("task")


def test_name_clash_names_both_plugins(plugin_slot):
    from tdfusion_core.tasks.tiny_seg import TinySegTask

    plugin_slot({"tiny-seg": TinySegTask})
    with pytest.raises(RegistryError, match="registered by both"):
        registry.available("task")


def test_get_task_builds_with_config():
    task = get_task("tiny-seg", num_classes=3, width=8)  # the fused luminance by default (one channel)
    out = task.network(torch.rand(1, 1, 16, 16))
    assert out.shape == (1, 3, 16, 16)
    assert get_task("tiny-seg", input_kind="rgb").network(torch.rand(1, 3, 16, 16)).shape == (1, 4, 16, 16)
