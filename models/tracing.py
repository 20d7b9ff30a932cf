"""Quantization (MQBench), distillation taps and the Hessian ranking all need the network as a torch.fx
graph. When tracing fails, torch.fx's own error is a deep traceback from inside the tracer; this
module re-traces the network with a tracer that remembers which module it was in, and turns the
failure into one line naming that module and what to change.
"""
import contextlib

import torch.nn as nn


class UntraceableNetworkError(ValueError):
    """torch.fx cannot trace the network; the message is one line naming the module at fault."""


ADVICE = ("make it traceable: replace Python if/for/while on tensor values with tensor ops (torch.where, "
          "masks, fixed loop counts), or move that code into a free function decorated with torch.fx.wrap "
          "so the trace keeps it as one opaque call (its inside is then not quantized)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def failing_module(model: nn.Module):
    """(module path, module, error) of the innermost module whose forward torch.fx could not trace,
    with MQBench's tracer and leaf rules; path '' is the network's own forward. None when it traces."""
    from mqbench.prepare_by_platform import CustomedTracer

    class PathTracer(CustomedTracer):
        def __init__(self):
            super().__init__(customed_leaf_module=())
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

    tracer = PathTracer()
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
