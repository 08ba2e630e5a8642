"""The model registry folder: weights stored once by their sha256, presets that name
them (pureebm.registry.records has the records), and an explicit default.

    <root>/DEFAULT                                  the default preset, NAME:VERSION
    <root>/_weights/<sha256>/weights.json           what made the weights
    <root>/_weights/<sha256>/<file>.safetensors     the weights; a DDPM's folder is
                                                    diffusers' own (config.json beside)
    <root>/<name>/<version>/preset.json             a preset: weights digest, purifier
                                                    spec, filter, threshold, lineage
    <root>/<name>/<version>/samples.png, calibration.json

Calibrating writes a preset and never copies weights; publishing a preset never
changes the default, which only ``set_default`` (or the service's setting) moves
(a new registry's first preset becomes its default).
Weights are safetensors only, so a registry file cannot run code. Loading checks
the weights' sha256 and refuses unknown architectures. Reading presets needs no
torch (the API reads them); loading weights does. A reference is "name" (its
highest version) or "name:version".
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from pureebm.atomic import atomic_path
from pureebm.refs import RegistryError, parse_ref
from pureebm.registry.records import Manifest, Preset, WeightsRecord

if TYPE_CHECKING:  # torch is imported when weights are loaded or saved, not before
    import torch
    from torch import nn


def default_root() -> Path:
    """PUREEBM_REGISTRY where it is set (the service reads the same variable), else the
    source tree's models/ (a checkout or an editable install), else ./models (a
    wheel installed elsewhere, as in the Docker image, has no models/ beside it)."""
    if os.environ.get("PUREEBM_REGISTRY"):
        return Path(os.environ["PUREEBM_REGISTRY"])
    tree = Path(__file__).resolve().parents[2] / "models"
    return tree if tree.is_dir() else Path("models")


DEFAULT_ROOT = default_root()
DEFAULT_FILE = "DEFAULT"
PRESET = "preset.json"
WEIGHTS_DIR = "_weights"  # not a preset name: names start with a letter or digit
WEIGHTS_RECORD = "weights.json"
WEIGHTS = "model.safetensors"


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


def net_builders() -> dict[str, Callable[..., nn.Module]]:
    """Architecture name -> constructor taking the record's arch_kwargs."""
    from pureebm.diffusion import build_unet
    from pureebm.nets import ARCHITECTURES

    builders: dict[str, Callable[..., nn.Module]] = {"unet": lambda **kw: build_unet(kw)}
    builders.update(ARCHITECTURES)
    return builders


def read_model(path: Path, model: type[BaseModel]) -> Any:
    if not path.is_file():
        raise RegistryError(f"{path} is missing")
    try:
        return model.model_validate_json(path.read_bytes())
    except ValidationError as e:
        raise RegistryError(f"invalid {path}: {e}") from e


def write_json(path: Path, record: BaseModel) -> None:
    path.write_text(json.dumps(record.model_dump(mode="json", exclude_none=True), indent=2))


