"""The model registry folder (README: Models and training).

    <root>/<name>/<version>/manifest.json
    <root>/<name>/<version>/model.safetensors                 an energy net (pureebm.nets)

A DDPM entry (architecture "unet", pureebm.diffusion) is diffusers' own folder
beside the manifest, so ``UNet2DModel.from_pretrained`` opens it too:

    <root>/<name>/<version>/config.json                       the U-Net's config
    <root>/<name>/<version>/diffusion_pytorch_model.safetensors

The manifest is the source of truth: the U-Net is built from its arch_kwargs
(config.json is their copy) and ``weights`` names the file its sha256 covers.
Weights are safetensors only, so a registry file cannot run code. Loading checks
the weights' sha256 against the manifest and refuses unknown architectures.
Reading manifests needs no torch (the API reads them); loading weights does.
A reference is "name" (its highest version) or "name:version".
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pureebm.atomic import atomic_path
from pureebm.params import NAME_PATTERN, Manifest

if TYPE_CHECKING:  # torch is imported when weights are loaded or saved, not before
    import torch
    from torch import nn


def default_root() -> Path:
    """PUREEBM_REGISTRY where it is set (the service reads the same variable), else the
    source tree's models/ (a checkout or an editable install), else ./models (a
    wheel installed elsewhere, as in the Docker image, has no models/ beside it)."""
    if os.environ.get("PUREEBM_REGISTRY"):
        return Path(os.environ["PUREEBM_REGISTRY"])
    tree = Path(__file__).resolve().parent.parent / "models"
    return tree if tree.is_dir() else Path("models")


DEFAULT_ROOT = default_root()
DEFAULT_MODEL = "cifar10-conv"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CONFIG = "config.json"


class RegistryError(Exception):
    """A registry entry is missing, malformed or fails its integrity check."""


@dataclass
class LoadedModel:
    manifest: Manifest
    net: nn.Module


def sha256_of(path: Path) -> str:
    """The file's sha256, computed again only when its size or mtime changes."""
    stat = path.stat()
    return cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_ref(ref: str) -> tuple[str, int | None]:
    """ "name" -> (name, None); "name:3" -> (name, 3)."""
    name, _, version = ref.partition(":")
    # ASCII digits only ('²'.isdigit() is True), and few enough to be a version
    if not re.match(NAME_PATTERN, name) or (version and not re.fullmatch(r"[0-9]{1,9}", version)):
        raise RegistryError(f"bad model reference {ref!r}: expected NAME or NAME:VERSION")
    return name, int(version) if version else None


class Registry:
    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())

    def pinned(self, ref: str) -> tuple[str, int] | None:
        """The entry ``ref`` names, NAME and VERSION (a name alone: its highest
        version), or None when there is none. "The default model" is always the entry
        the default reference pins, for the CLI and the service alike."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if version is None:
            version = versions[-1] if versions else None
        return None if version not in versions else (name, version)

    def manifest(self, ref: str) -> Manifest:
        """Read and validate the manifest of ``ref`` (highest version if none given)."""
        name, version = parse_ref(ref)
        if version is None:
            versions = self.versions(name)
            if not versions:
                raise RegistryError(f"no model named {name!r} in {self.root}")
            version = versions[-1]
        path = self.root / name / str(version) / MANIFEST
        if not path.is_file():
            raise RegistryError(f"no model {name}:{version} ({path} is missing)")
        try:
            manifest = Manifest.model_validate_json(path.read_bytes())
        except ValidationError as e:
            raise RegistryError(f"invalid manifest {path}: {e}") from e
        if (manifest.name, manifest.version) != (name, version):
            raise RegistryError(f"{path} describes {manifest.name}:{manifest.version}")
        return manifest

    def list(self) -> list[Manifest]:
        """Every entry's manifest, sorted by name then version."""
        if not self.root.is_dir():
            return []
        names = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        return [self.manifest(f"{n}:{v}") for n in names for v in self.versions(n)]

    def weights_path(self, manifest: Manifest) -> Path:
        return self.root / manifest.name / str(manifest.version) / manifest.weights

    def verified_manifest(self, ref: str) -> Manifest:
        """The manifest, once its weights file is there and matches its sha256 (the
        hash is cached by file size and mtime, so readiness probes stay cheap)."""
        manifest = self.manifest(ref)
        weights = self.weights_path(manifest)
        if not weights.is_file():
            raise RegistryError(f"weights file {weights} is missing")
        if sha256_of(weights) != manifest.sha256:
            raise RegistryError(f"weights file {weights} does not match its manifest's sha256")
        return manifest

    def load(self, ref: str, device: str | torch.device = "cpu") -> LoadedModel:
        """Load an entry's net after checking its architecture and weights' sha256."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from pureebm.nets import ARCHITECTURES, build_energy_net

        manifest = self.verified_manifest(ref)
        diffusion = manifest.diffusion is not None
        if not diffusion and manifest.architecture not in ARCHITECTURES:
            raise RegistryError(
                f"{manifest.name}:{manifest.version}: unknown architecture "
                f"{manifest.architecture!r}"
            )
        weights = self.weights_path(manifest)
        try:
            state = load_file(weights, device=str(device))
        except (SafetensorError, OSError) as e:
            raise RegistryError(f"weights file {weights} is unreadable: {e}") from e
        if diffusion:
            from pureebm.diffusion import build_unet

            net = build_unet(manifest.arch_kwargs)
        else:
            net = build_energy_net(manifest.architecture, **manifest.arch_kwargs)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise RegistryError(f"weights file {weights} does not fit the architecture: {e}") from e
        return LoadedModel(manifest, net.to(device).eval().requires_grad_(False))

    def add(self, net: nn.Module, version: int | None = None, **fields: Any) -> Manifest:
        """Write ``net`` as version ``version`` (default: the next) of ``fields['name']``;
        returns its manifest. An existing version is never replaced.

        The entry is assembled in a temporary folder and renamed into place, so a
        half-written entry is never visible.
        """
        from safetensors.torch import save_file

        name = fields["name"]
        if version is None:
            version = (self.versions(name) or [0])[-1] + 1
        elif (self.root / name / str(version)).exists():
            raise RegistryError(f"{name}:{version} exists already in {self.root}")
        (self.root / name).mkdir(parents=True, exist_ok=True)
        diffusion = fields.get("diffusion") is not None
        weights = DIFFUSERS_WEIGHTS if diffusion else WEIGHTS
        with atomic_path(self.root / name / str(version)) as staging:
            staging.mkdir()
            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            save_file(state, staging / weights, metadata={"format": "pt"})
            if diffusion:
                config = {"_class_name": "UNet2DModel", **fields["arch_kwargs"]}
                (staging / DIFFUSERS_CONFIG).write_text(json.dumps(config, indent=2))
            manifest = Manifest(
                **{
                    **fields,
                    "version": version,
                    "weights": weights,
                    "sha256": sha256_of(staging / weights),
                    "created_at": datetime.now(UTC),
                }
            )
            (staging / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2))
        return manifest
