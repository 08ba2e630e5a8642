"""PureDDPM against its closed forms: the forward marginal, the posterior step, the
chain under an oracle denoiser; seeds; mixed sizes; the registry entry."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from pureebm import compiled, diffusion
from pureebm.client import PureEBMClient
from pureebm.images import Picture
from pureebm.langevin import Speedups
from pureebm.noise import ImageNoise, derived_seed
from pureebm.pipeline import purifier_for, purify_pictures
from pureebm.purifiers import Overrides, resolve
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.purifiers.reps import RepsSpec
from pureebm.registry import Registry, RegistryError
from pureebm.registry.records import DiffusionSchedule
from tests.conftest import purifier_of
from tests.stack import KEY_A, Stack, png, pureebm_cli, zip_bytes

SCHEDULE = DiffusionSchedule()


def linear_abar() -> np.ndarray:
    """abar_t of the paper's schedule, written out here: betas linear 1e-4 .. 0.02."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    return np.cumprod(1 - betas)


def test_schedule_is_the_linear_one() -> None:
    abar = diffusion.alphas_cumprod(SCHEDULE).numpy()
    np.testing.assert_allclose(abar, linear_abar(), rtol=1e-6)


def test_forward_marginal_matches_q_xt_given_x0_over_many_seeds() -> None:
    t, x0 = 75, torch.full((1, 3, 8, 8), 0.4)
    abar = diffusion.alphas_cumprod(SCHEDULE)
    samples = torch.cat(
        [
            diffusion.diffuse(
                x0, abar, t, ImageNoise(seed, torch.zeros(1), (3, 8, 8), 0, x0.dtype)(0)
            )
            for seed in range(2000)
        ]
    )
    a = linear_abar()[t - 1]
    n = samples.numel()
    # the sample mean within 5 standard errors, the variance within 5% (n = 384,000)
    assert abs(samples.mean().item() - a**0.5 * 0.4) < 5 * ((1 - a) / n) ** 0.5
    assert samples.var().item() == pytest.approx(1 - a, rel=0.05)
    # and the same draw as diffusers' add_noise (timestep t - 1)
    z = torch.randn(1, 3, 8, 8)
    scheduler = diffusion.scheduler_of(SCHEDULE)
    expected = scheduler.add_noise(x0, z, torch.tensor([t - 1]))
    torch.testing.assert_close(diffusion.diffuse(x0, abar, t, z), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [1, 2, 40, 250])
