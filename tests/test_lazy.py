"""The packages' names resolve on first use (arcmil/lazy.py): public names, submodules, clear errors."""
import subprocess
import sys

import pytest

import arcmil
import arcmil.models


def test_public_names_and_submodules_resolve_and_are_cached():
    assert arcmil.models.TransMIL is arcmil.models.transmil.TransMIL
    assert arcmil.build_model is arcmil.models.build_model and arcmil.BagSet is arcmil.data.BagSet
    assert vars(arcmil.models)["TransMIL"] is arcmil.models.TransMIL  # looked up once
    assert {"MILClassifier", "BagSet"} <= set(dir(arcmil)) and set(arcmil.models.__all__) <= set(dir(arcmil.models))


def test_unknown_and_private_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="module 'arcmil.models' has no attribute 'NoSuchModel'"):
        arcmil.models.NoSuchModel  # noqa: B018
    assert not hasattr(arcmil, "__wrapped__") and not hasattr(arcmil, "no_such_module")


def test_a_submodule_missing_its_own_dependency_says_which():
    """torch made unimportable: the model class's import fails naming torch, not as a missing attribute."""
    probe = ("import sys\nsys.modules['torch'] = None\nimport arcmil.models\n"
             "try:\n    arcmil.models.TransMIL\nexcept ModuleNotFoundError as exc:\n    print(exc.name)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "torch"
