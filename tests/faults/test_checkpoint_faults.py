"""Issue 17 item 3: durable, diagnosable checkpoints (full disk, kill -9, bad files, fallback, lock, resume)."""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tdfusion_core.common import atomic
from tdfusion_core.common.atomic import OutputWriteError, atomic_save, previous_path, remove_stale_temps
from tdfusion_core.training.run_files import ResumeError, RunLock, RunLockedError, load_training_state
from tests.trainer_utils import small_trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def trained(tmp_path):
    """A run directory after two epochs: last.pt (epoch 2) and last.prev.pt (epoch 1)."""
    small_trainer(tmp_path, epochs=2, meta_steps=0, fusion_steps=1, log_images=False).fit()
    return tmp_path


def _epoch(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["epoch"])


def test_previous_checkpoint_is_kept(trained):
    ckpt = trained / "checkpoints"
    assert _epoch(ckpt / "last.pt") == 2 and _epoch(ckpt / "last.prev.pt") == 1
    assert not list(ckpt.glob(".*"))  # no temporary file left


def test_checkpoint_file_is_readable_by_others(trained):
    mode = stat.S_IMODE((trained / "checkpoints" / "last.pt").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o644 & ~umask


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or corrupted"),
        (lambda p: p.write_bytes(os.urandom(4096)), "not a readable PyTorch training checkpoint"),
        (lambda p: p.write_text("epochs: 3\n"), "not a readable PyTorch training checkpoint"),
    ],
    ids=["zero-byte", "truncated", "random", "foreign"],
)
def test_unreadable_last_falls_back_to_previous_with_a_warning(trained, damage, reason):
    last = trained / "checkpoints" / "last.pt"
    damage(last)
    with pytest.warns(RuntimeWarning, match=re.escape(reason) + ".*resuming from the previous checkpoint"):
        trainer = small_trainer(trained, resume=True, epochs=3, meta_steps=0, fusion_steps=1, log_images=False)
    assert trainer.epoch == 1
    damage(previous_path(last))
    with pytest.raises(ResumeError, match=r"no readable checkpoint.*last\.pt.*last\.prev\.pt"):
        load_training_state(last)


def test_full_disk_keeps_previous_checkpoint_and_says_so(trained, monkeypatch):
    last = trained / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def full(_fh, _data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_write_all", full)
    trainer = small_trainer(trained, resume=True, epochs=3, meta_steps=0, fusion_steps=1, log_images=False)
    with pytest.raises(OutputWriteError, match=r"no space left on .*checkpoints: last\.pt not written; the previous"):
        trainer.save_checkpoint()
    assert last.read_bytes() == before
    assert not list(last.parent.glob(".*"))


def test_read_only_folder_is_one_line(tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputWriteError, match="read-only file system"):
        atomic_save({"a": 1}, tmp_path / "x.pt")


def test_one_line_cli_error_for_full_disk(tmp_path, monkeypatch, capsys):
    from tdfusion_core.commands.cli import main
    from tdfusion_core.plugin.registry import get_fusion_net
    from tdfusion_core.training.checkpoints import save_model_checkpoint

    net = get_fusion_net("refusion", 2, dim=8, num_blocks=1, heads=1)
    monkeypatch.setattr(atomic, "_write_all", lambda _fh, _d: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OutputWriteError):
        save_model_checkpoint(
            tmp_path / "m.pt",
            fusion_net=net,
            fusion_arch="refusion",
            fusion_config={"dim": 8, "num_blocks": 1, "heads": 1},
        )
    assert not list(tmp_path.iterdir())
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "fuse",
                "--ir",
                str(tmp_path),
                "--vis",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--checkpoint",
                str(tmp_path / "empty.pt"),
            ]
        )
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Error:" in err


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from tdfusion_core import atomic

    def slow(fh, data):  # write in small pieces so that kill -9 lands in the middle of a write
        view = memoryview(data)
        for i in range(0, len(view), 4096):
            fh.write(view[i : i + 4096])
            time.sleep(0.0005)

    atomic._write_all = slow
    path = sys.argv[1]
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        atomic.atomic_save({"step": i, "w": torch.full((64, 1024), float(i))}, path, keep_previous=True)
    """
)


@pytest.mark.parametrize("delay", [0.3, 0.45, 0.6, 0.8])
def test_kill_9_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path, delay):
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_save({"step": 0, "w": torch.zeros(64, 1024)}, path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for candidate in (path, previous_path(path)):
        if candidate.exists():
            state = torch.load(candidate, weights_only=True)
            assert torch.equal(state["w"], torch.full((64, 1024), float(state["step"])))
    assert torch.load(path, weights_only=True)["step"] >= 0
    with RunLock(tmp_path):  # a new run's lock removes what the killed writer left
        assert not list(path.parent.glob(".last.*"))


def test_stale_temps_of_older_versions_are_removed(tmp_path):
    (tmp_path / ".last.pt.tmp-1234").write_bytes(b"x")
    (tmp_path / ".last.pt.abcd.tmp").write_bytes(b"x")
    (tmp_path / "last.pt").write_bytes(b"keep")
    assert len(remove_stale_temps(tmp_path, "last.pt")) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_two_runs_cannot_write_one_out(tmp_path):
    with (
        RunLock(tmp_path),
        pytest.raises(RunLockedError, match=rf"{tmp_path.name} is being written by another run \(pid {os.getpid()}"),
    ):
        small_trainer(tmp_path, epochs=1, meta_steps=0, fusion_steps=1).fit()
    assert not (tmp_path / "checkpoints").exists()
    small_trainer(tmp_path, epochs=1, meta_steps=0, fusion_steps=1, log_images=False).fit()  # free again


def test_resume_refuses_an_architecture_change_listing_the_keys(trained):
    with pytest.raises(ResumeError, match=r"task_options: \{'width': 4\} in the run, \{'width': 8\} now"):
        small_trainer(trained, resume=True, epochs=3, task_options={"width": 8})
    trainer = small_trainer(trained, resume=True, epochs=3, meta_steps=0, fusion_steps=1, lr_task=0.5)
    assert trainer.epoch == 2  # other settings may change
