"""arcmil: Stage-3 document classification with Multiple Instance Learning.

The public names below are imported on first use, so that ``arcmil --help`` and a bad flag answer
without importing torch, scikit-learn or pandas."""
import importlib

__version__ = "0.1.0"

_PUBLIC = {"MILClassifier": "arcmil.api", "BagSet": "arcmil.data", "load_bags": "arcmil.data",
           "save_bags": "arcmil.data", "build_model": "arcmil.models", "model_names": "arcmil.models"}


def __getattr__(name: str):
    """A public name (imported on first use, then cached) or a submodule (``arcmil.models``)."""
    target = _PUBLIC.get(name, f"{__name__}.{name}")
    try:
        if name.startswith("_"):
            raise ModuleNotFoundError(name=target)
        module = importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name != target:
            raise
        raise AttributeError(f"module 'arcmil' has no attribute {name!r}") from None
    value = getattr(module, name) if name in _PUBLIC else module
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_PUBLIC})


__all__ = ["BagSet", "MILClassifier", "__version__", "build_model", "load_bags", "model_names", "save_bags"]
