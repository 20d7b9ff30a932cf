"""One YAML file drives a run. This module defines every key (the pydantic schema below), loads the
file with its base files (`config_file_path`) and `--set key=value` overrides, and turns any
mistake into a one-line `ConfigError` that names the key and the nearest valid one.

Top-level keys of the user's thesis config (quant, test, onnx, quant_teacher, gpu_id, batch_size,
debug, pdb_debug, load_model, load_quant_model, load_teacher_model, config_file_path,
extra_quantizer_dict, output_layer_list, distill_config, distill_coeff) keep their names and
meanings; everything else lives in sections (data, model, optim, schedule, loss, val, output,
quant_scheme, distill, onnx_export, deploy) whose defaults reproduce the authors' recipe.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from helpers.names import nearest, validation_error_line
from helpers.text_input import TextInputError, parse_yaml, read_yaml
from quant.scheme import QuantSchemeConfig


MAX_MODEL_WIDTH = 8.0


class ConfigError(ValueError):
    """A config mistake; the message is one line and names the key at fault."""


class Section(BaseModel):
    # nan/inf are refused everywhere: a nan loss weight or lr would only surface as a nan loss mid-run.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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
    """Where the data set lies, which pairs each split uses, and how training crops are drawn."""
    # sid: SID Sony (data/sid.py); mcr: the DBF/DBLE authors' MCR (data/mcr.py); pairs: your own camera's
    # short/long raw pairs listed in CSV files (data/pairs.py). docs/datasets.md says how to point at each.
    dataset: Literal["sid", "mcr", "pairs"] = "sid"
    root: str = "data/synthetic_sid"  # holds Sony/short, Sony/long and the Sony_*_list.txt files (SID)
    # null for real SID; a mapping here makes the run generate the stand-in at `root` if it is absent.
    synthetic: Optional[SyntheticDataConfig] = Field(default_factory=SyntheticDataConfig)
    train_list: str = "Sony_train_list.txt"  # SID list files, relative to root
    val_list: str = "Sony_val_list.txt"
    test_list: str = "Sony_test_list.txt"
    cache_dir: Optional[str] = None  # decoded-raw cache; default <root>/.decoded_cache
    patch_size: int = 512  # training crop, in raw pixels
    flip: bool = True  # random flips of training crops
    transpose: bool = False
    # Clip the amplified input at 1, as several published loaders do (DBF/DBLE and SID do not); set it
    # when loading weights trained that way.
    clip_input: bool = False
    # auto: from the CPUs this process may use (harness/setup.py: loader_workers); 0 = load in-process.
    num_workers: Union[int, Literal["auto"]] = "auto"
    decode_workers: int = 2
    # all: every pair of train_list; dble: the DBF/DBLE authors' 181 pairs (data/sid.py select_training_pairs)
    train_protocol: Literal["all", "dble"] = "all"
    # all: every pair; sid: the 93 `_00` pairs; dble: the authors' 50 `_00_0.1s` pairs
    val_protocol: Literal["all", "sid", "dble"] = "sid"
    test_protocol: Literal["all", "sid", "dble"] = "sid"
    exclude_misaligned: bool = True  # leave out SID's misaligned scenes (false: score them as the authors did)
    max_train_pairs: Optional[int] = None  # null: all; a number caps the split (debug, quick checks)
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
    """Training speed (harness/speed.py says what runs in which precision)."""
    mixed_precision: Literal["none", "bf16", "fp16"] = "none"  # fp16: CUDA only, with a GradScaler
    channels_last: bool = False
    compile: bool = False  # torch.compile of the training forward (not of validation)
    # DDP: null finds unused parameters only when a parameter gets no gradient (harness/distributed.py).
    find_unused_parameters: Optional[bool] = None


class ModelConfig(Section):
    """Which network: a registered name or the import path of your own (docs/plugins.md)."""
    # A name registered in models.MODELS, or package.module:ClassName of a network following
    # models/contract.py; checked (module imported, contract read) when the config loads.
    name: str = "dbf_dble"
    # channel multiplier; 1.0 = the published network. Bounded so that a slip (width: 100) is refused at
    # load instead of allocating a network 10^4 times the size.
    width: float = Field(1.0, gt=0, le=MAX_MODEL_WIDTH)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the network's constructor
    # Tracing hooks (models/tracing.py): functions kept as one graph node ("einops.rearrange") and
    # module classes kept opaque ("package.module:ClassName"), for networks torch.fx cannot trace.
    fx_wrap: list[str] = Field(default_factory=list)
    fx_leaf_modules: list[str] = Field(default_factory=list)

    @property
    def width_given(self) -> Optional[float]:
        """`width` when the config sets it, else None: a plug-in's own default then applies."""
        return self.width if "width" in self.model_fields_set else None

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

    @field_validator("fx_wrap", "fx_leaf_modules")
    @classmethod
    def _hooks_resolve(cls, value, info):
        from models.tracing import resolve_tracing_hooks
        if info.field_name == "fx_wrap":
            resolve_tracing_hooks(fx_wrap=value, where="model")
        else:
            resolve_tracing_hooks(fx_leaf_modules=value, where="model")
        return value


