"""MetaTrainer: learning, resume, ablations, guards (small modules and data, CPU)."""

import warnings

import pytest
import torch

from tdfusion_core import hookimpl
from tdfusion_core.training.config import TrainConfig
from tdfusion_core.training.trainer import TrainingDivergedError
from tests.conftest import plugin_registered
from tests.trainer_utils import BlobScenes, small_trainer


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _same(a, b, where=""):
    """Nested state (dicts, lists, tensors, numbers) equal; tensors bit for bit."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def assert_same_training_state(a, b):
    """Optimizers, schedulers, counters and history of two trainers agree (besides F, G and T)."""
    for name in ("opt_fusion", "opt_task", "opt_generator"):
        _same(getattr(a, name).state_dict(), getattr(b, name).state_dict(), name)
    _same([s.state_dict() for s in a.schedulers], [s.state_dict() for s in b.schedulers], "schedulers")
    for name in ("epoch", "meta_step_count", "fusion_step_count", "bad_steps"):
        assert getattr(a, name) == getattr(b, name), name
    strip = [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in b.history]


def test_task_loss_decreases():
    trainer = small_trainer(epochs=6, meta_steps=1, fusion_steps=4)
    history = trainer.fit()
    assert history[-1]["fusion/task_loss"] < 0.8 * history[0]["fusion/task_loss"]
    metrics = trainer.evaluate(BlobScenes(4, seed=9))
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["mAcc"] <= 1.0


def test_meta_split_is_disjoint_and_changes_per_epoch():
    trainer = small_trainer(n=10)
    a0, b0 = trainer.sampler.split(len(trainer.train_set), 0)
    a1, _ = trainer.sampler.split(len(trainer.train_set), 1)
    assert not set(a0) & set(b0)
    assert sorted(a0 + b0) == list(range(10))
    assert a0 != a1


class _StopAt:
    def __init__(self, epoch):
        self.epoch = epoch

    @hookimpl
    def tdfusion_on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_kill_and_resume_is_bit_identical(tmp_path):
    reference = small_trainer(tmp_path / "a", epochs=3)
    reference.fit()

    with plugin_registered(_StopAt(2), "stop-at-2"), pytest.raises(KeyboardInterrupt):
        small_trainer(tmp_path / "b", epochs=3).fit()
    assert (tmp_path / "b" / "checkpoints" / "last.pt").is_file()
    resumed = small_trainer(tmp_path / "b", epochs=3, resume=True)
    assert resumed.epoch == 2
    resumed.fit()
    for name in ("fusion_net", "loss_generator"):
        assert _equal(_state(getattr(reference, name)), _state(getattr(resumed, name))), name
    assert _equal(_state(reference.task.network), _state(resumed.task.network))
    assert_same_training_state(reference, resumed)
    assert sorted(p.name for p in (tmp_path / "b" / "images").iterdir()) == [
        "epoch_0001.png",
        "epoch_0002.png",
        "epoch_0003.png",
    ]


def test_state_dict_round_trip_restores_optimizers_schedulers_and_counters():
    trained = small_trainer(epochs=2, lr_step_size=1, lr_gamma=0.5, task_step="sgd")
    trained.fit()
    fresh = small_trainer(epochs=2, lr_step_size=1, lr_gamma=0.5, task_step="sgd", n=8)
    assert fresh.meta_step_count == 0 and fresh.opt_fusion.param_groups[0]["lr"] == 1e-2
    fresh.load_state_dict(trained.state_dict())
    assert_same_training_state(trained, fresh)
    assert fresh.opt_fusion.param_groups[0]["lr"] == 2.5e-3  # the schedule's place, not only its settings
    for name in ("fusion_net", "loss_generator"):
        assert _equal(_state(getattr(trained, name)), _state(getattr(fresh, name))), name


def test_resume_without_checkpoint_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"last\.pt"):
        small_trainer(tmp_path / "none", resume=True)


def test_fixed_weights_leaves_generator_untouched():
    trainer = small_trainer(fixed_weights=True)
    g0, f0 = _state(trainer.loss_generator), _state(trainer.fusion_net)
    trainer.fit()
    assert _equal(g0, _state(trainer.loss_generator))
    assert not _equal(f0, _state(trainer.fusion_net))
    assert trainer.meta_step_count == 0


def test_generator_is_trained_by_default():
    trainer = small_trainer(epochs=1)
    g0 = _state(trainer.loss_generator)
    trainer.fit()
    assert not _equal(g0, _state(trainer.loss_generator))
    assert trainer.meta_step_count == 2 and trainer.fusion_step_count == 3


def test_no_separate_fusion_phase_updates_f_in_meta_steps():
    trainer = small_trainer(epochs=1, separate_fusion_phase=False)
    f0, t0 = _state(trainer.fusion_net), _state(trainer.task.network)
    trainer.fit()
    # ablation IV: no fusion phase, but one F/T step of their optimizers after each meta step (issue 13; before,
    # F only kept its inner SGD step, ~2000x smaller than an Adam step) — see tests/test_ablations.py
    assert trainer.fusion_step_count == trainer.meta_step_count == 2
    assert not _equal(f0, _state(trainer.fusion_net))
    assert not _equal(t0, _state(trainer.task.network))


def test_task_loss_on_fusion_changes_only_fs_update():
    base = small_trainer(epochs=1, meta_steps=0, fusion_steps=1)
    with_lt = small_trainer(epochs=1, meta_steps=0, fusion_steps=1, task_loss_on_fusion=1.0)
    base.fit()
    with_lt.fit()
    assert not _equal(_state(base.fusion_net), _state(with_lt.fusion_net))
    assert _equal(_state(base.loss_generator), _state(with_lt.loss_generator))


def test_alpha_zero_drops_gradient_term():
    trainer = small_trainer(epochs=1, meta_steps=0, alpha=0.0)
    history = trainer.fit()
    assert history[0]["fusion/gradient_loss"] == 0.0
    assert small_trainer(epochs=1, meta_steps=0).fit()[0]["fusion/gradient_loss"] > 0


def test_discriminative_fusion_trains_generator_by_task_loss():
    trainer = small_trainer(epochs=1, discriminative=True)
    g0 = _state(trainer.loss_generator)
    trainer.fit()
    assert trainer.meta_step_count == 0
    assert not _equal(g0, _state(trainer.loss_generator))


class _NaNScenes(BlobScenes):
    def __getitem__(self, i):
        s = super().__getitem__(i)
        s.sources[0] = float("nan")
        return s


def test_non_finite_steps_are_skipped_then_stop(tmp_path):
    trainer = small_trainer(tmp_path, epochs=1, meta_steps=0, fusion_steps=2)
    trainer.fit()  # a good checkpoint
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    trainer.config = trainer.config.evolve(epochs=2, max_bad_steps=3, fusion_steps=5)
    trainer.train_set = _NaNScenes(8)
    f0 = _state(trainer.fusion_net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TrainingDivergedError, match="3 consecutive non-finite"):
            trainer.fit()
    assert any("fusion phase" in str(w.message) for w in caught)
    assert _equal(f0, _state(trainer.fusion_net))  # no parameter changed
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good


def test_config_round_trips_through_yaml(tmp_path):
    config = TrainConfig(epochs=3, crop_size="64x96", task_size=(120, 160), fixed_weights=True, task_options={"a": 1})
    config.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == config


def test_config_errors_name_the_problem(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_run_directory_holds_config_checkpoint_logs_and_images(tmp_path):
    trainer = small_trainer(tmp_path, epochs=1)
    trainer.fit()
    assert TrainConfig.from_yaml(tmp_path / "config.yaml") == trainer.config
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "images" / "epoch_0001.png").is_file()
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))  # no temp file left behind


def test_choice_settings_accept_exactly_their_listed_values():
    for field, good, bad in [
        ("generator_update", ("maxnorm", "adam", "adamw", "sgd"), "adamax"),
        ("meta_mode", ("jvp", "double-backward", "finite-difference"), "fd"),
        ("intensity", ("reference", "paper"), "mean"),
        ("meta_sync", ("union", "per-shard"), "all"),
        ("dist_backend", ("nccl", "gloo", "mpi", "ucc", None), "tcp"),
    ]:
        for value in good:
            assert getattr(TrainConfig(**{field: value}), field) == value
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: bad})
