"""tdfusion-mmseg: MMSegmentation models (SegFormer by default) as tdfusion task networks."""

from __future__ import annotations

from tdfusion_mmseg.task import SEGFORMER_CONFIGS, MMSegTask, SegFormerTask, SegmentorNetwork

__version__ = "0.1.0"
__all__ = ["SEGFORMER_CONFIGS", "MMSegTask", "SegFormerTask", "SegmentorNetwork", "__version__"]
