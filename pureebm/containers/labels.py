"""Class labels of a container's images, where the container states them:

- WebDataset sidecars: ``KEY.cls`` (the class as text) or ``KEY.json`` (an object with
  a ``label``, ``class``, ``cls`` or ``target`` field) beside each image ``KEY.EXT``;
- class folders (torchvision's ImageFolder layout): every image one or more folders
  below the images' common root, the first of those folders its class;
- npz label arrays, matched to their image arrays (``pureebm.containers.npz``).

Labels are strings (a folder's name, a sidecar's text, an array's value), one per
image in container order. A container without any says why, in ``Labels.source``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

SIDECAR_BYTES = 4096  # a label sidecar larger than this is not one
SIDECAR_SUFFIXES = (".cls", ".json")
JSON_LABEL_FIELDS = ("label", "class", "cls", "target")


@dataclass(frozen=True)
class Labels:
    values: list[str] | None  # one class per image, in container order; None: none stated
    source: str  # where they come from, or why there are none


def folder_labels(image_names: Sequence[str]) -> Labels:
    """Each image's first folder below the images' common root, when every image has
    one and there are at least two classes."""
    parts = [PurePosixPath(name).parts for name in image_names]
    root = 0
    while all(len(p) > root + 1 for p in parts) and len({p[root] for p in parts}) == 1:
        root += 1
    if not all(len(p) > root + 1 for p in parts):
        return Labels(None, "no labels: the images are not all in class folders")
    values = [p[root] for p in parts]
    if len(set(values)) < 2:
        return Labels(None, "no labels: one class folder only")
    return Labels(values, f"class folders ({len(set(values))} classes)")


def sidecars(image_names: Sequence[str], file_names: Sequence[str]) -> dict[str, str] | None:
    """Each image's label sidecar (KEY.cls, else KEY.json), if every image has one."""
    files = set(file_names)
    found = {}
    for name in image_names:
        key = str(PurePosixPath(name).with_suffix(""))
        sidecar = next((key + s for s in SIDECAR_SUFFIXES if key + s in files), None)
        if sidecar is None:
            return None
        found[name] = sidecar
    return found


def sidecar_label(name: str, data: bytes) -> str:
    """The class a sidecar states; ValueError for one that states none."""
    if len(data) > SIDECAR_BYTES:
        raise ValueError(f"{name} is over {SIDECAR_BYTES} bytes")
    text = data.decode("utf-8").strip()
    if name.endswith(".cls"):
        if not text:
            raise ValueError(f"{name} is empty")
        return text
    document = json.loads(text)
    if isinstance(document, dict):
        for field in JSON_LABEL_FIELDS:
            if field in document and isinstance(document[field], int | str):
                return str(document[field])
    raise ValueError(f"{name} has no {'/'.join(JSON_LABEL_FIELDS)} field")


def member_labels(
    image_names: Sequence[str],
    file_names: Sequence[str],
    read: Callable[[Sequence[str]], dict[str, bytes]],
) -> Labels:
    """WebDataset sidecars where every image has one, else class folders; ``read``
    gives the bytes of the named file members."""
    found = sidecars(image_names, file_names)
    if found is None:
        return folder_labels(image_names)
    data = read(sorted(set(found.values())))
    try:
        values = [sidecar_label(found[name], data[found[name]]) for name in image_names]
    except (ValueError, UnicodeDecodeError) as e:
        return Labels(None, f"no labels: {e}")
    return Labels(values, f"WebDataset sidecars ({len(set(values))} classes)")
