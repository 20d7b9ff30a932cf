"""Building what a run needs from its config: device, data, networks. Shared by train.py, test.py,
tools/hessian_rank.py, tools/export_onnx.py and sweep.py so each reads the same keys the same way."""
import copy
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from harness.config import Config, ConfigError
from data.datasets import dataset_module
from data.raw_cache import RawCache
from data.sid import SIDEvalDataset, SIDTrainDataset, finish_batch, read_list, resolve_list_file, select_training_pairs
from data.synthetic import generate_synthetic_sid
from data.synthetic_mcr import generate_synthetic_mcr, write_synthetic_pairs_lists
from models import build_model, declared_outputs, input_kind as network_input_kind
from checkpoints.weights import load_weights


def resolve_device(config: Config, local_rank=None) -> torch.device:
    """`local_rank` (under torchrun) picks the process's own GPU instead of gpu_id."""
    wanted = config.device
    if local_rank is not None and wanted != "cpu" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    if wanted == "cpu":
        return torch.device("cpu")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(wanted.split(":")[1]) if ":" in wanted else config.gpu_id
    if wanted == "auto" and available == 0:
        if "gpu_id" in config.model_fields_set:  # documented fallback, but the user asked for a GPU by number
            print(f"warning: gpu_id: {config.gpu_id} asked for, but no CUDA device is present; device: auto runs "
                  "on the CPU", file=sys.stderr)
        return torch.device("cpu")
    if available == 0:
        raise ConfigError(f"device: {wanted} asked for CUDA but no CUDA device is present; use device: cpu or auto")
    if index >= available:
        key = "device" if ":" in wanted else "gpu_id"
        raise ConfigError(f"{key}: CUDA device {index} asked for but only {available} present "
                          f"(valid: 0..{available - 1})")
    return torch.device(f"cuda:{index}")


def ensure_data(config: Config) -> Path:
    """The embedded stand-in of the config's data set is generated on first use; real data is used as it is.
    `pairs` gets the SID stand-in's DNGs listed in pairs CSVs (ratios from their exposure times)."""
    root = Path(config.data.root)
    if config.data.synthetic is not None:
        if config.data.dataset == "mcr":
            generate_synthetic_mcr(root, **config.data.synthetic.model_dump())
        else:
            generate_synthetic_sid(root, **config.data.synthetic.model_dump())
            if config.data.dataset == "pairs":
                write_synthetic_pairs_lists(root)
    return root


def data_source(config: Config):
    """The data/ module of `data.dataset` (data/datasets.py lists what each provides)."""
    return dataset_module(config.data.dataset)


def _cache_dir(config: Config) -> Path:
    return Path(config.data.cache_dir or Path(config.data.root) / ".decoded_cache")


def _cache(config: Config) -> RawCache:
    return RawCache(_cache_dir(config))


def split_selection(config: Config, split: str):
    """(list file name, protocol, exclude misaligned scenes, pair limit) of a split."""
    data = config.data
    list_name, protocol, limit = {
        # Training uses every pair; misaligned scenes are a metrics concern only.
        "train": (data.train_list, "all", data.max_train_pairs),
        "val": (data.val_list, data.val_protocol, data.max_val_pairs),
        "test": (data.test_list, data.test_protocol, data.max_test_pairs),
    }[split]
    # Misaligned scenes are SID's (data/sid.py: MISALIGNED_SCENES); other data sets have none listed.
    return list_name, protocol, data.exclude_misaligned and split != "train" and data.dataset == "sid", limit


def split_pairs(config: Config, split: str):
    if split == "train" and config.data.train_protocol != "all":
        return _protocol_training_pairs(config)
    list_name, protocol, exclude, limit = split_selection(config, split)
    return data_source(config).prepare_split(config.data.root, list_name, protocol, exclude, _cache_dir(config),
                                             config.data.decode_workers, limit)


def check_split_lists(config: Config, splits=("train", "val", "test")) -> None:
    """Read and parse every list file a run will use, before hours of decoding or training: a missing val
    list or a malformed test-list line must not surface only when that split is reached."""
    for split in splits:
        if split == "train" and config.data.train_protocol != "all":
            _protocol_training_pairs(config, decode=False)
            continue
        list_name, protocol, exclude, _ = split_selection(config, split)
        source = data_source(config)
        list_file = source.resolve_list_file(config.data.root, list_name)
        if not source.select_pairs(source.read_split(config.data.root, list_name), protocol, exclude):
            raise ConfigError(f"data.{split}_list: {list_file} has no pair under protocol {protocol!r}")


