"""The on-disk format: WebDataset tars, DALI index files, Parquet manifests, dataset.json."""
