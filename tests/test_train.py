"""Short real training runs: registry entry, figures, checkpoint resume, denoising
score matching, calibration at registration."""

from __future__ import annotations

import copy
import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pureebm.containers import load_image_array
from pureebm.diffusion import unet_with_channels
from pureebm.images import Picture
from pureebm.langevin import purify, to_unit_range
from pureebm.params import TrainConfig
from pureebm.pipeline import purify_pictures
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.registry import Registry
from pureebm.training import train, training_run
from pureebm.training.data import PHOTOGRAPHS, as_training_images, photograph_crops
from pureebm.training.ebm import EBMObjective
from pureebm.training.loop import CHECKPOINT, learning_rate
from tests.conftest import DATA, purifier_of


def test_training_registers_a_loadable_model_with_its_record(tiny_registry):
    manifest = Registry(tiny_registry).manifest("tiny")
    assert manifest.weights.training.iterations == 3
    assert manifest.weights.training.command == "pytest fixture"
    assert "cifar64.npz" in manifest.weights.training.data and manifest.image_size == 32
    assert (tiny_registry / "tiny" / "1" / "samples.png").stat().st_size > 0
    weights = Registry(tiny_registry).weights_path(manifest)
    assert (weights.parent / "curves.png").stat().st_size > 0
    loaded = Registry(tiny_registry).load("tiny")
    assert loaded.net(torch.zeros(1, 3, 32, 32)).shape == (1,)


def test_resume_continues_from_the_checkpoint(tmp_path):
    base = dict(
        data=[str(DATA)],
        name="r",
        n_f=4,
        batch_size=4,
        mcmc_steps=2,
        warmup=1,
        checkpoint_every=2,
        out_dir=str(tmp_path / "run"),
        registry=str(tmp_path / "reg"),
        holdout=16,
        crop_padding=2,
        calibrate_images=0,
    )
    train(TrainConfig(**base, iterations=2))
    assert (tmp_path / "run" / CHECKPOINT).exists()
    assert (tmp_path / "run" / "step000002-pairs.png").exists()
    assert (tmp_path / "run" / "curves.png").exists()
    manifest = train(TrainConfig(**base, iterations=4), resume=True)
    assert manifest.weights.training.iterations == 4 and manifest.version == 2
    assert "48 images (last 16 held out)" in manifest.weights.training.data
    history = json.loads(json.dumps(manifest.model_dump(mode="json")))
    assert history["weights"]["training"]["wall_time_s"] >= 0


def test_learning_rate_warms_up_then_decays_to_its_floor():
    config = TrainConfig(data=[], lr=1e-3, lr_final=1e-5, warmup=10, iterations=110)
    rates = [learning_rate(config, step) for step in range(110)]
    assert rates[0] == 1e-4 and rates[9] == 1e-3
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert abs(rates[-1] - 1e-5) < 1e-6


def test_a_time_budget_runs_the_cosine_on_time_and_ends_it_at_the_budget():
    config = TrainConfig(
        data=[], lr=1e-3, lr_final=1e-5, warmup=10, iterations=10**9, max_seconds=100.0
    )
    assert learning_rate(config, 50, wall_time=0.0) == pytest.approx(1e-3)
    halfway = 1e-5 + (1e-3 - 1e-5) * 0.5
    assert learning_rate(config, 50, wall_time=50.0) == pytest.approx(halfway)
    assert learning_rate(config, 50, wall_time=100.0) == pytest.approx(1e-5)
    assert learning_rate(config, 50, wall_time=250.0) == pytest.approx(1e-5)


def test_a_time_bounded_run_stops_checkpoints_and_registers(tmp_path):
    config = TrainConfig(
        data=[str(DATA)],
        name="timed",
        n_f=4,
        batch_size=4,
        mcmc_steps=2,
        warmup=1,
        iterations=10**9,
        max_seconds=0.5,
        checkpoint_every=10**9,
        out_dir=str(tmp_path / "run"),
        registry=str(tmp_path / "reg"),
        holdout=16,
        calibrate_images=0,
    )
    manifest = train(config)
    assert 0 < manifest.weights.training.iterations < 10**9
    assert manifest.weights.training.wall_time_s >= 0.5
    snapshot = f"weights-step{manifest.weights.training.iterations:06d}.safetensors"
    assert (tmp_path / "run" / snapshot).exists()


