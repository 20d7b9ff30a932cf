"""One YAML file drives a run. This module defines every key (the pydantic schema below), loads the
file with its base files (`config_file_path`) and `--set key=value` overrides, and turns any
mistake into a one-line `ConfigError` that names the key and the nearest valid one.

Top-level keys of the user's thesis config (quant, test, onnx, quant_teacher, gpu_id, batch_size,
debug, pdb_debug, load_model, load_quant_model, load_teacher_model, config_file_path,
extra_quantizer_dict, output_layer_list, distill_config, distill_coeff) keep their names and
meanings; everything else lives in sections (data, model, optim, schedule, loss, val, output,
quant_scheme, distill, onnx_export) whose defaults reproduce the authors' recipe.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.names import nearest, validation_error_line
from quant.scheme import QuantSchemeConfig


class ConfigError(ValueError):
    """A config mistake; the message is one line and names the key at fault."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticDataConfig(Section):
    """Parameters of the embedded SID-format stand-in, generated when `data.root` has no data set."""
    seed: int = 0
    height: int = 256
    width: int = 384
    train_scenes: int = 4
    val_scenes: int = 1
    test_scenes: int = 2
    bursts: int = 2


# What `data.dataset` changes when the file leaves these keys unset (docs/datasets.md).
DATASET_DEFAULTS = {
    "sid": {},
    # The authors' split lists; MCR has no validation split, its authors validated on the test list.
    "mcr": {"root": "data/synthetic_mcr", "train_list": "train", "val_list": "val", "test_list": "test",
            "val_protocol": "all", "test_protocol": "all"},
    "pairs": {"root": "data/synthetic_pairs", "train_list": "train.csv", "val_list": "val.csv",
              "test_list": "test.csv", "val_protocol": "all", "test_protocol": "all"},
}


class DataConfig(Section):
    # sid: SID Sony (data/sid.py); mcr: the DBF/DBLE authors' MCR (data/mcr.py); pairs: your own camera's
    # short/long raw pairs listed in CSV files (data/pairs.py). docs/datasets.md says how to point at each.
    dataset: Literal["sid", "mcr", "pairs"] = "sid"
    root: str = "data/synthetic_sid"
    # null for real SID; a mapping here makes the run generate the stand-in at `root` if it is absent.
    synthetic: Optional[SyntheticDataConfig] = Field(default_factory=SyntheticDataConfig)
    train_list: str = "Sony_train_list.txt"
    val_list: str = "Sony_val_list.txt"
    test_list: str = "Sony_test_list.txt"
    cache_dir: Optional[str] = None  # decoded-raw cache; default <root>/.decoded_cache
    patch_size: int = 512
    flip: bool = True
    transpose: bool = False
    # auto: from the CPUs this process may use (core/setup.py: loader_workers); 0 = load in-process.
    num_workers: Union[int, Literal["auto"]] = "auto"
    decode_workers: int = 2
    # all: every pair of train_list; dble: the DBF/DBLE authors' 181 pairs (data/sid.py select_training_pairs)
    train_protocol: Literal["all", "dble"] = "all"
    val_protocol: Literal["all", "sid", "dble"] = "sid"
    test_protocol: Literal["all", "sid", "dble"] = "sid"
    exclude_misaligned: bool = True
    max_train_pairs: Optional[int] = None
    max_val_pairs: Optional[int] = None
    max_test_pairs: Optional[int] = None

    @model_validator(mode="before")
    @classmethod
    def _dataset_defaults(cls, values):
        if isinstance(values, dict) and values.get("dataset") in DATASET_DEFAULTS:
            return {**DATASET_DEFAULTS[values["dataset"]], **values}
        return values

    @model_validator(mode="after")
    def _protocols_of_dataset(self):
        if self.dataset != "sid":
            for key in ("train_protocol", "val_protocol", "test_protocol"):
                if getattr(self, key) != "all":
                    raise ValueError(f"{key}: {getattr(self, key)} is a SID protocol; dataset {self.dataset} "
                                     "has only 'all' (every listed pair)")
        return self

    @field_validator("num_workers", mode="before")
    @classmethod
    def _worker_count(cls, value):
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError("must be auto or a number of worker processes >= 0")
        return value

    @field_validator("patch_size")
    @classmethod
    def _multiple_of_32(cls, value):
        if value <= 0 or value % 32:
            raise ValueError("must be a positive multiple of 32 (the network downsamples 16x on packed input)")
        return value


