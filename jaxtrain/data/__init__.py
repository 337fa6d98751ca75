"""The data stage: sources, preprocessing (fit on train, apply everywhere), batching.

The trainer depends on `load_dataset` and the `Dataset` it returns, and calls
`write_artifacts(dataset, workdir)` (stats.json, preprocess_report.json),
`summary(dataset)` (a human report) and `load_stats(workdir)` (for eval).
"""

from jaxtrain.data.artifacts import load_stats, summary, write_artifacts
from jaxtrain.data.dataset import Dataset, Split, epoch_permutation
from jaxtrain.data.load import load_dataset

__all__ = ["Dataset", "Split", "epoch_permutation", "load_dataset", "load_stats", "summary",
           "write_artifacts"]