def test_denoising_score_matching_learns_to_denoise(tmp_path, cifar):
    """After a short DSM run one step along -grad E, x~ - sigma^2 grad E(x~) / tau,
    brings noisy held-out images closer to their clean originals (Tweedie's
    formula), which an untrained net does not."""
    sigma = 0.1
    config = TrainConfig(
        data=[str(DATA)],
        name="dsm",
        recipe="dsm",
        n_f=8,
        iterations=150,
        batch_size=16,
        lr=2e-3,
        lr_final=2e-3,
        warmup=1,
        tau=1.0,
        sigma_min=sigma,
        sigma_max=sigma,
        holdout=16,
        calibrate_images=0,
        checkpoint_every=150,
        out_dir=str(tmp_path / "run"),
        registry=str(tmp_path / "reg"),
    )
    trainer = training_run(config)
    untrained = copy.deepcopy(trainer.net)
    trainer.run()
    clean = to_unit_range(torch.from_numpy(cifar["images"][-16:]).permute(0, 3, 1, 2))
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))

    def denoising_error(net: torch.nn.Module) -> float:
        x = noisy.clone().requires_grad_(True)
        (grad_e,) = torch.autograd.grad(net(x).sum(), x)
        return (x - sigma**2 * grad_e - clean).pow(2).mean().item()

    noisy_error = (noisy - clean).pow(2).mean().item()
    assert denoising_error(trainer.net) < 0.8 * noisy_error
    assert denoising_error(untrained) > 0.95 * noisy_error


def test_dsm_then_ml_switches_recipe_at_the_pretraining_length():
    objective = EBMObjective(TrainConfig(data=[], recipe="dsm+ml", pretrain_iterations=5))
    assert objective.uses_dsm(4)
    assert not objective.uses_dsm(5)


def test_blocky_dsm_noise_is_constant_on_its_blocks_with_unit_variance(tmp_path):
    config = TrainConfig(data=[str(DATA)], noise_blocks=[4], out_dir=str(tmp_path), bank_size=8)
    run = training_run(config)
    noise = run.objective.dsm_noise(run, torch.Size((64, 3, 32, 32)))
    coarse = noise[:, :, ::4, ::4]
    assert torch.equal(coarse.repeat_interleave(4, 2).repeat_interleave(4, 3), noise)
    assert coarse.var().item() == pytest.approx(1.0, abs=0.05)


def test_calibration_at_registration_records_the_recommended_settings(tmp_path):
    config = TrainConfig(
        data=[str(DATA)],
        name="cal",
        recipe="dsm",
        n_f=4,
        iterations=2,
        batch_size=4,
        warmup=1,
        tau=1.0,
        holdout=8,
        calibrate_images=4,
        checkpoint_every=2,
        out_dir=str(tmp_path / "run"),
        registry=str(tmp_path / "reg"),
    )
    manifest = train(config)
    record = json.loads((tmp_path / "reg" / "cal" / "1" / "calibration.json").read_text())
    assert record["recommended"]["steps"] == manifest.purifier.steps
    assert record["recommended"]["eps"] == manifest.purifier.eps
    assert record["recommended"]["tau"] == manifest.purifier.tau
    # two updates of 4 images buy the smallest calibration: one setting, 4 images, T = 1
    assert record["images"] == 4
    assert [(row["tau"], row["steps"]) for row in record["table"]] == [(1.0, 1)]


