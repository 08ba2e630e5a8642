"""/v1/models: the registry's presets, each with its weights' record, for callers
with a key (where keys are configured). How a model was trained is told by its
iterations, time and hardware; the training command and data path, which name the
machine it ran on, stay in the registry."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ModelNamePath, OwnerDep, RegistryDep, SettingsDep
from service.problems import Problem, problem_responses
from service.schemas import ModelInfo

router = APIRouter(prefix="/v1/models", tags=["models"], responses=problem_responses(401, 403))


PRIVATE_FIELDS = {"weights": {"training": {"command", "data"}}}


def describe(name: str, registry: RegistryDep, settings: SettingsDep) -> ModelInfo:
    versions = [
        registry.manifest(f"{name}:{v}").model_dump(mode="json", exclude=PRIVATE_FIELDS)
        for v in registry.versions(name)
    ]
    entry = registry.pinned(registry.default_ref(settings.default_model))
    default_version = entry[1] if entry is not None and entry[0] == name else None
    return ModelInfo(
        name=name,
        default=default_version is not None,
        default_version=default_version,
        versions=versions,
    )


@router.get("", response_model=list[ModelInfo])
def list_models(registry: RegistryDep, settings: SettingsDep, _: OwnerDep) -> list[ModelInfo]:
    names = sorted({m.name for m in registry.list()})
    return [describe(name, registry, settings) for name in names]


@router.get(
    "/{name}",
    response_model=ModelInfo,
    responses=problem_responses(404, details={404: "no model named 'cifar10-conv2'"}),
)
def get_model(
    name: ModelNamePath, registry: RegistryDep, settings: SettingsDep, _: OwnerDep
) -> ModelInfo:
    if not registry.versions(name):
        raise Problem(404, f"no model named {name!r}")
    return describe(name, registry, settings)