def test_reverse_step_is_the_posterior_q_xprev_given_xt_x0hat(t: int) -> None:
    abar = diffusion.alphas_cumprod(SCHEDULE)
    x_t, eps, z = torch.randn(3, 2, 3, 8, 8).unbind(0)
    # closed form, written out from abar here
    a = linear_abar()
    a_t, a_prev = a[t - 1], a[t - 2] if t > 1 else 1.0
    beta = 1 - a_t / a_prev
    x0_hat = ((x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5).clamp(-1, 1)
    mean = (a_prev**0.5 * beta * x0_hat + (a_t / a_prev) ** 0.5 * (1 - a_prev) * x_t) / (1 - a_t)
    std = (beta * (1 - a_prev) / (1 - a_t)) ** 0.5
    expected = mean + (std * z if t > 1 else 0)
    got = diffusion.reverse_step(x_t, eps, abar, t, z)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    # diffusers' DDPMScheduler.step, with the noise it draws from the same generator
    scheduler = DDPMScheduler(beta_schedule="linear")
    out = scheduler.step(eps, t - 1, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    drawn = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(
        diffusion.reverse_step(x_t, eps, abar, t, drawn), out, rtol=1e-4, atol=1e-5
    )


def test_chain_with_the_oracle_denoiser_of_one_image_returns_that_image() -> None:
    """For data that is one image c, eps*(x_t, t) = (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t)
    makes x0_hat = c at every step, and the last step (t = 1) returns x0_hat."""
    abar = diffusion.alphas_cumprod(SCHEDULE)
    c = torch.rand(2, 3, 8, 8) * 1.6 - 0.8

    def oracle(x: torch.Tensor, t: int) -> torch.Tensor:
        a = float(abar[t - 1])
        return (x - a**0.5 * c) / (1 - a) ** 0.5

    start = torch.rand(2, 3, 8, 8) * 2 - 1  # any image: the chain forgets it
    noise = ImageNoise(3, torch.arange(2), (3, 8, 8), 75, torch.float32)
    out = diffusion.ddpm_chain(oracle, start, 75, abar, noise)
    torch.testing.assert_close(out, c, rtol=1e-4, atol=1e-4)


def pictures(rng: np.random.Generator, shapes: list[tuple[int, int]]) -> list[tuple[str, Picture]]:
    return [
        (f"{i}.png", Picture(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), None, "RGB", "PNG"))
        for i, (h, w) in enumerate(shapes)
    ]


def run(model, items, steps: int, seed: int, **kwargs) -> list:
    return list(purify_pictures(purifier_of(model, steps=steps), items, seed=seed, **kwargs))


def test_same_seed_same_output_other_seed_other_output(ddpm_model) -> None:
    items = pictures(np.random.default_rng(0), [(32, 32)] * 3)
    first, again, other = (run(ddpm_model, items, 5, seed) for seed in (1, 1, 2))
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        assert not np.array_equal(a.rgb, c.rgb)
        assert a.energy_before == b.energy_before == c.energy_before  # the score needs no seed


def test_padded_mixed_size_batch_gives_each_image_its_own_result(ddpm_model) -> None:
    shapes = [(32, 32), (20, 45), (32, 32), (7, 70), (40, 33)]
    items = pictures(np.random.default_rng(1), shapes)
    together = run(ddpm_model, items, 4, seed=5, batch_size=8)
    for i, item in enumerate(items):
        (alone,) = run(ddpm_model, [item], 4, seed=5, positions=[i])
        assert alone.rgb.shape == (*shapes[i], 3)
        assert np.abs(alone.rgb.astype(int) - together[i].rgb).max() <= 1  # float order only
        assert alone.energy_before == pytest.approx(together[i].energy_before, rel=1e-4)


@pytest.mark.parametrize("speedups", [Speedups(compile=True), Speedups(bf16=True)])
def test_the_speedups_give_the_same_images_within_tolerance(ddpm_model, speedups) -> None:
    """Batches of 4 and 2: the compiled U-Net runs the second padded to 4 rows."""
    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (6, 3, 32, 32)))
    images = images.to(torch.uint8)
    net, schedule = ddpm_model.net, ddpm_model.manifest.weights.diffusion
    plain = diffusion.purify(net, images, schedule, 6, batch_size=4, seed=2)
    fast = diffusion.purify(net, images, schedule, 6, batch_size=4, seed=2, speedups=speedups)
    difference = (plain.images.int() - fast.images.int()).abs()
    max_level, mean_level = (8, 1.0) if speedups.bf16 else (1, 0.01)
    assert difference.max() <= max_level and difference.float().mean() <= mean_level
    torch.testing.assert_close(fast.energy_before, plain.energy_before, rtol=0.05, atol=1e-3)
    if speedups.compile:
        (unet,) = compiled._BUILT[net].values()
        assert unet.rows == 4


def test_purification_moves_images_and_scores_them(ddpm_model) -> None:
    items = pictures(np.random.default_rng(2), [(32, 32)] * 2)
    unchanged = run(ddpm_model, items, 0, seed=0)
    moved = run(ddpm_model, items, 10, seed=0)
    for (_, picture), same, purified in zip(items, unchanged, moved, strict=True):
        np.testing.assert_array_equal(same.rgb, picture.rgb)
        assert np.abs(purified.rgb.astype(int) - picture.rgb).mean() > 1
        assert np.isfinite(purified.energy_after) and purified.energy_after > 0


def test_steps_past_the_trained_timesteps_are_refused(ddpm_model) -> None:
    manifest = ddpm_model.manifest
    limit = manifest.weights.diffusion.trained_below
    assert resolve(Overrides(steps=limit), manifest, None).steps == limit
    with pytest.raises(ValueError, match="trained"):
        resolve(Overrides(steps=limit + 1), manifest, None)


def test_entry_is_a_diffusers_folder_with_a_checked_sha256(ddpm_registry, tmp_path) -> None:
    entry = ddpm_registry / "tiny-ddpm" / "1"
    preset = json.loads((entry / "preset.json").read_text())
    assert preset["purifier"] == {"family": "ddpm", "steps": 75}  # no eps or tau
    folder = Registry(ddpm_registry).weights_path(Registry(ddpm_registry).manifest("tiny-ddpm"))
    folder = folder.parent
    card = json.loads((entry / "calibration.json").read_text())["card"]
    # three updates of 8 images buy the smallest card: the shallowest t* on 4 images
    assert set(card) == {"25"} and "psnr_db" in card["25"] and "r sign 8/255" in card["25"]
    assert (entry / "samples.png").stat().st_size > 0
    # diffusers opens the same folder, and gets the same net
    unet = UNet2DModel.from_pretrained(folder, use_safetensors=True)
    loaded = Registry(ddpm_registry).load("tiny-ddpm")
    for (name, a), (_, b) in zip(
        unet.state_dict().items(), loaded.net.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    # a changed weight file is refused
    copy = tmp_path / "registry"
    shutil.copytree(ddpm_registry, copy)
    weights = copy / "_weights" / folder.name / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="sha256"):
        Registry(copy).load("tiny-ddpm")


