"""The data sets a config can name (`data.dataset`), each a module of data/ with one interface:

    LIST_ALIASES, PROTOCOLS                       list names and evaluation protocols it knows
    resolve_list_file(root, list_name) -> Path    where a list lives
    read_split(root, list_name) -> pairs          every pair of a list (bad lines: one-line errors)
    select_pairs(pairs, protocol, exclude_misaligned) -> pairs
    prepare_split(root, list_name, protocol, exclude_misaligned, cache_dir, workers, max_pairs) -> pairs
                                                  the protocol's pairs, decoded into the raw cache
    cameras(pairs) -> list[str]                   make and model of the inputs (checkpoints record them)
    baseline_image(pair) -> float32 HxWx3         the naive baseline of a pair

A pair has short_path (input), long_path (RGB ground truth), mono_path (None, or a real monochrome
ground truth), name, ratio (the input's amplification) and group (its column in per-ratio tables);
data/sid.py's SIDTrainDataset and SIDEvalDataset read any of them through the raw cache.
"""
import importlib
from types import ModuleType

DATASETS = ("sid", "mcr", "pairs")


def dataset_module(name: str) -> ModuleType:
    if name not in DATASETS:
        raise ValueError(f"unknown data.dataset {name!r}; choices: {', '.join(DATASETS)}")
    return importlib.import_module(f"data.{name}")
