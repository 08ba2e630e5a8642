"""Purifier specs: each family's parameters, defined once, and the union of them.

A family (Langevin, PureDDPM, Reps, JPEG, ...) is one module of this package that
defines a ``PurifierSpec`` subclass and registers it with ``@register``. From the
registered specs come, with no other edit:

- ``Spec``: the pydantic discriminated union (on ``family``) that a preset, a job
  record and a report store;
- ``Overrides``: every family's fields, each optional, plus ``purifier`` (the
  family) and ``filter``: the API's form, the CLI's options and the evaluation's
  defences;
- ``resolve``: the one place where a request meets a model's preset.

No torch here: the API imports this. A spec builds its purifier (``build``), which
imports the numerical code only then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
)
from pydantic.fields import FieldInfo

if TYPE_CHECKING:
    from pureebm.purifiers.base import ModelLoader, Purifier
    from pureebm.registry.records import Manifest


def check_filter(value: float | str) -> float | str:
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError("filter is a fraction 0 < k <= 1, 'auto', or 'none'")
    return value


def parse_filter(value: Any) -> Any:
    """'none' is no filter (as is 1: every image); a number given as text is a float."""
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return 1.0
        if value != "auto":
            try:
                return float(value)
            except ValueError:
                pass
    return value


FILTER_HELP = (
    "energy-ranked purification (pureebm.filtering): purify only the fraction k "
    "(0 < k <= 1) of images of highest score, or 'auto': those above the model's calibrated "
    "threshold; the others pass through byte-identical. 1 or 'none': every image"
)
# what a request may give, validators included ('none', the fraction's bounds)
FILTER_INPUT_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        {"type": "string", "enum": ["auto", "none"]},
    ]
}
Filter = Annotated[
    float | Literal["auto"],
    BeforeValidator(parse_filter),
    AfterValidator(check_filter),
    WithJsonSchema(FILTER_INPUT_SCHEMA, mode="validation"),
    Field(description=FILTER_HELP),
]


class PurifierSpec(BaseModel):
    """One family's parameters. A subclass declares ``family: Literal["name"]``, its
    fields with bounds and descriptions, and ``build``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str
    needs_model: ClassVar[bool] = True  # runs a registry entry (the job's ``model``)
    score: ClassVar[str | None] = None  # what its per-image score is; None: it gives none

    @classmethod
    def defaults(cls, model: Manifest | None, load: Callable[[str], Manifest]) -> dict[str, Any]:
        """The spec's values a request leaves unset: the model's preset where it is of
        this family, else the spec's own defaults."""
        if model is not None and model.purifier.family == cls.model_fields["family"].default:
            return model.purifier.model_dump(exclude={"family"})
        return {}

    def check(self, model: Manifest | None, load: Callable[[str], Manifest]) -> PurifierSpec:
        """This spec on ``model`` (ValueError where they do not fit), with any further
        model it names pinned to NAME:VERSION."""
        if self.needs_model and (model is None or model.purifier.family != self.family):
            kind = "no model" if model is None else f"a {model.purifier.family} model"
            raise ValueError(f"the {self.family} purifier runs a {self.family} model, not {kind}")
        return self

    @classmethod
    def parameters(cls) -> list[str]:
        return [name for name in cls.model_fields if name != "family"]

    def passes(self) -> int:
        """Network passes per image: what a job's compute is counted in (pixels x
        passes). A family with no network counts one."""
        return 1

    def scoring(self) -> PurifierSpec | None:
        """The spec that scores images without changing them (a filter's ranking), or
        None where the family has no score."""
        return None

    def summary(self) -> str:
        fields = self.model_dump(exclude={"family"})
        return f"{self.family} " + " ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
        )

    def build(self, model: Any, load: ModelLoader, device: Any, speedups: Any) -> Purifier:
        raise NotImplementedError


FAMILIES: dict[str, type[PurifierSpec]] = {}


def register(spec: type[PurifierSpec]) -> type[PurifierSpec]:
    """Class decorator: make ``spec`` a family of the union (its module is then
    imported by ``pureebm.purifiers``)."""
    FAMILIES[spec.model_fields["family"].default] = spec
    return spec


def spec_union() -> Any:
    """The discriminated union of every registered family's spec."""
    return Annotated[Union[tuple(FAMILIES.values())], Field(discriminator="family")]  # noqa: UP007


def overrides_model() -> type[BaseModel]:
    """What a request may set: every family's fields, each optional, the family
    itself and the filter; unknown fields are refused. A field that several
    families share (``steps``) keeps only its type here: each family's spec checks
    its own bounds when the request is resolved."""
    owners: dict[str, list[tuple[str, FieldInfo]]] = {}
    for family, spec in FAMILIES.items():
        for name, info in spec.model_fields.items():
            if name != "family" and repr(info) not in [repr(i) for _, i in owners.get(name, [])]:
                owners.setdefault(name, []).append((family, info))
    fields: dict[str, Any] = {
        "purifier": (
            Literal[tuple(FAMILIES)] | None,  # type: ignore[valid-type]
            Field(
                None,
                description=f"the purifier family: {', '.join(FAMILIES)} (default: the model's)",
            ),
        ),
        "filter": (Filter | None, Field(None, description=FILTER_HELP)),
    }
    for name, defined in owners.items():
        family, info = defined[0]
        if len(defined) == 1:
            annotation = (
                Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            )
        else:
            annotation = info.annotation
        description = "; ".join(f"{f}: {i.description}" for f, i in defined)
        fields[name] = (annotation | None, Field(None, description=description))
    return create_model("Overrides", __config__=ConfigDict(extra="forbid", frozen=True), **fields)


def resolve(
    overrides: BaseModel, model: Manifest | None, load: Callable[[str], Manifest]
) -> PurifierSpec:
    """The spec a request runs: its family (``purifier``; else Reps when it names a
    ``ddpm_model``; else the model's preset's), the request's values over the
    family's defaults on ``model``, checked against it. ValueError for fields that
    do not apply to the family or values that do not fit the model."""
    given = overrides.model_dump(exclude_none=True, exclude={"purifier", "filter"})
    family = overrides.purifier  # type: ignore[attr-defined]
    if family is None:
        family = "reps" if "ddpm_model" in given and "reps" in FAMILIES else None
    if family is None:
        if model is None:
            raise ValueError("name a model or a purifier family")
        family = model.purifier.family
    spec = FAMILIES[family]
    foreign = sorted(set(given) - set(spec.model_fields))
    if foreign:
        raise ValueError(
            f"{', '.join(foreign)}: not a parameter of the {family} purifier "
            f"(its parameters: {', '.join(spec.parameters())})"
        )
    return spec(**{**spec.defaults(model, load), **given, "family": family}).check(model, load)
