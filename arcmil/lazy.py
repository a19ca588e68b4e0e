"""Package attributes resolved on first use (PEP 562), so that importing a package imports nothing
heavy until one of its names is used (``arcmil --help`` never imports torch)."""
from __future__ import annotations

import importlib


def lazy_attributes(package: str, namespace: dict, names: dict[str, str]):
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``names`` maps each public name to the module
    that defines it; any other name is a submodule of ``package``. What is resolved is cached in
    ``namespace`` (the package's globals), so each name is looked up once."""

    def __getattr__(name: str):
        target = names.get(name, f"{package}.{name}")
        try:
            if name.startswith("_"):  # dunders (copy, pickle, inspect probe them) are never submodules
                raise ModuleNotFoundError(name=target)
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name != target:  # a submodule that exists but lacks one of its own dependencies
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = value = getattr(module, name) if name in names else module
        return value

    def __dir__():
        return sorted({*namespace, *names})

    return __getattr__, __dir__