class SpeedConfig(Section):
    """Training speed (core/speed.py says what runs in which precision)."""
    mixed_precision: Literal["none", "bf16", "fp16"] = "none"  # fp16: CUDA only, with a GradScaler
    channels_last: bool = False
    compile: bool = False  # torch.compile of the training forward (not of validation)
    # DDP: null finds unused parameters only when a parameter gets no gradient (core/distributed.py).
    find_unused_parameters: Optional[bool] = None


class ModelConfig(Section):
    # A name registered in models.MODELS, or package.module:ClassName of a network following
    # models/contract.py; checked (module imported, contract read) when the config loads.
    name: str = "dbf_dble"
    width: float = Field(1.0, gt=0)  # channel multiplier; 1.0 = the published network
    kwargs: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the network's constructor

    @field_validator("name")
    @classmethod
    def _known_network(cls, value):
        from models import resolve_network
        resolve_network(value, where=None)
        return value

    @field_validator("width")
    @classmethod
    def _network_takes_width(cls, value, info):
        from models import check_width, resolve_network
        if "name" in info.data:
            check_width(resolve_network(info.data["name"]), value, where=None)
        return value

    @field_validator("kwargs")
    @classmethod
    def _network_takes_kwargs(cls, value, info):
        from models import check_kwargs, resolve_network
        if "name" in info.data:
            check_kwargs(resolve_network(info.data["name"]), value, where=None)
        return value


class OptimConfig(Section):
    lr: float = Field(1e-5, gt=0)  # the authors' constant Adam lr
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: Optional[float] = None


class ScheduleConfig(Section):
    # 0: no training. A quantized run is then post-training quantization (calibration only) and is
    # scored like any other, so a sweep variant `{schedule.epochs: 0}` puts PTQ beside QAT.
    epochs: int = Field(100, ge=0)
    iters_per_epoch: Optional[int] = None  # null: one pass over the training pairs
    scheduler: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = 30  # epochs, for scheduler: step
    gamma: float = 0.5
    min_lr: float = 0.0  # for scheduler: cosine
    grad_accum_steps: int = Field(1, ge=1)


class LossConfig(Section):
    mono_weight: float = 1.0
    rgb_weight: float = 1.0


class ValConfig(Section):
    every: int = Field(1, ge=1)  # validate every N epochs (and always after the last)
    ssim: Literal["skimage", "gaussian"] = "skimage"
    # float: clipped float images; uint8: the DBF/DBLE authors' truncated 8-bit scoring (core/metrics.py)
    metric_precision: Literal["float", "uint8"] = "float"
    # null: whole frames (on a GPU, a frame that does not fit falls back to exact 512 tiles); else tiles
    # of this size (multiple of 32)
    tile_size: Optional[int] = None
    tile_overlap: int = 32
    # null: exact frame-wide channel-attention averages (4 short statistics passes + 1, see
    # core/evaluate.py); 0: each tile averages over itself (one pass, about 0.03 dB off).
    tile_statistics_passes: Optional[int] = None

    @field_validator("tile_size")
    @classmethod
    def _tile_multiple_of_32(cls, value):
        if value is not None and (value <= 0 or value % 32):
            raise ValueError("must be a positive multiple of 32")
        return value


class OutputConfig(Section):
    results_dir: str = "results"
    # Full-precision weights (<experiment>.pth / .safetensors) and ONNX exports (<experiment>/).
    artifacts_dir: str = "onnx"
    experiment: Optional[str] = None  # null: the config file's name
    keep_best: int = Field(1, ge=1)
    tensorboard: bool = True
    save_images: bool = False


