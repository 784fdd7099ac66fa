"""Issue 17 item 1: non-finite values never reach a file (images, training state, checkpoints)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tdfusion_core.common.io import NonFiniteImageError, read_image
from tdfusion_core.data.check import check_dataset
from tdfusion_core.data.labels import DataError
from tdfusion_core.data.paired import PairedDataset
from tdfusion_core.training.checkpoints import CheckpointError, load_model_checkpoint, save_model_checkpoint
from tdfusion_core.training.state_guard import non_finite_tensors
from tdfusion_core.training.trainer import TrainingDivergedError
from tests.data_helpers import make_folder
from tests.trainer_utils import small_trainer


def _nan_tiff(path, size=(24, 32)):
    arr = np.full(size, 0.5, dtype=np.float32)
    arr[3, 5] = np.nan
    Image.fromarray(arr, mode="F").save(path)


def test_nan_float_tiff_is_refused_by_reader_loader_and_data_check(tmp_path):
    root = make_folder(tmp_path / "ds")
    bad = root / "train" / "ir" / "b.png"
    bad.unlink()
    _nan_tiff(bad.with_suffix(".tif"))
    with pytest.raises(NonFiniteImageError, match=r"b\.tif has 1 non-finite pixel.*row 3, column 5"):
        read_image(bad.with_suffix(".tif"))
    with pytest.raises(DataError, match=r"b\.tif.*non-finite"):
        PairedDataset(root)[1]
    problems, _ = check_dataset(root)
    assert [(p.path.name, p.kind) for p in problems] == [("b.tif", "non-finite")]

    from tdfusion_core.commands.cli import build_cli

    result = CliRunner().invoke(build_cli(), ["data", "check", str(root)])
    assert result.exit_code == 1 and "b.tif" in result.output and "non-finite" in result.output


def test_inf_float_tiff_is_refused(tmp_path):
    arr = np.full((8, 8), 0.25, dtype=np.float32)
    arr[0, 0] = np.inf
    Image.fromarray(arr, mode="F").save(tmp_path / "x.tif")
    with pytest.raises(NonFiniteImageError):
        read_image(tmp_path / "x.tif")


def _buffers(module):
    return {k: v.clone() for k, v in module.named_buffers()}


def _nan_batch(trainer):
    gen = torch.Generator().manual_seed(0)
    crop, batch = trainer.batcher.whole([trainer.train_set[0]], gen)
    batch.sources[..., -1, -1] = float("nan")  # outside F's crop: F's loss stays finite, T's forward sees NaN
    return crop, batch


def test_skipped_step_does_not_leave_nan_in_batchnorm_buffers():
    trainer = small_trainer(epochs=1, meta_steps=0, fusion_steps=1)
    assert any("running_mean" in k for k in _buffers(trainer.task.network))
    before = _buffers(trainer.task.network)
    crop, batch = _nan_batch(trainer)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        metrics = trainer._guarded(lambda _: trainer.fusion_update(crop, batch), None, "test fusion")
    assert metrics is None
    after = _buffers(trainer.task.network)
    assert all(torch.equal(before[k], after[k]) for k in before)

    # the same step without the guard poisons the running statistics: what the guard protects against
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fusion_update(crop, batch)
    assert non_finite_tensors(dict(trainer.task.network.named_buffers()))


def test_infinite_learning_rate_stops_the_run_and_writes_nothing_non_finite(tmp_path):
    trainer = small_trainer(tmp_path, epochs=2, meta_steps=1, fusion_steps=1)
    trainer.opt_generator.param_groups[0]["lr"] = math.inf
    with pytest.raises(TrainingDivergedError, match=r"non-finite values.*G\."):
        trainer.fit()
    assert not (tmp_path / "model.pt").exists()
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


class _NaNScenes(torch.utils.data.Dataset):
    num_classes = 3

    def __len__(self):
        return 4

    def __getitem__(self, i):
        from tests.trainer_utils import BlobScenes

        sample = BlobScenes(4)[i]
        sample.sources[:, -1, -1] = float("nan")
        return sample


def test_nan_data_run_stops_non_zero_and_every_saved_tensor_is_finite(tmp_path):
    trainer = small_trainer(tmp_path, epochs=1, meta_steps=0, fusion_steps=2)
    trainer.fit()
    trainer.config = trainer.config.evolve(epochs=3, max_bad_steps=2, fusion_steps=4, meta_steps=1)
    trainer.train_set = _NaNScenes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TrainingDivergedError):
            trainer.fit()
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        assert non_finite_tensors(torch.load(path, weights_only=True)) == [], path
    assert non_finite_tensors(dict(trainer.task.network.named_buffers())) == []


def test_checkpoint_with_nan_weights_is_neither_saved_nor_loaded(tmp_path):
    from tdfusion_core.plugin.registry import get_fusion_net

    net = get_fusion_net("refusion", 2, dim=8, num_blocks=1, heads=1)
    with torch.no_grad():
        next(net.parameters())[0].fill_(float("nan"))
    with pytest.raises(CheckpointError, match="non-finite"):
        save_model_checkpoint(tmp_path / "m.pt", fusion_net=net, fusion_arch="refusion", fusion_config={})
    assert not (tmp_path / "m.pt").exists()
    torch.save(net.state_dict(), tmp_path / "published.pth")  # a state dict as published, NaN inside
    with pytest.raises(CheckpointError, match=r"non-finite values .* refused"):
        load_model_checkpoint(tmp_path / "published.pth")


def test_32_bit_values_beyond_16_bits_are_refused_not_saturated(tmp_path):
    from tdfusion_core.common.io import ImageReadError

    arr = np.full((8, 8), 1000, dtype=np.int32)
    arr[1, 1] = 70000
    Image.fromarray(arr, mode="I").save(tmp_path / "deep.tif")
    with pytest.raises(ImageReadError, match=r"deep\.tif holds integers from 1000 to 70000"):
        read_image(tmp_path / "deep.tif")
