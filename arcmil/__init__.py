"""arcmil: Stage-3 document classification with Multiple Instance Learning."""
__version__ = "0.1.0"

from arcmil.api import MILClassifier  # noqa: E402
from arcmil.data import BagSet, load_bags, save_bags  # noqa: E402
from arcmil.models import build_model, model_names  # noqa: E402

__all__ = ["BagSet", "MILClassifier", "__version__", "build_model", "load_bags", "model_names", "save_bags"]