class DistillConfig(Section):
    feature_loss: Literal["mse", "l1", "scale_invariant"] = "mse"


class OnnxExportConfig(Section):
    opset: Optional[int] = None  # null: 17, or 21 when a quantizer is wider than 8 bits or a weight 4-bit
    height: int = 64
    width: int = 64


class SpecialLayers(Section):
    model_config = ConfigDict(extra="forbid")
    special_layer: dict[str, Any] = Field(default_factory=dict)


class Config(Section):
    # The user's own top-level keys (their meaning: the table under "The config" in README.md).
    quant: bool = False
    test: bool = False
    onnx: bool = False
    quant_teacher: bool = False
    gpu_id: int = Field(0, ge=0)  # CUDA device index when device is auto or cuda
    batch_size: int = Field(24, ge=1)
    debug: bool = False
    pdb_debug: bool = False
    load_model: Optional[str] = None
    load_quant_model: Optional[str] = None
    load_teacher_model: Optional[str] = None
    config_file_path: Union[str, list[str], None] = None
    extra_quantizer_dict: SpecialLayers = Field(default_factory=SpecialLayers)
    output_layer_list: list[str] = Field(default_factory=list)
    distill_config: list[str] = Field(default_factory=list)
    distill_coeff: Union[float, list[float]] = Field(default_factory=list)  # one number: same for every layer

    # Harness keys.
    device: str = "auto"  # auto | cpu | cuda | cuda:N ; auto = CUDA (gpu_id) when present, else CPU
    seed: int = 0
    allow_random_init: bool = False
    quantize_output: bool = False
    # Reproducible CUDA runs (core/speed.py: make_deterministic); costs speed, see README.
    deterministic: bool = False
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    val: ValConfig = Field(default_factory=ValConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    quant_scheme: QuantSchemeConfig = Field(default_factory=QuantSchemeConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    onnx_export: OnnxExportConfig = Field(default_factory=OnnxExportConfig)

    @field_validator("load_model", "load_quant_model", "load_teacher_model", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value):
        # The user's file writes `load_quant_model : ` (YAML null) or '' for "none".
        return None if value in ("", None) else value

    @field_validator("device")
    @classmethod
    def _device_form(cls, value):
        if value not in ("auto", "cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _distill_lengths(self):
        if not isinstance(self.distill_coeff, list):
            self.__dict__["distill_coeff"] = [float(self.distill_coeff)] * len(self.distill_config)
        if self.distill_coeff and len(self.distill_coeff) != len(self.distill_config):
            raise ValueError(f"distill_coeff has {len(self.distill_coeff)} value(s) but distill_config "
                             f"names {len(self.distill_config)} layer(s)")
        return self

    @property
    def experiment(self) -> str:
        return self.output.experiment or "run"

    @property
    def run_dir(self) -> Path:
        return Path(self.output.results_dir) / self.experiment

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.output.artifacts_dir)


# ----------------------------------------------------------------------------- loading

def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return loaded


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "special_layer":
            merged[key] = _merge(merged[key], value)
        else:
            # special_layer is replaced whole: a run that lists its high-bit layers means exactly those.
            merged[key] = copy.deepcopy(value)
    return merged


def _resolve_base(name: str, including: Path) -> Path:
    # The user writes base paths relative to the repository root (`./configfile/aba_config.yaml`);
    # also accept paths relative to the including file.
    for candidate in (Path(name), including.parent / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config_file_path in {including}: file not found: {name}")


def load_with_bases(path: Path, seen: tuple = ()) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"config_file_path: {path} includes itself (cycle {' -> '.join(map(str, seen))})")
    raw = _read_yaml(path)
    bases = raw.get("config_file_path") or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, load_with_bases(_resolve_base(base, path), seen + (path.resolve(),)))
    return _merge(merged, raw)


def apply_override(raw: dict, assignment) -> None:
    """`assignment` is 'dotted.key=yaml value' (command line) or a (dotted key, value) pair (sweeps)."""
    if isinstance(assignment, tuple):
        dotted, value = assignment
    elif "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value (e.g. --set schedule.epochs=3)")
    else:
        dotted, text = assignment.split("=", 1)
        value = yaml.safe_load(text) if text.strip() else None
    node = raw
    keys = dotted.strip().split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FOLDER = REPOSITORY_ROOT / "configfile"


