"""A purification request resolved against the registry: the one assembly that the
CLI, the API (at submission) and the evaluation run. No torch.

A request names a model (a preset, NAME or NAME:VERSION; default: the registry's
default) and any of the purifier parameters (``pureebm.purifiers.Overrides``).
Resolving pins the model, picks the family (the request's ``purifier``, else Reps
for a ``ddpm_model``, else the preset's), fills unset parameters from the preset
where it is of that family, and resolves the filter: the request's, else the
preset's own when it runs the preset's family. A family that needs no model
(JPEG) keeps the model only as the filter's scorer; a preset without weights
(a named JPEG setting) is no model at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ValidationError

from pureebm.filtering import FilterError, resolve_filter
from pureebm.purifiers import Filter, Spec, resolve
from pureebm.registry import Registry


class Resolved(BaseModel):
    """What a purification runs, every value pinned."""

    model: str | None = None  # NAME:VERSION: the purifier's model, and the filter's scorer
    purifier: Spec  # type: ignore[valid-type]
    filter: Filter | None = None

    @property
    def uses_weights(self) -> bool:
        """Whether the model's weights shape the result: the purifier runs them or a
        filter ranks by them (not a model named beside JPEG with no filter)."""
        return self.model is not None and (
            self.purifier.needs_model or self.filter is not None  # type: ignore[attr-defined]
        )


def resolve_request(
    overrides: BaseModel, model: str | None, registry: Registry, default: str | None = None
) -> Resolved:
    """``model``: the caller's; ``default``: the operator's default (else the
    registry's DEFAULT). ValueError (pydantic's included) for parameters that do
    not fit; RegistryError for an unknown model; pureebm.filtering.FilterError for
    a filter the scorer cannot apply."""
    manifest = registry.manifest(model or registry.default_ref(default))
    try:
        spec = resolve(overrides, manifest, registry.manifest)
    except ValidationError as e:  # one line per field, without pydantic's links
        problems = (f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in e.errors())
        raise ValueError("; ".join(problems)) from None
    runs_preset = spec.family == manifest.purifier.family
    requested = overrides.filter  # type: ignore[attr-defined]
    rule = resolve_filter(requested, manifest if runs_preset else None, manifest)
    if rule is not None and manifest.weights is None:
        raise FilterError(
            f"{manifest.ref} has no model to rank images by: a filter needs one "
            "(model=NAME of an EBM or a DDPM)"
        )
    # a preset without weights (JPEG's) only sets parameters: no model to load
    keeps_model = manifest.weights is not None and (
        spec.needs_model or rule is not None or model is not None
    )
    return Resolved(model=manifest.ref if keeps_model else None, purifier=spec, filter=rule)


OFF_CALIBRATION = 4  # steps past this many times a preset's are worth a warning
FAR_FROM_MODEL = 4  # image sides this many times the model's are worth a warning


def size_warnings(pixels: Sequence[int], model: str | None, image_size: int) -> list[str]:
    """Images far larger than those the model learnt from: purified at the model's
    scale (tile by tile), so coarser patterns stay; the filter ranks each size apart."""
    if model is None:
        return []
    large = sum(n >= (FAR_FROM_MODEL * image_size) ** 2 for n in pixels)
    if not large:
        return []
    return [
        f"{large} of {len(pixels)} images have {FAR_FROM_MODEL}x or more the side of the "
        f"{image_size} px images {model} learnt from: they are purified at its scale, tile by "
        "tile, so patterns coarser than a few of its pixels are removed less (a filter ranks "
        "each image size apart)"
    ]


def calibration_warnings(resolved: Resolved, registry: Registry) -> list[str]:
    """What a caller should know before trusting the result: a chain far longer than
    the one its model's preset was calibrated for changes images visibly."""
    if resolved.model is None:
        return []
    preset = registry.manifest(resolved.model).purifier
    spec = resolved.purifier
    if spec.family != preset.family or not getattr(preset, "steps", 0):
        return []
    steps, calibrated = spec.steps, preset.steps  # type: ignore[attr-defined]
    if steps <= OFF_CALIBRATION * calibrated:
        return []
    return [
        f"steps={steps} is {steps / calibrated:.0f}x the {calibrated} steps {resolved.model} "
        "is calibrated for (at its eps and tau): expect images visibly changed, not only "
        "purified; leave steps unset to use the model's own (docs/models.md)"
    ]
