"""Networks chosen by `model.name` in the config: a registered name below, or an import path
`package.module:ClassName` of any network that follows models/contract.py (`model.kwargs` go to its
constructor; `model.width` to networks whose constructor takes `width`)."""
import functools
import inspect
from typing import Optional

from models.contract import check_declared, check_outputs, message_prefix, named_outputs
from models.dbf_dble import DBFDBLE
from helpers.names import nearest
from models.plugins import is_import_path, resolve_import_path
from models.sid_unet import SIDUNet
from models.tracing import set_tracing_hooks

# The one list of built-in names; harness/config.py validates model.name against it.
MODELS = {"dbf_dble": DBFDBLE, "sid_unet": SIDUNet}


def resolve_network(name: str, where: str = "model.name") -> type:
    """The network class of a registered name or an import path, its contract declarations checked.
    Imports the plug-in's module but builds nothing. `where` prefixes error messages."""
    if not isinstance(name, str):
        raise ValueError(f"{message_prefix(where)}expected a name or package.module:ClassName, "
                         f"got {type(name).__name__}")
    if is_import_path(name):
        network_class = resolve_import_path(name, where)
    elif name in MODELS:
        network_class = MODELS[name]
    else:
        close = nearest(name, MODELS)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{message_prefix(where)}unknown model {name!r}; {hint}choose one of {sorted(MODELS)} "
                         "or give package.module:ClassName")
    check_declared(network_class, where)
    return network_class


def _label(where, key) -> str:
    return f"{where}.{key}: " if where else ""


def check_width(network_class: type, width: Optional[float], where: str = "model") -> None:
    """`model.width` reaches networks whose constructor takes `width`; elsewhere only 1.0 is valid."""
    if width is not None and width != 1.0 and "width" not in inspect.signature(network_class).parameters:
        raise ValueError(f"{_label(where, 'width')}{network_class.__name__} takes no width argument; "
                         "set its size through model.kwargs")


def check_kwargs(network_class: type, kwargs, where: str = "model") -> None:
    """Every key is an argument of the constructor, and every argument without a default is given."""
    parameters = inspect.signature(network_class).parameters
    name = network_class.__name__
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs or {}:
        if key not in named and not accepts_any:
            close = nearest(key, named)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{_label(where, 'kwargs')}{name} has no argument {key!r}; {hint}"
                             f"its arguments: {', '.join(named) or 'none'}")
    missing = [n for n in named if parameters[n].default is inspect.Parameter.empty
               and n not in (kwargs or {}) and n != "width"]
    if missing:
        raise ValueError(f"{_label(where, 'kwargs')}{name} needs {', '.join(missing)}")


def constructor_arguments(network_class: type, width: Optional[float] = None, kwargs=None,
                          where: str = "model") -> dict:
    """Keyword arguments for the network's constructor: `kwargs`, plus `width` where it takes one and
    it was given (None: the constructor's own default, which may not be a channel multiplier)."""
    check_width(network_class, width, where)
    check_kwargs(network_class, kwargs, where)
    arguments = dict(kwargs or {})
    if width is not None and "width" in inspect.signature(network_class).parameters:
        arguments.setdefault("width", width)
    return arguments


def _arguments_text(arguments: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in arguments.items()) or "no arguments"


def build_model(name: str, width: Optional[float] = None, kwargs=None, check: bool = True, fx_wrap=(),
                fx_leaf_modules=()):
    """Build the network and (with `check`) run one small forward to check its declared outputs.
    `width`: None passes none (the constructor's default); `fx_wrap` / `fx_leaf_modules`: tracing
    hooks stored on the model (models/tracing.py). Any constructor failure is one ValueError line
    naming the class and the arguments it got."""
    network_class = resolve_network(name)
    arguments = constructor_arguments(network_class, width, kwargs)
    try:
        model = network_class(**arguments)
    except Exception as error:  # noqa: BLE001 - the user's constructor: name it and what it was given
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"model: {network_class.__name__}({_arguments_text(arguments)}) failed "
                         f"({type(error).__name__}: {message}); check model.kwargs / model.width") from None
    set_tracing_hooks(model, fx_wrap, fx_leaf_modules)
    if check:
        check_outputs(model, f"model.name {name}")
    return model


def input_kind(name: str) -> str:
    """'mosaic' or 'packed': what the data loader must give the network, without building it."""
    return resolve_network(name).input_kind


@functools.lru_cache(maxsize=None)
def declared_outputs(name: str) -> tuple:
    """The `outputs` a network declares (models/contract.py), without building it."""
    return tuple(resolve_network(name).outputs)


def model_outputs(model):
    """The `outputs` a built (or traced, or DDP-wrapped) network declares, None when it declares none."""
    while hasattr(model, "module") and not hasattr(model, "outputs"):
        model = model.module
    outputs = getattr(model, "outputs", None)
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else None


def split_outputs(outputs, declared=None):
    """(mono or None, rgb) of what the network returns, read by its declared outputs (a tuple is
    (mono, rgb) and a tensor rgb when `declared` is None, as DBF/DBLE and the U-Net return them)."""
    named = named_outputs(outputs, declared)
    return named.get("mono"), named["rgb"]