def find_config_file(path) -> Path:
    """`path` as given, else a bare name (`aba_config.yaml`, `seed_aba`) found in configfile/."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent == Path("."):
        for candidate in (CONFIG_FOLDER / path.name, CONFIG_FOLDER / f"{path.name}.yaml"):
            if candidate.is_file():
                print(f"config: {path} found in {CONFIG_FOLDER}: {candidate}")
                return candidate
    known = sorted(p.name for p in CONFIG_FOLDER.glob("*.yaml"))
    close = nearest(path.name, known, count=3)
    hint = f"; nearest in {CONFIG_FOLDER}: {', '.join(close)}" if close else ""
    raise ConfigError(f"config file not found: {path}{hint}")


def load_config(path, overrides=(), check_files=True) -> Config:
    """Read `path` on top of its `config_file_path` bases, apply `key=value` overrides, validate."""
    path = find_config_file(path)
    raw = load_with_bases(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_error_line(error, Config)}") from None
    if config.output.experiment is None:
        config.output.experiment = path.stem
    if config.debug:
        shrink_for_debug(config)
    if check_files:
        check_named_files(config, str(path))
    return config


def shrink_for_debug(config: Config) -> None:
    """`debug: true`: a smoke test of every stage in seconds, same code path as a real run."""
    config.schedule.epochs = min(config.schedule.epochs, 2)
    config.schedule.iters_per_epoch = min(config.schedule.iters_per_epoch or 2, 2)
    config.data.max_train_pairs = min(config.data.max_train_pairs or 4, 4)
    config.data.max_val_pairs = min(config.data.max_val_pairs or 2, 2)
    config.data.max_test_pairs = min(config.data.max_test_pairs or 2, 2)
    config.data.patch_size = min(config.data.patch_size, 64)
    config.batch_size = min(config.batch_size, 2)
    config.quant_scheme.calibration_batches = min(config.quant_scheme.calibration_batches, 1)


def check_named_files(config: Config, source: str) -> None:
    """Stop before any work when a file the run will need does not exist."""
    needed = {"load_model": config.load_model}
    if config.quant:
        needed["load_quant_model"] = config.load_quant_model
    if config.quant and config.quant_teacher:
        needed["load_teacher_model"] = config.load_teacher_model
    for key, value in needed.items():
        if value and not Path(value).is_file():
            raise ConfigError(f"{source}: {key}: file not found: {value}")
    if config.quant and not (config.load_model or config.load_quant_model or config.allow_random_init):
        # Quantizing random weights wastes the run (the user lost weeks to it): demand intent.
        raise ConfigError(f"{source}: quant: true needs load_model (full-precision weights) or "
                          "load_quant_model; set allow_random_init: true to quantize random weights on purpose")
    if config.schedule.epochs == 0 and not (config.quant or config.load_model):
        raise ConfigError(f"{source}: schedule.epochs: 0 evaluates without training, which needs load_model "
                          "(full-precision weights) or quant: true (post-training quantization); use epochs >= 1")
    if config.quant and config.quant_teacher and not config.load_teacher_model:
        raise ConfigError(f"{source}: quant_teacher: true needs load_teacher_model (the full-precision teacher)")
    if config.data.synthetic is None and not Path(config.data.root).is_dir():
        raise ConfigError(f"{source}: data.root: folder not found: {config.data.root} "
                          "(set data.synthetic to generate the embedded stand-in there)")


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
