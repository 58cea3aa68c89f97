"""The data side: a store's patches, files and works as a Dataset, and the DataLoaders of an
experiment.

One training batch, from the sampler to the tensor the model gets:

1. ``samplers.py``: the epoch's next batch of patch indices (shuffled by seed and epoch, by
   blocks of the store, whole works per batch, a rank's share under DDP);
2. ``dataset.py``: ``StoreDataset.__getitems__`` turns them into frame addresses (each patch's
   file and first frame) and asks for the batch;
3. ``batches.py``: one block of memory for the whole batch, from this process's blocks (in a
   DataLoader worker, shared memory it lends to the main process);
4. ``read.py``: the patches' byte ranges read into the block, one ``pread`` each (or one
   ``index_select`` from a map where the page cache holds them all);
5. ``targets.py``: the frame-level targets decoded from their runs (``common/targets/runs.py``)
   into the block, beside the features;
6. ``batches.py`` again: the batch handed to the collate function whole (any collate function
   gets the same tensors), and from a worker to the main process as one reference to its block,
   given back when the batch is freed;
7. ``train/step.py``: the step's copy to the device (``non_blocking``), made float32 and
   contiguous there, then augmentation and the model.

Settings travel as one :class:`DataSettings` (``settings.py``); the splits are in
``splits.py``, the DataModule (``prepare_data``, ``setup``, ``train_dataloader``...) in
``module.py``, and where a store is found in ``find.py``.
"""

from __future__ import annotations

from ..errors import DatasetError
from .batches import collate, collate_padded
from .dataset import StoreDataset
from .find import find_store, precompute_command
from .module import ResumableLoader, StoreDataModule
from .samplers import EpochSampler, WorkBatchSampler
from .settings import DataSettings
from .splits import SPLITS, assign_folds, assign_splits, stable_fraction

__all__ = [
    "SPLITS",
    "DataSettings",
    "DatasetError",
    "EpochSampler",
    "ResumableLoader",
    "StoreDataModule",
    "StoreDataset",
    "WorkBatchSampler",
    "assign_folds",
    "assign_splits",
    "collate",
    "collate_padded",
    "find_store",
    "precompute_command",
    "stable_fraction",
]
