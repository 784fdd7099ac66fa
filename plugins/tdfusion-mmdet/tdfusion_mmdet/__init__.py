"""tdfusion-mmdet: MMDetection models (RTMDet-tiny by default) as tdfusion task networks."""

from __future__ import annotations

from tdfusion_mmdet.task import MODEL_ZOO, DetectorNetwork, MMDetTask

__version__ = "0.1.0"
__all__ = ["MODEL_ZOO", "DetectorNetwork", "MMDetTask", "__version__"]
