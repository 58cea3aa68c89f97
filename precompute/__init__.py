"""Audio -> features -> patches + targets -> one HDF5 store (CLI ``precompute``)."""
