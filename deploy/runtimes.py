"""The runtimes that execute an exported ONNX model, behind one seam: `open_session(model, runtime)`
returns a Session whose `run(x)` maps one float32 input array to the graph's outputs, and whose
`info` says what ran it (runtime, version, device, inference precision). A third runtime is one
more entry in RUNTIMES.

- onnxruntime: CPUExecutionProvider; its graph optimizer fuses QDQ pairs into QLinear* kernels.
- openvino: reads the ONNX file directly (no IR step) and compiles it for its CPU plugin, whose
  low-precision transformations turn QDQ pairs into int8 kernels. Its inference precision
  (INFERENCE_PRECISION_HINT) decides what the unquantized parts run in: OpenVINO picks bf16 by
  itself on CPUs with bf16 instructions, which moves a float model's numbers by far more than an
  export check allows, so the precision is always set explicitly here ("f32" unless asked) and
  recorded in `info`.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

ModelSource = Union[str, os.PathLike, "onnx.ModelProto"]  # noqa: F821 - onnx is imported lazily
DEFAULT_PRECISION = "f32"
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")


@dataclass
class Session:
    run: Callable[[np.ndarray], list]  # input (B, C, H, W) float32 -> outputs in graph order
    info: dict
    output_names: list = field(default_factory=list)
    input_shape: list = field(default_factory=list)  # the graph input's shape, dynamic dims as names
    profile: Optional[Callable[[], list]] = None  # per-node rows after a run, where supported


def _model_path(model: ModelSource, folder: str) -> str:
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        return str(path)
    path = Path(folder) / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def _onnxruntime(model: ModelSource, threads: int = 0, precision: Optional[str] = None,
                 profile: bool = False, optimize: bool = True) -> Session:
    import onnxruntime as ort
    if precision not in (None, "f32"):
        raise ValueError(f"onnxruntime's CPU provider runs float parts in f32 only; asked for {precision}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Different input sizes in one session make the memory-pattern planner warn about buffers it
    # cannot reuse: expected with dynamic shapes, not a fault.
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if not isinstance(model, (str, os.PathLike)) else _model_path(model, "")
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> list:
        return session.run(None, {input_name: np.ascontiguousarray(x, dtype=np.float32)})

    info = {"runtime": "onnxruntime", "version": ort.__version__, "device": "CPUExecutionProvider",
            "precision": "f32", "threads": threads or "default"}
    return Session(run, info, [o.name for o in session.get_outputs()], list(session.get_inputs()[0].shape))


def _openvino(model: ModelSource, threads: int = 0, precision: Optional[str] = None,
              profile: bool = False, optimize: bool = True) -> Session:
    import openvino as ov
    precision = precision or DEFAULT_PRECISION
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"openvino precision {precision!r}: choose one of {', '.join(OPENVINO_PRECISIONS)}")
    core = ov.Core()
    with tempfile.TemporaryDirectory() as folder:
        graph = core.read_model(_model_path(model, folder))  # read fully: the file may go afterwards
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if profile:
        config["PERF_COUNT"] = "YES"
    if not optimize:
        # No low-precision transformations either: every Q/DQ runs as written (a reference run).
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(graph, "CPU", config)
    request = compiled.create_infer_request()
    count = len(compiled.outputs)

    def run(x: np.ndarray) -> list:
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return [request.get_output_tensor(i).data.copy() for i in range(count)]

    def counters() -> list:
        return [{"node": p.node_name, "type": p.node_type, "exec_type": p.exec_type,
                 "ms": p.real_time.total_seconds() * 1e3}
                for p in request.get_profiling_info() if p.status.name == "EXECUTED"]

    info = {"runtime": "openvino", "version": ov.__version__, "device": "CPU " + core.get_property("CPU", "FULL_DEVICE_NAME"),
            "precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),  # f32, bf16, f16
            "precision_asked": precision, "threads": threads or "default"}
    names = [sorted(o.get_names())[0] if o.get_names() else f"output{i}" for i, o in enumerate(compiled.outputs)]
    shape = [d.get_length() if d.is_static else "dynamic" for d in compiled.inputs[0].get_partial_shape()]
    return Session(run, info, names, shape, counters if profile else None)


RUNTIMES: dict[str, Callable[..., Session]] = {"onnxruntime": _onnxruntime, "openvino": _openvino}
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def check_runtime(name: str, what: str = "runtime ") -> str:
    """`name` if it is a known runtime, else ValueError naming the closest one."""
    if name not in RUNTIMES:
        from helpers.names import unknown_choice
        raise ValueError(unknown_choice(name, list(RUNTIMES), what))
    return name


def available(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(_MODULES[check_runtime(name)]) is not None


def runtime_version(name: str) -> str:
    import importlib
    return importlib.import_module(_MODULES[check_runtime(name)]).__version__


def open_session(model: ModelSource, runtime: str = "onnxruntime", threads: int = 0,
                 precision: Optional[str] = None, profile: bool = False, optimize: bool = True) -> Session:
    """A Session running `model` (a path or an onnx.ModelProto) in `runtime` on the CPU.
    precision: the inference precision of the float parts (openvino: f32, bf16 or f16; None = f32).
    optimize False: no fusions (Q/DQ run as written), to read intermediate tensors."""
    check_runtime(runtime)
    if not available(runtime):
        raise ValueError(f"runtime {runtime!r} is not installed; pip install {_MODULES[runtime]} "
                         "(requirements.txt names it) or choose one of "
                         f"{', '.join(r for r in RUNTIMES if available(r))}")
    try:
        return RUNTIMES[runtime](model, threads=threads, precision=precision, profile=profile, optimize=optimize)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as error:  # noqa: BLE001 - the runtimes' load errors (pybind, C++) share no base class
        if not isinstance(model, (str, os.PathLike)):
            raise
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise ValueError(f"{model}: not an ONNX model {runtime} can load ({lines[0]})") from None


def normalise_runtimes(value) -> list[str]:
    """A runtime name or a list of them -> a list of known names, in order, without repeats;
    None -> every runtime that is installed."""
    if value is None:  # every runtime installed
        return [name for name in RUNTIMES if available(name)]
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise ValueError(f"no runtime named; choose from {', '.join(RUNTIMES)}")
    seen = []
    for name in names:
        check_runtime(name)
        if name not in seen:
            seen.append(name)
    return seen


__all__ = ["RUNTIMES", "Session", "available", "check_runtime", "normalise_runtimes", "open_session",
           "runtime_version"]
