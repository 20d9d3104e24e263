"""Datasets: loaders for MovieLens, Last.fm-2K, generic tables and synthetic data; splits; partitions."""

from fedrec.data.dataset import Dataset, Interactions, Split
from fedrec.data.download import ARCHIVES, Archive, default_cache_dir, fetch_dataset
from fedrec.data.lastfm import load_lastfm_2k
from fedrec.data.movielens import load_movielens
from fedrec.data.partition import Partition, per_user_partition, random_silos, silos_by_feature, zip_region
from fedrec.data.registry import DATASETS, canonical_name, find_dataset, load_dataset
from fedrec.data.splits import (
    carve_validation,
    leave_last_out,
    leave_last_out_with_report,
    official_split,
    random_ratio_split,
)
from fedrec.data.stats import dataset_stats, format_stats
from fedrec.data.synthetic import make_synthetic
from fedrec.data.tabular import load_table

__all__ = [
    "ARCHIVES",
    "Archive",
    "DATASETS",
    "Dataset",
    "Interactions",
    "Partition",
    "Split",
    "canonical_name",
    "carve_validation",
    "dataset_stats",
    "default_cache_dir",
    "fetch_dataset",
    "find_dataset",
    "format_stats",
    "leave_last_out",
    "leave_last_out_with_report",
    "load_dataset",
    "load_lastfm_2k",
    "load_movielens",
    "load_table",
    "make_synthetic",
    "official_split",
    "per_user_partition",
    "random_ratio_split",
    "random_silos",
    "silos_by_feature",
    "zip_region",
]
