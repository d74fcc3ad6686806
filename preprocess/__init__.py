"""Offline preprocessing: source images -> 256x256 samples (shard) and RGB statistics (pca-stats)."""
