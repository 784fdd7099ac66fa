"""Data: samples and batches of registered sources, target transforms, datasets."""

from tdfusion_core.data.sample import Batch, Sample, collate_samples

__all__ = ["Batch", "Sample", "collate_samples"]