def test_small_grey_images_train_a_one_channel_model_that_purifies_them(tmp_path, cifar):
    """28 x 28 grey images (Fashion-MNIST's shape): a 1-channel model padded to 32
    pixels, and the pipeline purifies the same images at their own size."""
    grey = cifar["images"][:, 2:30, 2:30].mean(3).round().astype(np.uint8)
    data = tmp_path / "grey.npz"
    np.savez(data, images=grey, labels=cifar["labels"])
    config = TrainConfig(
        data=[str(data)],
        name="grey",
        n_f=4,
        iterations=2,
        batch_size=4,
        mcmc_steps=2,
        warmup=1,
        holdout=8,
        calibrate_images=0,
        checkpoint_every=2,
        out_dir=str(tmp_path / "run"),
        registry=str(tmp_path / "reg"),
    )
    manifest = train(config)
    assert (manifest.channels, manifest.image_size) == (1, 32)
    model = Registry(tmp_path / "reg").load("grey")
    rgb = np.repeat(grey[:3, :, :, None], 3, axis=3)
    pictures = [(str(i), Picture(image, None, "L", "NPZ")) for i, image in enumerate(rgb)]
    out = list(purify_pictures(purifier_of(model, steps=2), pictures, seed=0))
    assert all(item.rgb.shape == (28, 28, 3) for item in out)
    assert all(np.array_equal(item.rgb[..., 0], item.rgb[..., 1]) for item in out)


def test_pureebm_calibrate_registers_the_same_weights_with_new_defaults(tmp_path, tiny_registry):
    """`pureebm calibrate` chooses (eps, tau, T) on held-out images and adds them as
    the name's next preset, naming the same weights (stored once) and the preset it
    was calibrated from; the default does not move."""
    from pureebm.cli import main

    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    main(["calibrate", "tiny:1", str(DATA), "--images", "4", "--registry", str(root)])
    registry = Registry(root)
    old, new = registry.manifest("tiny:1"), registry.manifest("tiny")
    assert new.version == 2
    assert new.weights == old.weights and new.derived_from == "tiny:1"
    assert len(list((root / "_weights").iterdir())) == 1  # stored once
    assert not (root / "tiny" / "2" / "model.safetensors").exists()
    assert registry.default_ref() == "tiny:1"  # publishing a preset moves no default
    record = json.loads((root / "tiny" / "2" / "calibration.json").read_text())
    assert record["images"] == 4
    assert new.purifier == LangevinSpec(**record["recommended"])
    chosen = [
        row
        for row in record["table"]
        if (row["eps"], row["tau"], row["steps"])
        == (new.purifier.eps, new.purifier.tau, new.purifier.steps)
    ]
    assert chosen and chosen[0]["residual"] == record["residual"]
    assert (root / "tiny" / "2" / "samples.png").stat().st_size > 0
    model = registry.load("tiny")
    assert model.manifest.version == 2
    # filter=auto's threshold: the median energy of the same held-out images
    heldout = as_training_images(load_image_array(DATA)[-4:]).permute(0, 3, 1, 2)
    energies = purify(model.net, heldout, LangevinSpec(steps=0)).energy_before
    assert new.energy_threshold == pytest.approx(float(np.median(energies.numpy())), rel=1e-5)
    assert old.energy_threshold is None
    # one pinned setting: only T is chosen, and the pinned (eps, tau) become the defaults
    pinned = ["--eps", "0.01", "--tau", "0.0005"]
    main(["calibrate", "tiny:1", str(DATA), "--images", "4", "--registry", str(root), *pinned])
    third = registry.manifest("tiny:3")
    assert (third.purifier.eps, third.purifier.tau) == (0.01, 0.0005)
    record = json.loads((root / "tiny" / "3" / "calibration.json").read_text())
    assert {(row["eps"], row["tau"]) for row in record["table"]} == {(0.01, 0.0005)}
    # a setting chosen by the defence evaluation: T pinned too, with a default filter
    chosen = [*pinned, "--steps", "3", "--filter", "0.5"]
    main(["calibrate", "tiny:1", str(DATA), "--images", "4", "--registry", str(root), *chosen])
    fourth = registry.manifest("tiny:4")
    assert (fourth.purifier.steps, fourth.filter) == (3, 0.5)
    assert fourth.energy_threshold == new.energy_threshold  # the same held-out images
    with pytest.raises(SystemExit, match="go together"):
        main(["calibrate", "tiny:1", str(DATA), "--registry", str(root), "--eps", "0.01"])