class OptimConfig(Section):
    """The Adam optimizer."""
    lr: float = Field(1e-5, gt=0)  # the authors' constant Adam lr
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: Optional[float] = Field(None, gt=0)  # max gradient norm; null = no clipping


class ScheduleConfig(Section):
    """How long training runs and how the learning rate moves."""
    # 0: no training. A quantized run is then post-training quantization (calibration only) and is
    # scored like any other, so a sweep variant `{schedule.epochs: 0}` puts PTQ beside QAT.
    epochs: int = Field(100, ge=0)
    iters_per_epoch: Optional[int] = None  # null: one pass over the training pairs
    scheduler: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = Field(30, ge=1)  # epochs, for scheduler: step
    gamma: float = Field(0.5, gt=0)  # lr factor per step, for scheduler: step
    min_lr: float = Field(0.0, ge=0)  # for scheduler: cosine
    grad_accum_steps: int = Field(1, ge=1)


class LossConfig(Section):
    """The task loss: L1 on each head, weighted. One weight per supervised network output
    (models/contract.py); unused outputs' weights are ignored."""
    mono_weight: float = Field(1.0, ge=0)  # L1 on the mono head (networks with one)
    rgb_weight: float = Field(1.0, ge=0)  # L1 on the RGB output
    raw_weight: float = Field(1.0, ge=0)  # L1 on the denoised packed raw (networks that declare a raw output)


class ValConfig(Section):
    """Validation and test scoring."""
    every: int = Field(1, ge=1)  # validate every N epochs (and always after the last)
    ssim: Literal["skimage", "gaussian"] = "skimage"
    # float: clipped float images; uint8: the DBF/DBLE authors' truncated 8-bit scoring (helpers/metrics.py)
    metric_precision: Literal["float", "uint8"] = "float"
    # null: whole frames (on a GPU, a frame that does not fit falls back to exact 512 tiles); else tiles
    # of this size (multiple of 32)
    tile_size: Optional[int] = None
    tile_overlap: int = 32  # pixels of context kept on each tile side
    # null: exact frame-wide channel-attention averages (4 short statistics passes + 1, see
    # harness/evaluate.py); 0: each tile averages over itself (one pass, about 0.03 dB off).
    tile_statistics_passes: Optional[int] = None

    @field_validator("tile_size")
    @classmethod
    def _tile_multiple_of_32(cls, value):
        if value is not None and (value <= 0 or value % 32):
            raise ValueError("must be a positive multiple of 32")
        return value


class OutputConfig(Section):
    """Where a run writes its results and artefacts."""
    results_dir: str = "results"  # a run writes <results_dir>/<experiment>/
    # Full-precision weights (<experiment>.pth / .safetensors) and ONNX exports (<experiment>/).
    artifacts_dir: str = "onnx"
    experiment: Optional[str] = None  # null: the config file's name
    keep_best: int = Field(1, ge=1)  # best checkpoints kept
    tensorboard: bool = True  # scalars under <run>/tensorboard
    save_images: bool = False  # PNG outputs of the test split


class DistillConfig(Section):
    """Distillation from the teacher (quant_teacher: true; layers and coefficients are top-level keys)."""
    feature_loss: Literal["mse", "l1", "scale_invariant"] = "mse"


class OnnxExportConfig(Section):
    """The ONNX export (onnx: true or tools/export_onnx.py)."""
    opset: Optional[int] = None  # null: 17, or 21 when a quantizer is wider than 8 bits or a weight 4-bit
    height: int = 64  # example input height used for the export and its checks
    width: int = 64  # example input width
    # Activations held in 16-bit types (10-bit special layers): round = Mul/Clip/Round/Mul (same values,
    # computed right by every runtime here), qdq = uint16/int16 QuantizeLinear/DequantizeLinear pairs.
    wide_activations: Literal["round", "qdq"] = "round"


