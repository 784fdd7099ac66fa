import inspect

from tdfusion_core.plugin import hookspecs


def _hooks():
    return [(n, f) for n, f in vars(hookspecs).items() if n.startswith("tdfusion_") and callable(f)]


def test_every_hook_is_documented():
    hooks = _hooks()
    assert len(hooks) >= 11
    undocumented = [n for n, f in hooks if len((inspect.getdoc(f) or "").strip()) < 40]
    assert not undocumented, f"hooks without a documented contract: {undocumented}"


def test_required_hooks_exist():
    names = {n for n, _ in _hooks()}
    for required in (
        "tdfusion_register_tasks",
        "tdfusion_register_fusion_nets",
        "tdfusion_register_loss_generators",
        "tdfusion_register_datasets",
        "tdfusion_register_commands",
        "tdfusion_on_run_start",
        "tdfusion_on_run_end",
        "tdfusion_on_epoch_start",
        "tdfusion_on_epoch_end",
        "tdfusion_on_meta_step_end",
        "tdfusion_on_fusion_step_end",
        "tdfusion_on_checkpoint_saved",
    ):
        assert required in names
