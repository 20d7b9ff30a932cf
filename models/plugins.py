"""`model.name` as an import path: `package.module:ClassName` names a network class outside models/.

The module is imported from sys.path and the current directory; a mistake stops with one line and
the nearest names: sibling modules of the part that does not exist, or network classes of the
module when the class is missing.
"""
import importlib
import inspect
import os
import pkgutil
import sys

import torch.nn as nn

from helpers.names import nearest
from models.contract import message_prefix

SEPARATOR = ":"


def is_import_path(name: str) -> bool:
    return SEPARATOR in name


def _hint(name, choices) -> str:
    close = nearest(name, choices, count=3)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _submodules(package_name):
    if package_name is None:
        return [module.name for module in pkgutil.iter_modules()]
    package = sys.modules.get(package_name)
    return [module.name for module in pkgutil.iter_modules(getattr(package, "__path__", []))]


def _import(module_path: str, where: str):
    # A network file in the folder the user runs from is found although sys.path[0] is the entry
    # point's folder.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not (module_path == missing or module_path.startswith(missing + ".")):
            # The module exists but one of its own imports does not.
            raise ValueError(f"{message_prefix(where)}importing {module_path} failed: {error}") from None
        parent, _, leaf = missing.rpartition(".")
        where_looked = f"in package {parent}" if parent else "on sys.path or in the current directory"
        raise ValueError(f"{message_prefix(where)}no module {missing!r} {where_looked}"
                         f"{_hint(leaf, _submodules(parent or None))}") from None
    except Exception as error:  # noqa: BLE001 - the user's module failed while loading: say which
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{message_prefix(where)}importing {module_path} failed "
                         f"({type(error).__name__}: {message})") from None


def network_classes(module) -> list[str]:
    """Names of the nn.Module classes a module defines or imports."""
    return [name for name, value in vars(module).items()
            if inspect.isclass(value) and issubclass(value, nn.Module)]


def resolve_import_path(name: str, where: str = "model.name") -> type:
    """The class named by 'package.module:ClassName' (one-line ValueError with nearest names)."""
    module_path, _, class_name = name.partition(SEPARATOR)
    if not module_path or not class_name or SEPARATOR in class_name:
        raise ValueError(f"{message_prefix(where)}{name!r} is not of the form package.module:ClassName")
    module = _import(module_path, where)
    if not hasattr(module, class_name):
        classes = network_classes(module)
        close = _hint(class_name, classes)
        listed = close or (f"; network classes there: {', '.join(classes)}" if classes else "; it defines no nn.Module")
        raise ValueError(f"{message_prefix(where)}module {module_path} has no class {class_name!r}{listed}")
    return getattr(module, class_name)
