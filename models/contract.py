"""What the harness needs to know about a network, built-in or plug-in (`model.name:
package.module:ClassName`). Two class attributes declare it; `check_declared` reads them when the
name is resolved (before any work) and `check_outputs` runs one small forward when the network is
built, so a network that breaks the contract stops with one line naming what is missing.

    class MyNet(nn.Module):
        input_kind = "mosaic"      # the data loader gives (B,1,H,W): the RGGB Bayer mosaic, black
                                   # level subtracted, amplified by the exposure ratio
                                   # or "packed": (B,4,H/2,W/2), channels R, G, B, G (SID's pack_raw)
        outputs = ("rgb",)         # forward returns RGB (B,3,H,W) at the mosaic's resolution

`outputs` names what forward returns, in order (a tuple when there is more than one). It must hold
"rgb" once; the others are any of
    "mono"    (B,1,H,W)     supervised against the ground truth's luma (loss.mono_weight)
    "raw"     (B,4,H/2,W/2) the denoised packed raw (R, G, B, G as pack_raw), supervised against the
                            long exposure's packed raw normalised like the input, without the ratio
                            (loss.raw_weight; the loader then also reads the long exposure's raw)
    "ignore"  anything: an output the harness has no target for (attention maps, features); the
              graph parts that reach only ignored outputs are reported (quant plan, Hessian ranking)
e.g. ("mono", "rgb") for DBF/DBLE, ("rgb", "raw") for a network with a denoised-raw head.

H and W are multiples of 32 (data.patch_size), so a network may pool up to 5 times on the mosaic.
For quantization, distillation and the Hessian ranking the network must also be traceable by
torch.fx (see models/tracing.py; `model.fx_wrap` / `model.fx_leaf_modules` keep untraceable code
opaque without editing it).
"""
import torch
import torch.nn as nn

from helpers.input_kinds import INPUT_KINDS
from helpers.names import nearest

SUPERVISED_OUTPUTS = ("rgb", "mono", "raw")
IGNORED_OUTPUT = "ignore"
OUTPUT_NAMES = SUPERVISED_OUTPUTS + (IGNORED_OUTPUT,)
# Small enough to cost nothing, large enough for 5 poolings of the mosaic (32 pixels -> 1).
CHECK_SIZE = 64


def message_prefix(where) -> str:
    """'<where>: ' in front of an error message, nothing when `where` is empty (pydantic names the key)."""
    return f"{where}: " if where else ""


def check_declared(network_class: type, where: str) -> None:
    """One-line ValueError unless `network_class` is an nn.Module declaring input_kind and outputs."""
    if not (isinstance(network_class, type) and issubclass(network_class, nn.Module)):
        raise ValueError(f"{message_prefix(where)}{network_class!r} is not a torch.nn.Module class")
    name = network_class.__name__
    kind = getattr(network_class, "input_kind", None)
    if kind is None:
        raise ValueError(f"{message_prefix(where)}{name} declares no input_kind; add the class attribute "
                         f"input_kind = 'mosaic' (B,1,H,W) or 'packed' (B,4,H/2,W/2) (see models/contract.py)")
    if kind not in INPUT_KINDS:
        raise ValueError(f"{message_prefix(where)}{name}.input_kind is {kind!r}; use 'mosaic' or 'packed' "
                         "(see models/contract.py)")
    outputs = getattr(network_class, "outputs", None)
    if outputs is None:
        raise ValueError(f"{message_prefix(where)}{name} declares no outputs; add the class attribute "
                         "outputs = ('rgb',), ('mono', 'rgb') or e.g. ('rgb', 'raw') (see models/contract.py)")
    problem = outputs_problem(outputs)
    if problem:
        raise ValueError(f"{message_prefix(where)}{name}.outputs is {outputs!r}: {problem} (see models/contract.py)")


