"""arcmil: Stage-3 document classification with Multiple Instance Learning.

The public names below are imported on first use, so that ``arcmil --help`` and a bad flag answer
without importing torch, scikit-learn or pandas."""
import importlib

__version__ = "0.1.0"

_PUBLIC = {"MILClassifier": "arcmil.api", "BagSet": "arcmil.data", "load_bags": "arcmil.data",
           "save_bags": "arcmil.data", "build_model": "arcmil.models", "model_names": "arcmil.models"}


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'arcmil' has no attribute {name!r}")


__all__ = ["BagSet", "MILClassifier", "__version__", "build_model", "load_bags", "model_names", "save_bags"]