def tiny_ddpm(tmp_path, run: str, **fields) -> TrainConfig:
    return TrainConfig(
        data=[str(DATA)],
        name="lineage",
        recipe="ddpm",
        unet=unet_with_channels([8, 16]),
        batch_size=4,
        warmup=1,
        holdout=16,
        calibrate_images=0,
        out_dir=str(tmp_path / run),
        registry=str(tmp_path / "reg"),
        **fields,
    )


def test_the_registered_weights_are_the_exponential_moving_average(tmp_path):
    """After two updates w1, w2 the EMA at decay d is d w1 + (1 - d) w2 (the first
    update is copied as it is)."""
    decay = 0.75
    config = tiny_ddpm(tmp_path, "run", iterations=2, ema_decay=decay, checkpoint_every=1)
    manifest = train(config)
    w1, w2 = (load_file(tmp_path / "run" / f"weights-step{s:06d}.safetensors") for s in (1, 2))
    registered = load_file(Registry(tmp_path / "reg").weights_path(manifest))
    assert set(registered) == set(w2)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    for k in registered:
        torch.testing.assert_close(registered[k], decay * w1[k] + (1 - decay) * w2[k])


def test_a_run_from_an_entry_starts_at_its_weights_and_extends_its_lineage(tmp_path):
    first = train(tiny_ddpm(tmp_path, "first", iterations=3))
    run = training_run(tiny_ddpm(tmp_path, "second", iterations=2, init_from="lineage"))
    registered = load_file(Registry(tmp_path / "reg").weights_path(first))
    assert all(torch.equal(v, registered[k]) for k, v in run.net.state_dict().items())
    second = run.run()
    assert second.version == 2 and second.weights.training.resumed_from == "lineage:1"
    visits = second.weights.training.visits
    assert [v.iterations for v in visits] == [3, 2]
    assert second.weights.training.total_iterations == 5
    assert second.weights.arch_kwargs == first.weights.arch_kwargs
    assert "resumed from lineage:1" in second.description


def test_a_run_from_an_entry_of_another_image_size_is_refused(tmp_path, cifar):
    train(tiny_ddpm(tmp_path, "first", iterations=1))
    large = tmp_path / "large.npz"
    np.savez(large, images=cifar["images"].repeat(2, axis=1).repeat(2, axis=2))
    config = tiny_ddpm(tmp_path, "second", iterations=1, init_from="lineage")
    config.data = [str(large)]
    with pytest.raises(ValueError, match="64"):
        training_run(config)


def test_photograph_crops_draw_from_every_free_photograph_and_are_counted() -> None:
    crops, counts = photograph_crops(400, 32, seed=0)
    assert crops.shape == (400, 32, 32, 3) and crops.dtype == np.uint8
    assert set(counts) == {name for _, name, _ in PHOTOGRAPHS} and sum(counts.values()) == 400
    assert all(n > 0 for n in counts.values())
    again, _ = photograph_crops(400, 32, seed=0)
    assert np.array_equal(crops, again)


def test_an_ebm_run_from_an_entry_registers_the_entrys_architecture(tmp_path):
    common = dict(data=[str(DATA)], name="ebm", recipe="dsm", batch_size=4, warmup=1,
                  holdout=16, calibrate_images=0, registry=str(tmp_path / "reg"))  # fmt: skip
    first = train(TrainConfig(**common, architecture="resnet", n_f=8, iterations=1,
                              out_dir=str(tmp_path / "a")))  # fmt: skip
    second = train(
        TrainConfig(**common, init_from="ebm", iterations=1, out_dir=str(tmp_path / "b"))
    )  # the config's conv, n_f 32 unused
    assert second.weights.architecture == "resnet"
    assert second.weights.arch_kwargs == first.weights.arch_kwargs
    assert Registry(tmp_path / "reg").load("ebm:2").net(torch.zeros(1, 3, 32, 32)).shape == (1,)