def _protocol_training_pairs(config: Config, decode: bool = True):
    """Training pairs drawn from more than the train list (data.train_protocol: dble), decoded into the cache."""
    data = config.data
    lists = [read_list(resolve_list_file(data.root, name), data.root) for name in (data.train_list, data.val_list)]
    pairs = select_training_pairs(*lists, data.train_protocol)[:data.max_train_pairs]
    if not pairs:
        raise ConfigError(f"data.train_protocol: {data.train_protocol} selects no pair from {data.train_list} and "
                          f"{data.val_list} under {data.root}; use train_protocol: all")
    if decode:
        _cache(config).build([p.short_path for p in pairs], [p.long_path for p in pairs], workers=data.decode_workers)
    return pairs


# More workers than this only add memory (each holds its memory maps and a batch in flight).
MAX_AUTO_WORKERS = 12


def loader_workers(setting, processes_per_node: int = 1) -> int:
    """`data.num_workers`: a number, or auto = the CPUs this process may use, shared among the node's
    training processes, less one for the process itself."""
    if setting != "auto":
        return setting
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, processes_per_node) - 1))


class EpochIndexSampler(Sampler):
    """A DistributedSampler whose indices carry their epoch, (epoch, index): persistent workers keep
    the dataset copy they started with, so set_epoch on the main process's dataset never reaches them."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class TrainLoader:
    """Batches finished on the device: workers ship uint16 patches (data/sid.py: finish_batch turns
    them into the float batch there, bit-identical to the float path) and stay alive across passes.
    `dataset` is the float dataset (calibration builds its own loader on it); `sampler` takes
    set_epoch as a DistributedSampler does."""

    def __init__(self, dataset: SIDTrainDataset, sampler: EpochIndexSampler, batch_size: int, num_workers: int,
                 device, seed: int):
        self.dataset = dataset
        self.sampler = sampler
        self.num_workers = num_workers
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        raw = copy.copy(dataset)
        raw.output_raw = True
        # Pinned host memory lets the copy to a GPU overlap compute; for a CPU run it only costs.
        # The loader's own generator: its worker seeds must not consume the global RNG (resume).
        self.loader = DataLoader(raw, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield finish_batch(batch, self.dataset.input_kind, self.device, self.dataset.clip_input)


def build_train_loader(config: Config, input_kind: str, seed: int, rank: int = 0, world_size: int = 1,
                       device=None) -> TrainLoader:
    """Each rank loads batch_size / world_size samples a step, so the global batch is batch_size.
    A DistributedSampler is used even for one process: the order then depends only on (seed,
    epoch), which makes DDP runs see the same global batches as one process, and resume exact.
    Batches come out on `device` (default CPU)."""
    if config.batch_size % world_size:
        raise ConfigError(f"batch_size: {config.batch_size} is not divisible by the {world_size} processes; "
                          f"use a multiple of {world_size}")
    dataset = SIDTrainDataset(split_pairs(config, "train"), _cache(config), config.data.patch_size, input_kind,
                              flip=config.data.flip, transpose=config.data.transpose, seed=seed,
                              raw_target=_needs_raw_target(config), clip_input=config.data.clip_input)
    sampler = EpochIndexSampler(DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                                   seed=seed))
    workers = loader_workers(config.data.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    return TrainLoader(dataset, sampler, config.batch_size // world_size, workers, device, seed)


def build_eval_dataset(config: Config, split: str, input_kind: str, raw_target: bool = False):
    """Full frames; `raw_target` adds the long exposure's packed raw (scoring needs only RGB)."""
    return SIDEvalDataset(split_pairs(config, split), _cache(config), input_kind, raw_target=raw_target,
                          clip_input=config.data.clip_input)


def _needs_raw_target(config: Config) -> bool:
    # The long exposure's raw is read (and cached) only for networks that declare a raw output.
    return "raw" in declared_outputs(config.model.name)


def build_eval_batches(config: Config, split: str = "val", count: int = 4, input_kind=None):
    """A few full-frame batches (batch size 1) for calibration-free tools such as the Hessian ranking."""
    input_kind = input_kind or network_input_kind(config.model.name)
    dataset = build_eval_dataset(config, split, input_kind, raw_target=_needs_raw_target(config))
    return [{k: (v.unsqueeze(0) if torch.is_tensor(v) else v) for k, v in dataset[i].items()}
            for i in range(min(count, len(dataset)))]


def build_float_model(config: Config, weights=None):
    model = build_model(config.model.name, config.model.width_given, config.model.kwargs,
                        fx_wrap=config.model.fx_wrap, fx_leaf_modules=config.model.fx_leaf_modules)
    if weights:
        load_weights(model, weights)
    return model