class Registry:
    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    # -- presets -----------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name[0].isalnum())

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not name[:1].isalnum() or not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())

    def pinned(self, ref: str) -> tuple[str, int] | None:
        """The entry ``ref`` names, NAME and VERSION (a name alone: its highest
        version), or None when there is none."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if version is None:
            version = versions[-1] if versions else None
        return None if version not in versions else (name, version)

    def default_ref(self, setting: str | None = None) -> str:
        """The default preset: the operator's ``setting`` where there is one, else the
        registry's DEFAULT file (an explicit pointer, so publishing a preset never
        changes what callers get by default)."""
        if setting:
            return setting
        path = self.root / DEFAULT_FILE
        if not path.is_file():
            raise RegistryError(
                f"the registry {self.root} has no {DEFAULT_FILE} file naming its default"
            )
        return path.read_text().strip()

    def set_default(self, ref: str) -> None:
        manifest = self.manifest(ref)
        with atomic_path(self.root / DEFAULT_FILE) as partial:
            partial.write_text(manifest.ref + "\n")

    def entry_path(self, ref: str) -> Path:
        name, version = parse_ref(ref)
        return self.root / name / str(version)

    def preset(self, ref: str) -> Preset:
        pinned = self.pinned(ref)
        if pinned is None:
            names = self.names()
            nearest = difflib.get_close_matches(parse_ref(ref)[0], names, n=1, cutoff=0.6)
            hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
            raise RegistryError(f"no model {ref!r}{hint} (models: {', '.join(names) or 'none'})")
        name, version = pinned
        preset = read_model(self.root / name / str(version) / PRESET, Preset)
        if (preset.name, preset.version) != (name, version):
            raise RegistryError(
                f"{name}:{version}'s preset describes {preset.name}:{preset.version}"
            )
        return preset

    def manifest(self, ref: str) -> Manifest:
        """The preset ``ref`` names (its highest version for a name alone), with its
        weights' record."""
        preset = self.preset(ref)
        record = None if preset.weights is None else self.weights_record(preset.weights)
        return Manifest(**{**preset.model_dump(exclude={"weights"}), "weights": record})

    def list(self) -> list[Manifest]:
        """Every preset, sorted by name then version."""
        return [self.manifest(f"{n}:{v}") for n in self.names() for v in self.versions(n)]

    def add_preset(self, version: int | None = None, **fields: Any) -> Manifest:
        """Write a preset (``fields``: Preset's, ``weights`` a digest already stored)
        as version ``version`` of ``fields['name']`` (default: the next); an existing
        version is never replaced."""
        name = fields["name"]
        if version is None:
            version = (self.versions(name) or [0])[-1] + 1
        preset = Preset(**{"created_at": datetime.now(UTC), **fields, "version": version})
        if preset.weights is not None:
            self.weights_record(preset.weights)  # it must exist
        folder = self.root / name / str(version)
        if folder.exists():
            raise RegistryError(f"{name}:{version} exists already in {self.root}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder) as staging:
            staging.mkdir()
            write_json(staging / PRESET, preset)
        if not (self.root / DEFAULT_FILE).exists():  # a new registry's first preset
            self.set_default(f"{name}:{version}")
        return self.manifest(f"{name}:{version}")

    # -- weights -----------------------------------------------------------------

    def weights_dir(self, sha256: str) -> Path:
        return self.root / WEIGHTS_DIR / sha256

    def weights_record(self, sha256: str) -> WeightsRecord:
        record = read_model(self.weights_dir(sha256) / WEIGHTS_RECORD, WeightsRecord)
        if record.sha256 != sha256:
            raise RegistryError(f"weights {sha256} are recorded as {record.sha256}")
        return record

    def weights_path(self, manifest: Manifest) -> Path:
        if manifest.weights is None:
            raise RegistryError(f"{manifest.ref} has no weights: its purifier needs no model")
        return self.weights_dir(manifest.weights.sha256) / manifest.weights.file

    def add_weights(
        self,
        net: nn.Module,
        file: str = WEIGHTS,
        extra_files: dict[str, str] | None = None,
        **fields: Any,
    ) -> WeightsRecord:
        """Store ``net``'s weights under their sha256 with their record (``fields``:
        WeightsRecord's), and ``extra_files`` (name -> text) beside them. Weights
        already stored are kept as they are: each is stored once."""
        from safetensors.torch import save_file

        store = self.root / WEIGHTS_DIR
        store.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=store, prefix=".staging-") as staging:
            folder = Path(staging)
            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            save_file(state, folder / file, metadata={"format": "pt"})
            digest = sha256_of(folder / file)
            if self.weights_dir(digest).exists():
                return self.weights_record(digest)
            record = WeightsRecord(
                **{"created_at": datetime.now(UTC), **fields, "sha256": digest, "file": file}
            )
            write_json(folder / WEIGHTS_RECORD, record)
            for name, text in (extra_files or {}).items():
                (folder / name).write_text(text)
            with atomic_path(self.weights_dir(digest)) as partial:
                shutil.copytree(folder, partial)
        return record

    def add(self, net: nn.Module, version: int | None = None, **fields: Any) -> Manifest:
        """Store ``net``'s weights and a preset naming them: ``fields`` holds both
        records' fields (WeightsRecord's, and Preset's but ``weights``)."""
        made = {"sha256", "created_at", "description"}  # set here, or the preset's own
        record_fields = {
            k: v for k, v in fields.items() if k in WeightsRecord.model_fields and k not in made
        }
        record = self.add_weights(
            net,
            description=fields.get("description", ""),
            extra_files=fields.get("extra_files"),
            **record_fields,
        )
        preset_fields = {
            k: v for k, v in fields.items() if k in Preset.model_fields and k != "weights"
        }
        return self.add_preset(version, **preset_fields, weights=record.sha256)

    # -- loading -------------------------------------------------------------------

    def verified_manifest(self, ref: str) -> Manifest:
        """The manifest, once its weights file is there and matches its sha256 (the
        hash is cached by file size and mtime, so readiness probes stay cheap)."""
        manifest = self.manifest(ref)
        if manifest.weights is None:
            return manifest
        weights = self.weights_path(manifest)
        if not weights.is_file():
            raise RegistryError(f"weights file {weights} is missing")
        if sha256_of(weights) != manifest.weights.sha256:
            raise RegistryError(f"weights file {weights} does not match its sha256")
        return manifest

    def load(self, ref: str, device: str | torch.device = "cpu") -> LoadedModel:
        """Load a preset's net after checking its architecture and the sha256 of the
        very bytes it loads (never a cached hash: a file changed in place, same size
        and mtime, is refused)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        manifest = self.manifest(ref)
        record = manifest.weights
        if record is None:
            raise RegistryError(f"{manifest.ref} has no weights: its purifier needs no model")
        builders = net_builders()
        if record.architecture not in builders:
            raise RegistryError(f"{manifest.ref}: unknown architecture {record.architecture!r}")
        weights = self.weights_path(manifest)
        try:
            data = weights.read_bytes()
        except OSError as e:
            raise RegistryError(f"weights file {weights} is missing or unreadable: {e}") from e
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise RegistryError(f"weights file {weights} does not match its sha256")
        try:
            state = {name: t.to(device) for name, t in load(data).items()}
        except SafetensorError as e:
            raise RegistryError(f"weights file {weights} is unreadable: {e}") from e
        net = builders[record.architecture](**record.arch_kwargs)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise RegistryError(f"weights file {weights} does not fit the architecture: {e}") from e
        return LoadedModel(manifest, net.to(device).eval().requires_grad_(False))
