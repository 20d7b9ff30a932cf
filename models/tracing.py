"""Quantization (MQBench), distillation taps and the Hessian ranking all need the network as a torch.fx
graph, and all of them trace it with `make_tracer(model)`. When tracing fails, torch.fx's own error is
a deep traceback from inside the tracer; this module re-traces the network with a tracer that
remembers which module it was in, and turns the failure into one line naming that module and what
to change.

Tracing hooks let authors' code run unedited (config keys `model.fx_wrap`, `model.fx_leaf_modules`,
or class attributes of the same names on the network):

* `fx_wrap`: functions kept as one graph node, not traced into, given as import paths
  ("einops.rearrange", "mypackage.blocks:window_partition"). The call is kept whether the network's
  file imports the function (`from einops import rearrange`) or its module (`einops.rearrange(...)`).
* `fx_leaf_modules`: module classes kept opaque ("mypackage.attention:WindowAttention"): one node
  per call, its inside neither traced nor quantized.

`set_tracing_hooks(model, fx_wrap, fx_leaf_modules)` resolves them (one-line error with the nearest
names) and stores them on the model, so every later trace of it, and of its prepared copy, uses them.
"""
import contextlib
import importlib
import inspect

import torch.nn as nn

from helpers.names import nearest


class UntraceableNetworkError(ValueError):
    """torch.fx cannot trace the network; the message is one line naming the module at fault."""


ADVICE = ("keep that code opaque without editing it: list the function it calls in model.fx_wrap (e.g. "
          "'einops.rearrange') or its module class in model.fx_leaf_modules (e.g. 'package.module:ClassName'); "
          "or make it traceable: replace Python if/for/while on tensor values with tensor ops (torch.where, "
          "masks, fixed loop counts), or move it into a free function decorated with torch.fx.wrap")
WRAP_KEY, LEAF_KEY = "fx_wrap", "fx_leaf_modules"


def _resolve_path(path, where: str):
    """The object named by 'package.module.name' or 'package.module:name' (one-line ValueError)."""
    if not isinstance(path, str):
        return path  # already a function or class
    module_path, separator, attribute = path.partition(":")
    if not separator:
        module_path, _, attribute = path.rpartition(".")
    if not module_path or not attribute:
        raise ValueError(f"{where}: {path!r} is not an import path such as 'einops.rearrange' or "
                         "'package.module:ClassName'")
    try:
        module = importlib.import_module(module_path)
    except ImportError as error:
        raise ValueError(f"{where}: cannot import {module_path!r} for {path!r} ({error})") from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            close = nearest(part, names)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: {module_path} has no {attribute!r}{hint}")
        target = getattr(target, part)
    return target


def resolve_tracing_hooks(fx_wrap=(), fx_leaf_modules=(), where: str = "model") -> tuple[tuple, tuple]:
    """(functions, module classes) of the import paths; one-line ValueError naming the bad entry."""
    functions, classes = [], []
    for index, path in enumerate(fx_wrap or ()):
        function = _resolve_path(path, f"{where}.{WRAP_KEY}[{index}]")
        if not callable(function) or inspect.isclass(function):
            raise ValueError(f"{where}.{WRAP_KEY}[{index}]: {path!r} is not a function; module classes go "
                             f"in {where}.{LEAF_KEY}")
        functions.append(function)
    for index, path in enumerate(fx_leaf_modules or ()):
        klass = _resolve_path(path, f"{where}.{LEAF_KEY}[{index}]")
        if not (inspect.isclass(klass) and issubclass(klass, nn.Module)):
            raise ValueError(f"{where}.{LEAF_KEY}[{index}]: {path!r} is not an nn.Module class; functions go "
                             f"in {where}.{WRAP_KEY}")
        classes.append(klass)
    return tuple(functions), tuple(classes)