@pytest.fixture(scope="module")
def both_registry(tmp_path_factory, tiny_registry, ddpm_registry) -> Path:
    """One registry holding the tiny EBM and the tiny DDPM."""
    root = tmp_path_factory.mktemp("both")
    for source in (tiny_registry, ddpm_registry):
        shutil.copytree(source, root, dirs_exist_ok=True)
    return root


def test_a_ddpm_job_runs_through_the_service_the_client_and_the_cli(
    both_registry, ddpm_model, tmp_path, cifar
):
    """A zip of mixed sizes, purified by the DDPM through the API (shards of 4), by
    the client and by `pureebm purify`: the same pixels member by member."""
    rng = np.random.default_rng(4)
    shapes = [(32, 32)] * 5 + [(24, 40), (32, 32), (50, 17)]
    images = [
        cifar["images"][i][:h, :w]
        if h <= 32 and w <= 32
        else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for i, (h, w) in enumerate(shapes)
    ]
    members = {f"img/{i}.png": png(image) for i, image in enumerate(images)}
    members["labels.csv"] = b"name,label\n"
    source = tmp_path / "data.zip"
    source.write_bytes(zip_bytes(members))
    (tmp_path / "stack").mkdir()
    stack = Stack(tmp_path / "stack", both_registry)
    try:
        stack.start_worker()
        with stack.client() as client:
            refused = client.post(
                "/v1/jobs",
                files={"archive": ("data.zip", source.read_bytes())},
                data={"model": "tiny-ddpm", "steps": "251"},
            )
            assert refused.status_code == 422 and "trained" in refused.text
        with PureEBMClient(stack.url, KEY_A) as client:
            job = client.purify(source, tmp_path / "api.zip", model="tiny-ddpm", steps=6, seed=3)
            assert job["status"] == "finished" and job["params"]["model"] == "tiny-ddpm:1"
            report = client.report(job["id"])
        stdout = pureebm_cli(
            "submit",
            str(source),
            "-o",
            str(tmp_path / "reps-api.zip"),
            "--url",
            stack.url,
            "--api-key",
            KEY_A,
            "--model",
            "tiny",
            *REPS_OPTIONS,
        )
        assert "purified 8 of 8 images" in stdout
    finally:
        stack.stop()
    pureebm_cli(
        "purify",
        str(source),
        "-o",
        str(tmp_path / "reps-cli.zip"),
        "--model",
        "tiny",
        "--registry",
        str(both_registry),
        "--device",
        "cpu",
        *REPS_OPTIONS,
    )
    pureebm_cli(
        "purify",
        str(source),
        "-o",
        str(tmp_path / "cli.zip"),
        "--model",
        "tiny-ddpm",
        "--registry",
        str(both_registry),
        "--steps",
        "6",
        "--seed",
        "3",
        "--device",
        "cpu",
    )
    pictures = [
        (n, Picture(np.asarray(Image.open(io.BytesIO(members[n]))), None, "RGB", "PNG"))
        for n in members
        if n.endswith(".png")
    ]
    expected = {item.name: item for item in run(ddpm_model, pictures, 6, seed=3)}
    scores = {row["name"]: row for row in report["images"]}
    for path in (tmp_path / "api.zip", tmp_path / "cli.zip"):
        with zipfile.ZipFile(path) as archive:
            assert archive.namelist() == list(members)
            assert archive.read("labels.csv") == members["labels.csv"]
            for name, item in expected.items():
                out = np.asarray(Image.open(io.BytesIO(archive.read(name))))
                assert out.shape == item.rgb.shape
                assert np.abs(out.astype(int) - item.rgb).max() <= 1, name
    for name, item in expected.items():
        assert scores[name]["energy_before"] == pytest.approx(item.energy_before, rel=1e-4)
    ebm = Registry(both_registry).load("tiny")
    ebm_phase = {**ebm.manifest.purifier.model_dump(exclude={"family"}), "steps": 2}
    spec = RepsSpec(**ebm_phase, ddpm_model="tiny-ddpm:1", rounds=2, ddpm_steps=3)
    reps = purifier_for(spec, ebm, lambda ref: ddpm_model)
    combined = purify_pictures(reps, pictures, seed=5)
    for item in combined:
        for path in (tmp_path / "reps-api.zip", tmp_path / "reps-cli.zip"):
            with zipfile.ZipFile(path) as archive:
                out = np.asarray(Image.open(io.BytesIO(archive.read(item.name))))
            assert np.abs(out.astype(int) - item.rgb).max() <= 1, (path, item.name)


