"""The purifier interface and its one spec: every family's parameters derive the
API's form, the CLI's options, the job record and the evaluation's defences; a new
family is one module and one registration; JPEG end to end."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Collection, Iterator
from typing import Any, Literal

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import Field, TypeAdapter, ValidationError

from pureebm.client import PureEBMClient, PureEBMError
from pureebm.evaluation.defences import purified, spec_purifier
from pureebm.images import Picture
from pureebm.pipeline import purifier_for, purify_pictures
from pureebm.purifiers import FAMILIES, Overrides, Purified, Purifier, PurifierSpec, Spec, resolve
from pureebm.purifiers.jpeg import JPEGSpec, jpeg_roundtrip
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.purifiers.spec import overrides_model, register, spec_union
from pureebm.registry import Registry
from pureebm.requests import resolve_request
from tests.stack import KEY_A, Stack, png, pureebm_cli, zip_bytes


def pictures(images: np.ndarray) -> list[tuple[str, Picture]]:
    return [(f"{i}.png", Picture(image, None, "RGB", "PNG")) for i, image in enumerate(images)]


def test_every_family_round_trips_through_the_one_union() -> None:
    adapter = TypeAdapter(Spec)
    for family, spec in FAMILIES.items():
        fields = {"ddpm_model": "m:1"} if "ddpm_model" in spec.model_fields else {}
        value = spec(**fields)
        back = adapter.validate_json(value.model_dump_json())
        assert type(back) is spec and back == value and back.family == family


def test_overrides_hold_every_familys_fields_once_and_refuse_others() -> None:
    fields = set(Overrides.model_fields)
    for spec in FAMILIES.values():
        assert set(spec.parameters()) <= fields
    assert {"purifier", "filter", "quality", "steps", "ddpm_model"} <= fields
    with pytest.raises(ValidationError, match="step"):
        Overrides(step=3)
    assert Overrides(filter="none").filter == 1.0  # 'none' is every image
    assert Overrides(filter="0.5").filter == 0.5


def test_resolution_fills_the_preset_and_refuses_what_a_family_does_not_take(tiny_model):
    preset = tiny_model.manifest
    assert resolve(Overrides(), preset, None) == preset.purifier
    two = resolve(Overrides(steps=2), preset, None)
    assert (two.steps, two.eps, two.tau) == (2, preset.purifier.eps, preset.purifier.tau)
    assert resolve(Overrides(purifier="jpeg"), preset, None) == JPEGSpec(quality=75)
    with pytest.raises(ValueError, match="quality: not a parameter of the langevin purifier"):
        resolve(Overrides(quality=50), preset, None)
    with pytest.raises(ValueError, match="steps: not a parameter of the jpeg purifier"):
        resolve(Overrides(purifier="jpeg", steps=3), preset, None)
    with pytest.raises(ValueError, match="less than or equal to 100"):
        resolve(Overrides(purifier="jpeg", quality=101), preset, None)


def test_a_request_keeps_its_presets_filter_only_for_the_presets_family(tiny_registry):
    registry = Registry(tiny_registry)
    filtered = resolve_request(Overrides(filter=0.5), "tiny", registry)
    assert (filtered.model, filtered.filter) == ("tiny:1", 0.5)
    assert resolve_request(Overrides(filter="none"), "tiny", registry).filter is None
    jpeg = resolve_request(Overrides(purifier="jpeg"), None, registry)
    assert (jpeg.model, jpeg.filter) == (None, None)  # no model to run, no ranking
    scored = resolve_request(Overrides(purifier="jpeg", filter=0.5), None, registry)
    assert scored.model == "tiny:1"  # the filter's scorer: the default preset's model


def test_jpeg_is_pillows_round_trip_image_by_image_with_no_score(cifar):
    images = cifar["images"][:6]
    results = list(
        purify_pictures(purifier_for(JPEGSpec(quality=30), None, None), pictures(images))
    )
    for image, item in zip(images, results, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=30)
        np.testing.assert_array_equal(item.rgb, np.asarray(Image.open(buffer)))
        assert np.isnan(item.energy_before) and np.isnan(item.energy_after)
    # lower quality removes more: the mean change grows as the quality falls
    change = [
        np.abs(jpeg_roundtrip(images[0], q).astype(int) - images[0]).mean() for q in (95, 75, 20)
    ]
    assert change[0] < change[1] < change[2]


class InvertSpec(PurifierSpec):
    """A family written in a test: x -> 255 - x, a closed form to check against."""

    family: Literal["invert"] = "invert"
    needs_model = False
    times: int = Field(1, ge=1, le=3, description="how many times to invert")

    def build(self, model: Any, load: Any, device: Any, speedups: Any) -> Purifier:
        return InvertPurifier(self)


class InvertPurifier(Purifier):
    def __init__(self, spec: InvertSpec) -> None:
        self.spec, self.name = spec, spec.summary()

    def purify_batch(
        self,
        images: torch.Tensor,
        positions: torch.Tensor,
        seed: int,
        sizes: torch.Tensor | None = None,
        sweep: Collection[int] = (),
    ) -> Purified:
        out = images if self.spec.times % 2 == 0 else 255 - images
        return Purified(out, positions.double(), positions.double())


@pytest.fixture()
def invert() -> Iterator[None]:
    register(InvertSpec)
    yield
    del FAMILIES["invert"]


def test_a_new_family_is_one_class_and_one_registration(invert, cifar, tiny_model):
    """Registered, it is in the union, the request model and the resolution, and the
    pipeline runs it, with no edit elsewhere."""
    union, overrides = TypeAdapter(spec_union()), overrides_model()
    assert union.validate_python({"family": "invert", "times": 3}) == InvertSpec(times=3)
    assert "times" in overrides.model_fields
    spec = resolve(overrides(purifier="invert", times=3), tiny_model.manifest, None)
    images = cifar["images"][:5]
    results = list(purify_pictures(purifier_for(spec, None, None), pictures(images)))
    np.testing.assert_array_equal(np.stack([r.rgb for r in results]), 255 - images)
    assert [r.energy_before for r in results] == [0, 1, 2, 3, 4]  # the positions it was given


def test_the_evaluation_names_any_family_in_the_spec_grammar(tiny_registry, cifar):
    images = cifar["images"][:4]
    registry = Registry(tiny_registry)
    jpeg = spec_purifier("jpeg:quality=40", registry, None, "cpu")
    expected = np.stack([jpeg_roundtrip(image, 40) for image in images])
    np.testing.assert_array_equal(purified(jpeg, images, "jpeg"), expected)
    chain = spec_purifier("langevin:steps=2,init_noise=0.1", registry, "tiny", "cpu")
    assert chain.spec == LangevinSpec(steps=2, init_noise=0.1)  # the rest from tiny's preset
    with pytest.raises(ValueError, match="quality: not a parameter of the langevin"):
        spec_purifier("langevin:quality=3", registry, "tiny", "cpu")


def test_jpeg_runs_through_the_service_the_client_and_the_cli(tmp_path, tiny_registry, cifar):
    """The same JPEG round trip, member by member, from the API (through the client)
    and from `pureebm purify`; what JPEG does not take is refused with its name."""
    images = cifar["images"][:6]
    members = {f"img/{i}.png": png(image) for i, image in enumerate(images)}
    members["labels.txt"] = b"0 1 2 3 4 5\n"
    source = tmp_path / "set.zip"
    source.write_bytes(zip_bytes(members))
    (tmp_path / "stack").mkdir()
    stack = Stack(tmp_path / "stack", tiny_registry)
    try:
        stack.start_worker()
        with PureEBMClient(stack.url, KEY_A) as client:
            job = client.purify(source, tmp_path / "api.zip", purifier="jpeg", quality=40)
            assert job["params"]["purifier"] == {"family": "jpeg", "quality": 40}
            assert job["params"]["model"] is None
            report = client.report(job["id"])
            assert report["purified"] == 6
            assert all(row["energy_before"] is None for row in report["images"])
            for bad, named in ((dict(quality=0), "quality"), (dict(steps=3), "steps")):
                with pytest.raises(PureEBMError) as refused:
                    client.submit(source, purifier="jpeg", **bad)
                assert refused.value.status == 422 and named in refused.value.detail
    finally:
        stack.stop()
    pureebm_cli(
        "purify", str(source), "-o", str(tmp_path / "cli.zip"), "--registry", str(tiny_registry),
        "--purifier", "jpeg", "--quality", "40",
    )  # fmt: skip
    for path in (tmp_path / "api.zip", tmp_path / "cli.zip"):
        with zipfile.ZipFile(path) as archive:
            assert archive.namelist() == list(members)
            assert archive.read("labels.txt") == members["labels.txt"]
            for i, image in enumerate(images):
                out = np.asarray(Image.open(io.BytesIO(archive.read(f"img/{i}.png"))))
                np.testing.assert_array_equal(out, jpeg_roundtrip(image, 40))