def set_tracing_hooks(model: nn.Module, fx_wrap=(), fx_leaf_modules=(), where: str = "model") -> nn.Module:
    """Store the resolved hooks on `model` (added to any the class declares); returns the model."""
    declared = resolve_tracing_hooks(getattr(model, WRAP_KEY, ()), getattr(model, LEAF_KEY, ()),
                                     type(model).__name__)
    given = resolve_tracing_hooks(fx_wrap, fx_leaf_modules, where)
    # Plain attributes (not modules or tensors): nn.Module keeps them as they are, deep copies too.
    object.__setattr__(model, WRAP_KEY, tuple(dict.fromkeys(declared[0] + given[0])))
    object.__setattr__(model, LEAF_KEY, tuple(dict.fromkeys(declared[1] + given[1])))
    return model


def tracing_hooks(model) -> tuple[tuple, tuple]:
    """(functions, module classes) the model asks tracers to keep opaque."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return resolve_tracing_hooks(getattr(model, WRAP_KEY, ()), getattr(model, LEAF_KEY, ()), type(model).__name__)


def copy_tracing_hooks(source: nn.Module, target: nn.Module) -> None:
    """Carry the hooks to a traced copy (torch.fx's GraphModule drops attributes)."""
    functions, classes = tracing_hooks(source)
    object.__setattr__(target, WRAP_KEY, functions)
    object.__setattr__(target, LEAF_KEY, classes)


def make_tracer(model=None, tracer_class=None):
    """MQBench's tracer (its leaf rules), keeping the model's fx_wrap functions and fx_leaf_modules
    classes opaque. `tracer_class`: a subclass of MQBench's CustomedTracer to instantiate."""
    from mqbench.prepare_by_platform import CustomedTracer
    functions, classes = tracing_hooks(model) if model is not None else ((), ())
    tracer = (tracer_class or CustomedTracer)(customed_leaf_module=classes, autowrap_functions=functions)
    # autowrap_functions patches the names the traced files import (`from einops import rearrange`);
    # patching the functions' own modules too keeps calls written `einops.rearrange(...)`. torch.fx
    # has no public switch for this; without the attribute only the first spelling is kept.
    search = getattr(tracer, "_autowrap_search", None)
    if isinstance(search, list):
        for function in functions:
            module = inspect.getmodule(function)
            if module is not None and module not in search:
                search.append(module)
    return tracer


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def failing_module(model: nn.Module):
    """(module path, module, error) of the innermost module whose forward torch.fx could not trace,
    with MQBench's tracer and leaf rules; path '' is the network's own forward. None when it traces."""
    from mqbench.prepare_by_platform import CustomedTracer

    class PathTracer(CustomedTracer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.stack, self.failed_in = [], None

        def call_module(self, module, forward, args, kwargs):
            self.stack.append((self.path_of_module(module), module))
            try:
                return super().call_module(module, forward, args, kwargs)
            except Exception:
                if self.failed_in is None:  # the innermost frame sees the error first
                    self.failed_in = self.stack[-1]
                raise
            finally:
                self.stack.pop()

    tracer = make_tracer(model, PathTracer)
    try:
        tracer.trace(model)
    except Exception as error:  # noqa: BLE001 - any failure of the trace is what we explain
        path, module = tracer.failed_in or ("", model)
        return path, module, error
    return None


def untraceable_message(model: nn.Module, path: str, module: nn.Module, error: BaseException) -> str:
    where = f"module '{path}' ({type(module).__name__})" if path else f"the forward of {type(model).__name__} itself"
    return (f"{type(model).__name__}: torch.fx cannot trace {where}: {_first_line(error)}; {ADVICE}")


def check_traceable(model: nn.Module) -> None:
    """Raise UntraceableNetworkError (one line) unless torch.fx traces `model` with MQBench's tracer."""
    found = failing_module(model)
    if found is not None:
        raise UntraceableNetworkError(untraceable_message(model, *found))


@contextlib.contextmanager
def explain_trace_failure(model: nn.Module):
    """Around code that traces `model`: a failure that comes from tracing becomes the one-line
    UntraceableNetworkError; any other error passes unchanged. Costs a second trace only on failure."""
    try:
        yield
    except UntraceableNetworkError:
        raise
    except Exception:
        found = failing_module(model)
        if found is None:
            raise
        raise UntraceableNetworkError(untraceable_message(model, *found)) from None