REPS_OPTIONS = [
    "--ddpm-model",
    "tiny-ddpm",
    "--rounds",
    "2",
    "--ddpm-steps",
    "3",
    "--steps",
    "2",
    "--seed",
    "5",
]


def test_reps_is_the_two_purifiers_in_turn_with_their_own_noise(tiny_model, ddpm_model) -> None:
    """One round of Reps is the EBM's chain, then the DDPM's, each seeded by
    derived_seed(seed, round, phase); two rounds apply that twice."""
    items = pictures(np.random.default_rng(6), [(32, 32)] * 3)
    spec = RepsSpec(steps=3, eps=0.01, tau=1.0, ddpm_model="tiny-ddpm:1", rounds=2, ddpm_steps=4)
    combined = purify_pictures(
        purifier_for(spec, tiny_model, lambda ref: ddpm_model), items, seed=9
    )
    ebm = purifier_for(LangevinSpec(steps=3, eps=0.01, tau=1.0), tiny_model, None)
    by_hand = items
    for round_ in range(2):
        langevin = purify_pictures(ebm, by_hand, seed=derived_seed(9, round_, 0))
        middle = [(i.name, i.picture) for i in langevin]
        ddpm = purify_pictures(
            purifier_of(ddpm_model, steps=4), middle, seed=derived_seed(9, round_, 1)
        )
        by_hand = [(i.name, i.picture) for i in ddpm]
    energies = purify_pictures(purifier_of(tiny_model, steps=0), items, seed=0)
    for got, (_, want), before in zip(combined, by_hand, energies, strict=True):
        assert np.abs(got.rgb.astype(int) - want.rgb).max() <= 1
        assert got.energy_before == pytest.approx(before.energy_before, rel=1e-5)
    manifests = {"tiny-ddpm": ddpm_model.manifest, "tiny": tiny_model.manifest}

    def load(ref: str):
        return manifests[ref.partition(":")[0]]

    resolved = resolve(Overrides(ddpm_model="tiny-ddpm", rounds=2), tiny_model.manifest, load)
    assert (resolved.family, resolved.ddpm_model, resolved.ddpm_steps) == (
        "reps",
        "tiny-ddpm:1",
        75,
    )
    with pytest.raises(ValueError, match="EBM"):
        resolve(Overrides(ddpm_model="tiny"), tiny_model.manifest, load)
    with pytest.raises(ValueError, match="rounds: not a parameter"):
        resolve(Overrides(rounds=3), tiny_model.manifest, load)


def test_ddpm_training_resumes_exactly_where_it_stopped(tmp_path) -> None:
    """Two updates, a stop, two more from the checkpoint: the same weights as four
    straight (the checkpoint holds the weights, Adam's moments and the generator)."""
    from pureebm.params import TrainConfig
    from pureebm.training import train
    from tests.conftest import DATA, TINY_UNET

    def config(run: str, iterations: int) -> TrainConfig:
        return TrainConfig(
            data=[str(DATA)],
            name="d",
            recipe="ddpm",
            unet=TINY_UNET,
            iterations=iterations,
            batch_size=4,
            warmup=1,
            checkpoint_every=2,
            crop_padding=2,
            calibrate_images=0,
            out_dir=str(tmp_path / run),
            registry=str(tmp_path / f"{run}-registry"),
        )

    straight = train(config("straight", 4))
    train(config("stopped", 2))
    resumed = train(config("stopped", 4), resume=True)
    assert straight.weights.training.iterations == resumed.weights.training.iterations == 4
    a = Registry(tmp_path / "straight-registry").load("d").net.state_dict()
    b = Registry(tmp_path / "stopped-registry").load("d:2").net.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "stopped" / "curves.png").stat().st_size > 0
