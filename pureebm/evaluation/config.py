"""What `pureebm eval` runs: its options and the classifier's, without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from pureebm.registry import DEFAULT_ROOT

# cnn-wide: the CNN at twice the width; cnn-bn4: the outside evaluation's four-layer CNN
VICTIMS = ("cnn", "cnn-wide", "cnn-bn4", "resnet18")


@dataclass(frozen=True)
class TrainSettings:
    architecture: str = "cnn"  # one of VICTIMS
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.2  # the one-cycle schedule's peak
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    one_offset: bool = False  # crop each batch at one offset instead of one per image
    seed: int = 0
    device: str = "auto"


# Victim recipes: how the victim (and the surrogate an attack crafts on) is built.
# "outside" is the outside evaluation's, given in full in its issue: the four-layer
# BatchNorm CNN with global max pooling, peak learning rate 0.1, one crop offset per batch.
RECIPES: dict[str, dict[str, object]] = {
    "standard": {},
    "outside": {"architecture": "cnn-bn4", "lr": 0.1, "one_offset": True},
}
SURROGATE_EPOCHS = {"outside": 8}  # the recipe's surrogate trains this long (else the victim's)


ATTACKS = (
    "narcissus",
    "narcissus-x3",
    "narcissus-grid",
    "narcissus-adaptive",
    "narcissus-pgd",
    "gradient-matching",
    "patch",
    "patch-clean",
    "blend",
)
UNBOUNDED_ATTACKS = ("patch", "patch-clean", "blend")  # no L-inf strength: --eps leaves them alike


@dataclass
class EvalConfig:
    train: str
    test: str | None = None  # None: a stratified split of `train`
    test_fraction: float = 0.2
    limit: int | None = None  # use only the first N training images
    attack: str = "narcissus"
    eps: list[float] = field(default_factory=lambda: [8 / 255, 16 / 255])  # trigger strengths
    poison_fraction: float = 0.01  # of the whole training set
    restarts: int = 4  # gradient matching's brews per poison set, the best aligned kept
    trigger_steps: int = 300  # Narcissus's optimisation steps: fewer leave a less saturated trigger
    targets: list[int] = field(default_factory=lambda: [0, 1, 2])
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # attack and classifier seeds
    defences: list[str] = field(default_factory=lambda: ["none", "jpeg:75", "pureebm"])
    sweep: list[int] = field(default_factory=list)  # PureEBM steps to sweep, e.g. 0 50 150
    classifier: TrainSettings = field(default_factory=TrainSettings)
    recipe: str = "standard"  # the victim recipe (RECIPES) the classifier settings came from
    purify_seed: int = 0  # the purifiers' own noise seed
    model: str | None = None  # the EBM; None: the registry's default
    ddpm_model: str | None = None  # the DDPM of 'pureddpm[:T]' and 'ddpm' rows
    registry: str = str(DEFAULT_ROOT)
    url: str | None = None  # purify through a running service instead of in-process
    out: str = "runs/eval"
    split_seed: int = 0
    defend_test: bool = True  # also the '+test' rows: test images purified at inference
    purify_batch: int = 64  # images per purifier batch (a GPU takes far more)
    cache: str | None = None  # folder of defended sets shared by evaluations side by side

    def strengths(self) -> list[float]:
        """The strengths to run: an attack with no L-inf bound is the same at every one, so once."""
        return self.eps[:1] if self.attack in UNBOUNDED_ATTACKS else self.eps