class DeployConfig(Section):
    """Which runtimes run an exported model (deploy/runtimes.py): the export checks each one against
    the fake-quantized PyTorch model and times it; enhance.py picks the fastest that passed."""
    runtime: Union[str, list[str]] = Field(default_factory=lambda: ["onnxruntime", "openvino"])
    latency_size: int = Field(256, ge=32)  # the export report's timing input (square, multiple of 32)
    latency_runs: int = Field(5, ge=0)  # interleaved rounds; 0 = no timing in the report

    @field_validator("runtime")
    @classmethod
    def _known_runtimes(cls, value):
        from deploy.runtimes import normalise_runtimes
        return normalise_runtimes(value)

    @field_validator("latency_size")
    @classmethod
    def _multiple_of_32(cls, value):
        if value % 32:
            raise ValueError(f"must be a multiple of 32, got {value}")
        return value


class SpecialLayers(Section):
    """Per-layer bits: `special_layer` maps `input_layer` or a traced module name to weight/activation bits."""
    model_config = ConfigDict(extra="forbid")
    special_layer: dict[str, Any] = Field(default_factory=dict)


class Config(Section):
    # The user's own top-level keys (their meaning: docs/config.md, generated from these comments).
    quant: bool = False  # quantization-aware training (MQBench); false = the full-precision run
    test: bool = False  # evaluate only (the run's best checkpoint, else load_model)
    onnx: bool = False  # export ONNX (FP32 + QDQ) of the best checkpoint at the end
    quant_teacher: bool = False  # distil from the full-precision teacher load_teacher_model
    gpu_id: int = Field(0, ge=0)  # CUDA device index when device is auto or cuda
    batch_size: int = Field(24, ge=1)  # the global batch (DDP: each process takes batch_size / N)
    debug: bool = False  # shrink every stage to seconds: a smoke test of the same code path
    pdb_debug: bool = False  # open the post-mortem debugger on an error
    load_model: Optional[str] = None  # float weights of the student (.pth or .safetensors)
    load_quant_model: Optional[str] = None  # a quantized checkpoint to continue from
    load_teacher_model: Optional[str] = None  # float weights of the distillation teacher
    config_file_path: Union[str, list[str], None] = None  # base file(s) this file overrides
    extra_quantizer_dict: SpecialLayers = Field(default_factory=SpecialLayers)  # per-layer bits (special_layer)
    output_layer_list: list[str] = Field(default_factory=list)  # extra layers exposed as outputs
    distill_config: list[str] = Field(default_factory=list)  # layers (traced names) distilled from the teacher
    distill_coeff: Union[float, list[float]] = Field(default_factory=list)  # one number: same for every layer

    # Harness keys.
    device: str = "auto"  # auto | cpu | cuda | cuda:N ; auto = CUDA (gpu_id) when present, else CPU
    seed: int = 0  # data order, crops and initialisation
    allow_random_init: bool = False  # quantized training from random weights is refused unless true
    quantize_output: bool = False
    # Reproducible CUDA runs (harness/speed.py: make_deterministic); costs speed (docs/performance.md).
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
    deploy: DeployConfig = Field(default_factory=DeployConfig)

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
        loaded = read_yaml(path, "config file")
    except TextInputError as error:
        raise ConfigError(str(error)) from None
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
    # The user writes base paths relative to the repository root (`./configfile/aba_config.yaml`),
    # usually running from there; the root itself is tried too, so the installed lowlight-* commands
    # work from any folder. Paths relative to the including file are accepted as well.
    for candidate in (Path(name), including.parent / name, Path(__file__).resolve().parents[1] / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config_file_path in {including}: file not found: {name}")


def load_with_bases(path: Path, seen: tuple = ()) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"config_file_path: {path} includes itself (cycle {' -> '.join(map(str, seen))})")
    raw = _read_yaml(path)
    bases = raw.get("config_file_path") or []
    bases = [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, list) and all(isinstance(base, str) and base for base in bases)):
        raise ConfigError(f"{path}: config_file_path: expected a file path or a list of them, got {bases!r}")
    merged: dict = {}
    for base in bases:
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
        try:
            value = parse_yaml(text, f"--set {dotted.strip()}", show_line=False) if text.strip() else None
        except TextInputError as error:
            raise ConfigError(f"{error}; write the value as YAML, e.g. [1, 2] or 'text'") from None
    node = raw
    keys = str(dotted).strip().split(".")
    if not all(key.strip() for key in keys):
        raise ConfigError(f"--set {dotted!r}: not a dotted config key (e.g. --set schedule.epochs=3)")
    for depth, key in enumerate(keys[:-1], start=1):
        if key in node and node[key] is not None and not isinstance(node[key], dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:depth])} is a value ({node[key]!r}), not a section "
                              "with keys")
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
    dumped = config.model_dump(mode="json")
    if config.model.width_given is None:
        # Unset, the network keeps its constructor's default; written out, a reload would pass it.
        dumped["model"].pop("width", None)
    return yaml.safe_dump(dumped, sort_keys=False)
