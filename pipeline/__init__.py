"""DALI pipelines (GPU or CPU) that turn shards into augmented batches, and their PyTorch iterators."""
