"""Built-in plugin registering the datasets that ship with tdfusion-core.

* ``folder``: any ``<root>/<split>/{ir,vi,...}`` folder with optional masks or boxes
  (:class:`~tdfusion_core.data.paired.PairedDataset`);
* ``synthetic``: procedural IR/visible road scenes generated on the fly, no download
  (:class:`~tdfusion_core.data.synthetic.SyntheticScenes`);
* ``msrs``, ``fmb``, ``m3fd``, ``llvip``: the public datasets' class lists and layouts
  (:mod:`tdfusion_core.data.presets`; pass ``layout="published"`` or ``"tdfusion"`` for their other layouts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tdfusion_core import hookimpl


def folder_dataset(root: str | Path | None = None, split: str = "train", **options: Any) -> Any:
    """A :class:`PairedDataset` over ``root`` (required)."""
    from tdfusion_core.data.paired import PairedDataset

    if root is None:
        raise ValueError("the 'folder' dataset needs its folder: root=PATH holding <split>/ir and <split>/vi")
    return PairedDataset(root, split=split, **options)


def synthetic_dataset(root: str | Path | None = None, split: str = "train", **options: Any) -> Any:
    """:class:`SyntheticScenes` (``root`` is ignored: nothing is read from disk)."""
    from tdfusion_core.data.synthetic import SyntheticScenes

    return SyntheticScenes(split=split, **options)


def _preset_factory(name: str) -> Callable[..., Any]:
    def factory(root: str | Path | None = None, split: str = "train", **options: Any) -> Any:
        from tdfusion_core.data.presets import preset_dataset

        return preset_dataset(name, root, split=split, **options)

    factory.__name__ = f"{name}_dataset"
    factory.__doc__ = f"The {name.upper()} preset (see tdfusion_core.data.presets)."
    return factory


@hookimpl
def tdfusion_register_datasets() -> Mapping[str, Any]:
    return {
        "folder": folder_dataset,
        "synthetic": synthetic_dataset,
        **{name: _preset_factory(name) for name in ("msrs", "fmb", "m3fd", "llvip")},
    }
