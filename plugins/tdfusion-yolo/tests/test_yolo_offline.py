"""Offline proof: no socket is ever opened (nor a name resolved) by importing, building, loss, checkpoint loading or
evaluation, and ultralytics writes no settings file in the user's home."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tdfusion_yolo.task import YoloTask


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every way out raise, and record the attempts (ultralytics may swallow the exception)."""
    attempts: list[str] = []

    def refuse(kind):
        def _raise(*args, **kwargs):
            attempts.append(f"{kind}{args[1:] if kind == 'socket.connect' else args}")
            raise OSError(f"network access attempted in an offline test: {kind}")

        return _raise

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    return attempts


def test_build_loss_checkpoint_and_evaluation_open_no_connection(no_network, tmp_path):
    import ultralytics.utils

    assert os.environ["YOLO_OFFLINE"] == "1" and ultralytics.utils.ONLINE is False
    task = YoloTask(input_kind="rgb", num_classes=2, model="yolov8n.yaml")
    net = task.network
    images = torch.rand(2, 3, 64, 96, requires_grad=True)
    boxes = [torch.tensor([[0.0, 4, 4, 40, 50]]), torch.tensor([[1.0, 30, 10, 90, 60]])]
    task.compute_loss(net, images, boxes).backward()
    metrics = task.evaluate(net, [(images.detach(), boxes)])
    path = tmp_path / "ul.pt"
    torch.save({"model": net}, path)
    YoloTask(input_kind="rgb", num_classes=2, checkpoint=path).network  # noqa: B018 - ultralytics' checkpoint loader
    assert set(metrics) >= {"mAP50", "mAP75", "mAP50:95"}
    assert no_network == []


SCRIPT = textwrap.dedent(
    """
    import json, os, socket, sys
    attempts = []
    def refuse(kind):
        def _raise(*args, **kwargs):
            attempts.append(kind)
            raise OSError("offline test: " + kind)
        return _raise
    socket.socket.connect = refuse("connect")
    socket.socket.connect_ex = refuse("connect_ex")
    socket.create_connection = refuse("create_connection")
    socket.getaddrinfo = refuse("getaddrinfo")

    import torch
    from tdfusion_core.plugin.registry import get_task      # the plugin is found through its entry point
    task = get_task("yolo", num_classes=1, input_kind="rgb")
    net = task.network
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    boxes = [torch.tensor([[0.0, 8, 8, 40, 50]])]
    task.compute_loss(net, x, boxes).backward()
    task.evaluate(net, [(x.detach(), boxes)])

    import tdfusion_yolo, ultralytics.utils as u, ultralytics.utils.events as ev
    print(json.dumps({
        "attempts": attempts,
        "online": u.ONLINE,
        "events_enabled": ev.events.enabled if hasattr(ev, "events") else ev.Events().enabled,
        "settings_file": str(u.SETTINGS_FILE),
        "private_dir": tdfusion_yolo.PRIVATE_CONFIG_DIR,
    }))
    """
)


def test_fresh_process_writes_nothing_in_home_and_cleans_its_private_config(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "XDG_"))}
    env.update(HOME=str(home), TMPDIR=str(tmp_path), TDFUSION_LOAD_PLUGINS="yolo", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["online"] is False and report["events_enabled"] is False
    private = Path(report["private_dir"])
    assert private.parent == tmp_path and Path(report["settings_file"]).is_relative_to(private)
    assert not private.exists()  # removed at exit
    assert list(home.rglob("*")) == []  # no ~/.config/Ultralytics, nothing at all