def outputs_problem(outputs) -> str:
    """Why a declared `outputs` is not valid, or '' when it is."""
    if isinstance(outputs, str) or not isinstance(outputs, (tuple, list)) or not outputs:
        return "give a tuple of output names such as ('rgb',) or ('rgb', 'raw')"
    for output in outputs:
        if output not in OUTPUT_NAMES:
            close = nearest(str(output), OUTPUT_NAMES)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return f"unknown output {output!r}; {hint}names: {', '.join(OUTPUT_NAMES)}"
    supervised = [o for o in outputs if o != IGNORED_OUTPUT]
    if len(set(supervised)) != len(supervised):
        return "each of rgb, mono, raw may appear once"
    if "rgb" not in outputs:
        return "the harness scores 'rgb': declare which output it is"
    return ""


def named_outputs(returned, declared) -> dict:
    """{name: tensor} of what forward returned, by the declared `outputs`; ignored outputs are left out.
    Without a declaration (None) a tuple is read as (mono, rgb) and a tensor as rgb, as DBF/DBLE and the
    U-Net return them."""
    tensors = tuple(returned) if isinstance(returned, (tuple, list)) else (returned,)
    if declared is None:
        declared = ("mono", "rgb") if len(tensors) == 2 else ("rgb",)
    declared = tuple(declared)
    if len(tensors) != len(declared):
        raise ValueError(f"the network returned {len(tensors)} outputs but declares outputs = {declared}")
    return {name: tensor for name, tensor in zip(declared, tensors) if name != IGNORED_OUTPUT}


def example_input(input_kind: str, size: int = CHECK_SIZE, batch: int = 1) -> torch.Tensor:
    """A random network input of the declared kind for a size x size mosaic."""
    if input_kind == "packed":
        return torch.rand(batch, 4, size // 2, size // 2)
    return torch.rand(batch, 1, size, size)


def _shape(value) -> str:
    if isinstance(value, torch.Tensor):
        return "x".join(map(str, value.shape))
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(_shape(v) for v in value)})"
    return type(value).__name__


def check_outputs(model: nn.Module, where: str) -> None:
    """Run `model` once on a small input of its declared kind and check what it returns against its
    declared outputs; one-line ValueError naming the difference."""
    name = type(model).__name__
    kind, outputs = model.input_kind, tuple(model.outputs)
    inputs = example_input(kind)
    try:
        parameter = next(model.parameters())
        inputs = inputs.to(parameter.device, parameter.dtype)
    except StopIteration:
        pass
    was_training = model.training
    model.eval()  # no batch-norm statistics or dropout touched by the check
    try:
        with torch.no_grad():
            returned = model(inputs)
    except Exception as error:  # noqa: BLE001 - the user's forward: name it and the input it got
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{message_prefix(where)}{name}.forward failed on a {kind} input of shape {_shape(inputs)} "
                         f"({type(error).__name__}: {message})") from None
    finally:
        model.train(was_training)
    half = CHECK_SIZE // 2
    expected = {"mono": (1, CHECK_SIZE, CHECK_SIZE), "rgb": (3, CHECK_SIZE, CHECK_SIZE), "raw": (4, half, half)}
    wanted = " and ".join(f"{o} (B,{','.join(map(str, expected[o]))})" for o in outputs if o in expected)
    tensors = returned if isinstance(returned, (tuple, list)) else (returned,)
    if len(tensors) != len(outputs) or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise ValueError(f"{message_prefix(where)}{name} declares outputs = {outputs} but returned {_shape(returned)}; "
                         f"return {'a tuple (' + ', '.join(outputs) + ')' if len(outputs) > 1 else 'the RGB tensor'}")
    for output, tensor in zip(outputs, tensors):
        if output in expected and tuple(tensor.shape[1:]) != expected[output]:
            raise ValueError(f"{message_prefix(where)}{name} returned {output} of shape {_shape(tensor)} for a "
                             f"{CHECK_SIZE}x{CHECK_SIZE} mosaic ({kind} input {_shape(inputs)}); the contract wants "
                             f"{wanted} (see models/contract.py)")
