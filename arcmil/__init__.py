"""arcmil: Stage-3 document classification with Multiple Instance Learning.

The public names below are imported on first use, so that ``arcmil --help`` and a bad flag answer
without importing torch, scikit-learn or pandas."""
from arcmil.lazy import lazy_attributes

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_attributes(__name__, globals(), {
    "MILClassifier": "arcmil.api", "BagSet": "arcmil.data", "load_bags": "arcmil.data", "save_bags": "arcmil.data",
    "build_model": "arcmil.models", "model_names": "arcmil.models"})

__all__ = ["BagSet", "MILClassifier", "__version__", "build_model", "load_bags", "model_names", "save_bags"]
