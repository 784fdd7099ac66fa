"""tdfusion-openmmlab: what the tdfusion-mmseg and tdfusion-mmdet task plugins share.

* :mod:`tdfusion_openmmlab.task` — :class:`OpenMMLabTask`, the base of both tasks (config, build, weights, input kind);
* :mod:`tdfusion_openmmlab.glue` — configs by path / shipped name / dict, offline sanitising, building in the right
  registry scope, in-graph normalisation (:class:`NormalizedModel`), loss sums, checkpoint loading;
* :mod:`tdfusion_openmmlab.luminance` — one-channel first convolutions / patch embeddings;
* :mod:`tdfusion_openmmlab.readiness` — whether mmcv / mmengine / the framework are usable here, and the fix;
* :mod:`tdfusion_openmmlab.testing` — helpers shared by the plugins' tests.

mmcv's compiled ops on mmcv-lite come from the separate :mod:`tdfusion_mmcv_compat` (distribution
``tdfusion-mmcv-compat``), which knows nothing of tdfusion.
"""

from __future__ import annotations

from tdfusion_openmmlab.readiness import OpenMMLabNotReadyError, ensure_ready, install_line, problem

__version__ = "0.1.0"
__all__ = ["OpenMMLabNotReadyError", "__version__", "ensure_ready", "install_line", "problem"]
