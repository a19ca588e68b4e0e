"""Frozen hyper-parameter sets, one per model; ``tag()`` names a run as the design note does.

Beside each set, its hyper-parameter search space for ``arcmil tune`` (``SEARCH_SPACE``: name ->
``{"low", "high"[, "log" | "step"]}`` or ``{"choices"}``, the format ``--space`` YAML overrides) and when a
parameter matters at all (``SEARCH_WHEN``: name -> predicate on the config; others are not searched).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from arcmil.errors import ConfigError, check_choices

ATTENTIONS = ("full", "nystrom")
POS_ENCODINGS = ("sin", "learned", "none")
INITS = ("xavier", "torch")
POS_SCALINGS = ("constant", "content")
POOLS = ("attention", "topk")
CLASSIFIERS = ("logistic", "svm")
ENCODINGS = ("stats", "fisher")  # a classical model's bag encoding (arcmil.models.pooled_stats)
POOLED_STATS = ("mean", "max", "min", "std")  # the stats encoding, per feature


def _short(p: float) -> str:
    """0.1 -> '01', 0.25 -> '025', 0.0 -> '0' (the note's ``drop01``)."""
    return f"{p:g}".replace(".", "")


def _outputs(n_outputs: int) -> str:
    """The tag's suffix for a model of several outputs (none for the binary single logit)."""
    return f"_out{n_outputs}" if n_outputs > 1 else ""


def _class_attention(on: bool) -> str:
    """The tag suffix of one attention per class (which exists only with several outputs)."""
    return "_clsatt" if on else ""


# ``class_attention``: an attention pooler with one attention over the windows per class or label (weights
# (B, K, N), explanations per class) instead of one shared by all outputs; searched only beyond binary
CLASS_ATTENTION_SPACE = {"class_attention": {"choices": [False, True]}}
CLASS_ATTENTION_WHEN = {"class_attention": lambda c: c.n_outputs > 1}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class WindowMLPConfig:
    """Shared by the models that embed each window with an MLP before pooling. ``n_outputs``: logits
    per bag, 1 (binary) or the number of classes or labels (set from the data's label space)."""

    input_dim: int = 256
    hidden_dim: int = 128
    dropout_p: float = 0.1
    n_outputs: int = 1

    SEARCH_SPACE: ClassVar[dict] = {"hidden_dim": {"choices": [64, 128, 256]},
                                    "dropout_p": {"low": 0.0, "high": 0.5, "step": 0.05}}
    SEARCH_WHEN: ClassVar[dict] = {}

    def __post_init__(self):
        _check(self.input_dim > 0 and self.hidden_dim > 0, "input_dim and hidden_dim must be positive")
        _check(0.0 <= self.dropout_p < 1.0, f"dropout_p must be in [0, 1), got {self.dropout_p}")
        _check(self.n_outputs >= 1, f"n_outputs must be at least 1, got {self.n_outputs}")


@dataclass(frozen=True)
class AttentionMILConfig(WindowMLPConfig):
    """ABMIL baseline (Ilse et al. 2018): per-window MLP, attention pooling, linear classifier.
    ``class_attention``: one attention per class (see ``CLASS_ATTENTION``)."""

    gated: bool = False
    class_attention: bool = False

    SEARCH_SPACE: ClassVar[dict] = {**WindowMLPConfig.SEARCH_SPACE, **CLASS_ATTENTION_SPACE}
    SEARCH_WHEN: ClassVar[dict] = {**WindowMLPConfig.SEARCH_WHEN, **CLASS_ATTENTION_WHEN}

    def tag(self) -> str:
        return (f"abmil{'_gated' if self.gated else ''}_h{self.hidden_dim}_drop{_short(self.dropout_p)}"
                f"{_outputs(self.n_outputs)}{_class_attention(self.class_attention and self.n_outputs > 1)}")


@dataclass(frozen=True)
class InstanceMaxConfig(WindowMLPConfig):
    """mi-Net-style instance max pooling: the reference that obeys the standard MIL assumption."""

    def tag(self) -> str:
        return f"imax_h{self.hidden_dim}_drop{_short(self.dropout_p)}{_outputs(self.n_outputs)}"


@dataclass(frozen=True)
class TransformerConfig:
    """Shared by both Transformer models. ``max_len`` bounds only the ``learned`` position table;
    ``attention``: 'full' (exact) or 'nystrom' (linear-time, ``num_landmarks`` landmarks);
    ``init``: 'xavier' (the note's: Xavier-uniform input projection and output head, zero biases)
    or 'torch' (PyTorch's default Linear initialisation). ``pos_scale_by``: 'constant' adds the sinusoidal
    table times ``pos_scale``; 'content' scales it to ``pos_scale`` times each bag's RMS of projected
    windows, so the position-to-content ratio stays ``pos_scale`` whatever the input norm (docs/recipe.md:
    with ``pos_scale`` 2.5 it equals the default on unit windows and keeps order learnable under
    ``--normalize standardize``; not the default while integrated gradients lose completeness under it)."""

    input_dim: int = 256
    d_model: int = 128
    nhead: int = 4
    num_layers: int = 2
    dim_feedforward: int = 256
    dropout_p: float = 0.1
    pos_enc: str = "sin"
    pos_scale: float = 0.3
    pos_scale_by: str = "constant"
    init: str = "xavier"
    max_len: int = 512
    pooler_hidden: int = 128
    attention: str = "full"
    num_landmarks: int = 64
    n_outputs: int = 1

    SEARCH_SPACE: ClassVar[dict] = {
        "d_model": {"choices": [64, 128, 256]}, "nhead": {"choices": [2, 4, 8]}, "num_layers": {"low": 1, "high": 3},
        "dim_feedforward": {"choices": [128, 256, 512]}, "dropout_p": {"low": 0.0, "high": 0.3, "step": 0.05},
        "pooler_hidden": {"choices": [64, 128, 256]}, "num_landmarks": {"choices": [16, 32, 64]},
    }
    SEARCH_WHEN: ClassVar[dict] = {"num_landmarks": lambda c: c.attention == "nystrom",
                                   "pooler_hidden": lambda c: False}  # subclasses say when a pooler exists

    def __post_init__(self):
        check_choices(self, {"pos_enc": POS_ENCODINGS, "pos_scale_by": POS_SCALINGS, "init": INITS,
                             "attention": ATTENTIONS})
        _check(self.d_model % self.nhead == 0, f"d_model {self.d_model} must be divisible by nhead {self.nhead}")
        _check(self.num_layers >= 1, "num_layers must be at least 1")
        _check(self.num_landmarks >= 1, f"num_landmarks must be at least 1, got {self.num_landmarks}")
        _check(self.n_outputs >= 1, f"n_outputs must be at least 1, got {self.n_outputs}")
        _check(0.0 <= self.dropout_p < 1.0, f"dropout_p must be in [0, 1), got {self.dropout_p}")

    def body_tag(self) -> str:
        nystrom = f"_nys{self.num_landmarks}" if self.attention == "nystrom" else ""
        return (f"d{self.d_model}_h{self.nhead}_L{self.num_layers}_ff{self.dim_feedforward}"
                f"_drop{_short(self.dropout_p)}_{self.pos_enc}{nystrom}{_outputs(self.n_outputs)}")


@dataclass(frozen=True)
class TransformerMILConfig(TransformerConfig):
    """``pool='topk'``: the bag logit is the mean of the k highest window scores (the note's variant)."""

    pool: str = "attention"
    k: int = 2
    class_attention: bool = False

    SEARCH_SPACE: ClassVar[dict] = {**TransformerConfig.SEARCH_SPACE, "k": {"low": 1, "high": 8},
                                    **CLASS_ATTENTION_SPACE}
    SEARCH_WHEN: ClassVar[dict] = {**TransformerConfig.SEARCH_WHEN, "k": lambda c: c.pool == "topk",
                                   "pooler_hidden": lambda c: c.pool == "attention",
                                   "class_attention": lambda c: c.pool == "attention" and c.n_outputs > 1}

    def __post_init__(self):
        super().__post_init__()
        check_choices(self, {"pool": POOLS})
        _check(self.k >= 1, f"k must be at least 1, got {self.k}")
        _check(not (self.class_attention and self.pool == "topk"),
               "class_attention needs pool='attention' (top-k pooling scores each class already)")

    def tag(self) -> str:
        pool = f"topk{self.k}_" if self.pool == "topk" else ""
        return f"tmil_{pool}{self.body_tag()}{_class_attention(self.class_attention and self.n_outputs > 1)}"


@dataclass(frozen=True)
class TransMILConfig(TransformerConfig):
    """``dual=True``: CLS output concatenated with an attention-pooled bag vector (DSMIL-like)."""

    dual: bool = False

    SEARCH_WHEN: ClassVar[dict] = {**TransformerConfig.SEARCH_WHEN, "pooler_hidden": lambda c: c.dual}

    def tag(self) -> str:
        return f"transmil_{'dual' if self.dual else 'cls'}_{self.body_tag()}"


@dataclass(frozen=True)
class PooledStatsConfig:
    """A classical bag model: each bag's windows encoded as one vector, standardised on the training bags,
    and a scikit-learn classifier on it. ``encoding`` 'stats': per-feature statistics (``POOLED_STATS``);
    'fisher': the Fisher vector of a diagonal Gaussian mixture of ``n_components`` fitted on the training
    windows (arcmil.models.fisher), classified linearly. ``classifier`` 'logistic' (L2 logistic regression,
    inverse strength ``C``) or 'svm' (RBF support vector machine, ``C`` and kernel width ``gamma`` / number of
    features). Fitted by scikit-learn, not by epochs; ``n_support``: the support vectors the fit kept (set
    by fitting, 0 before; a checkpoint's buffers have that many rows)."""

    input_dim: int = 256
    classifier: str = "logistic"
    C: float = 1.0
    gamma: float = 1.0
    encoding: str = "stats"
    n_components: int = 2
    n_outputs: int = 1
    n_support: int = 0

    SEARCH_SPACE: ClassVar[dict] = {"C": {"low": 1e-3, "high": 1e3, "log": True},
                                    "gamma": {"low": 0.1, "high": 10.0, "log": True},
                                    "n_components": {"choices": [1, 2, 4, 8]}}
    SEARCH_WHEN: ClassVar[dict] = {"gamma": lambda c: c.classifier == "svm",
                                   "n_components": lambda c: c.encoding == "fisher"}
    FITTED_BY_ESTIMATOR: ClassVar[bool] = True  # no epochs: a search leaves the training settings alone

    def __post_init__(self):
        check_choices(self, {"classifier": CLASSIFIERS, "encoding": ENCODINGS})
        _check(self.input_dim > 0, "input_dim must be positive")
        _check(self.C > 0 and self.gamma > 0, f"C and gamma must be positive, got {self.C} and {self.gamma}")
        _check(self.n_outputs >= 1 and self.n_support >= 0, "n_outputs must be at least 1, n_support at least 0")
        _check(self.n_components >= 1, f"n_components must be at least 1, got {self.n_components}")
        _check(self.encoding == "stats" or self.classifier == "logistic",
               "the fisher encoding is classified linearly: classifier must be 'logistic'")

    @property
    def n_features(self) -> int:
        """The length of a bag's encoding."""
        return (len(POOLED_STATS) if self.encoding == "stats" else 2 * self.n_components) * self.input_dim

    def tag(self) -> str:
        if self.encoding == "fisher":
            return f"fisher_vector_k{self.n_components}_C{self.C:g}{_outputs(self.n_outputs)}"
        gamma = f"_g{self.gamma:g}" if self.classifier == "svm" else ""
        return f"pooled_{self.classifier}_C{self.C:g}{gamma}{_outputs(self.n_outputs)}"
