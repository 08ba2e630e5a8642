"""Attacks stay within their bounds and change labels as documented; poison success is
computed right; the whole evaluation runs end to end on a tiny configuration."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pureebm.augment import flip_and_crop
from pureebm.evaluation import attacks
from pureebm.evaluation.classifier import cnn_bn4, predict, to_tensor, train_classifier
from pureebm.evaluation.config import VICTIMS, EvalConfig, TrainSettings
from pureebm.evaluation.defences import cached, pureebm, purified
from pureebm.evaluation.run import Defender, auroc, evaluate, trigger_left
from pureebm.images import Picture
from pureebm.pipeline import purify_pictures
from pureebm.purifiers.jpeg import jpeg_roundtrip
from pureebm.purifiers.langevin import LangevinSpec
from tests.conftest import purifier_of

FAST = TrainSettings(epochs=1, batch_size=16, device="cpu")


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.flatnonzero((a != b).reshape(len(a), -1).any(1))


def test_narcissus_is_clean_label_and_bounded(cifar):
    images, labels = cifar["images"], cifar["labels"]
    target = int(labels[0])
    surrogate = train_classifier(images, labels, FAST)
    result = attacks.narcissus(
        images, labels, target, 8 / 255, 0.05, seed=0, surrogate=surrogate, steps=5
    )
    assert np.array_equal(result.labels, labels)
    assert set(changed(images, result.images)) <= set(result.poisoned)
    assert all(labels[result.poisoned] == target) and len(result.poisoned) >= 1
    assert np.abs(result.images.astype(int) - images.astype(int)).max() <= 8
    triggered = result.trigger(images)
    assert 0 < np.abs(triggered.astype(int) - images.astype(int)).max() <= 8


def test_published_narcissus_optimises_through_augmentations_and_amplifies_at_test(cifar):
    """The published construction (flips and padded crops at every step) gives another
    trigger than the pixel-grid one from the same seed; another seed gives another
    trigger; x3 at test triples the pattern (clipped), the poisons stay within eps."""
    images, labels = cifar["images"], cifar["labels"]
    target = int(labels[0])
    surrogate = train_classifier(images, labels, FAST)

    def pattern(**kwargs) -> np.ndarray:
        result = attacks.narcissus(
            images, labels, target, 8 / 255, 0.05, surrogate=surrogate, steps=5, **kwargs
        )
        flat = np.full_like(images[:1], 128)
        return result.trigger(flat).astype(int)[0] - 128

    published, grid = pattern(seed=0), pattern(seed=0, augment=False)
    assert np.abs(published).max() <= 8 and np.abs(grid).max() <= 8
    assert not np.array_equal(published, grid)
    assert not np.array_equal(published, pattern(seed=1))
    np.testing.assert_array_equal(pattern(seed=0, amplify=3.0), 3 * published)


def test_the_outside_construction_takes_signed_steps_of_a_twentieth_of_eps(cifar):
    """narcissus-pgd from zero: after k signed steps every pixel of delta is a multiple
    of eps/20 of size at most k eps/20 (and eps); the poisons keep their labels and
    their L-inf bound; the trigger moves the surrogate toward the target."""
    images, labels = cifar["images"], cifar["labels"]
    target, eps = int(labels[0]), 16 / 255
    surrogate = train_classifier(images, labels, FAST)
    flat = np.full_like(images[:1], 128)

    def delta(steps: int) -> np.ndarray:
        result = attacks.narcissus_pgd(images, labels, target, eps, 0.05, 0, surrogate, steps)
        assert np.array_equal(result.labels, labels) and all(labels[result.poisoned] == target)
        assert set(changed(images, result.images)) <= set(result.poisoned)
        assert np.abs(result.images.astype(int) - images.astype(int)).max() <= 16
        return result.trigger(flat).astype(int)[0] - 128

    for steps in (1, 3):
        moved = np.abs(delta(steps))
        assert moved.max() <= round(steps * 255 * eps / 20) + 1 and moved.max() > 0
    long = delta(40)
    assert np.abs(long).max() == 16  # saturated at eps

    def target_share(x: np.ndarray) -> float:
        return float(np.mean(predict(surrogate, x) == target))

    others = images[labels != target]
    triggered = np.clip(others.astype(int) + long, 0, 255).astype(np.uint8)
    assert target_share(triggered) > target_share(others)


def test_one_crop_offset_per_batch_shifts_every_image_alike():
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(1, 3, 8, 8)
    batch = image.repeat(16, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    alike = flip_and_crop(batch, generator, flip=False, pad=2, one_offset=True)
    assert all(torch.equal(alike[0], crop) for crop in alike)
    apart = flip_and_crop(batch, generator, flip=False, pad=2)
    assert not all(torch.equal(apart[0], crop) for crop in apart)


def test_the_outside_victim_is_four_bias_free_convolutions_and_a_max_pool():
    net = cnn_bn4(10)
    convolutions = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convolutions] == [32, 64, 128, 256]
    assert all(c.bias is None for c in convolutions)
    assert any(isinstance(m, torch.nn.AdaptiveMaxPool2d) for m in net.modules())
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_larger_crafting_budget_saturates_the_trigger(cifar):
    """Each Adam step moves the trigger by about a tenth of eps: two steps leave no
    pixel at the bound, forty push most of them there (what an energy ranks)."""
    images, labels = cifar["images"], cifar["labels"]
    target = int(labels[0])
    surrogate = train_classifier(images, labels, FAST)

    def saturated(steps: int) -> float:
        result = attacks.narcissus(images, labels, target, 8 / 255, 0.05, 0, surrogate, steps)
        pattern = result.trigger(np.full_like(images[:1], 128)).astype(int)[0] - 128
        return float((np.abs(pattern) == 8).mean())

    assert saturated(2) == 0
    assert saturated(40) > 0.5


def test_the_defence_aware_narcissus_keeps_its_poisons_energy_down(cifar, tiny_model):
    """Given the defender's EBM, the trigger raises the poisons' energy less than the
    same attack built without it (same seed), so an energy ranking finds them less."""
    images, labels = cifar["images"], cifar["labels"]
    target = int(labels[0])
    surrogate = train_classifier(images, labels, FAST)

    def raised(**kwargs) -> float:
        result = attacks.narcissus(
            images, labels, target, 16 / 255, 0.1, 0, surrogate, steps=20, **kwargs
        )
        chosen = torch.from_numpy(images[result.poisoned]).permute(0, 3, 1, 2).float()
        poisons = torch.from_numpy(result.images[result.poisoned]).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            return float(
                (tiny_model.net(poisons / 127.5 - 1) - tiny_model.net(chosen / 127.5 - 1)).mean()
            )

    assert raised(energy=tiny_model.net) < raised()


def test_gradient_matching_is_clean_label_bounded_and_aligns_the_gradients(cifar):
    """Witches' Brew: only target-class images change, within eps, labels kept; its
    victims are test images of other classes; and the poisons' training gradient
    points closer to the victims' adversarial gradient than the clean images' did."""
    images, labels = cifar["images"][:48], cifar["labels"][:48]
    test_x, test_y = cifar["images"][48:], cifar["labels"][48:]
    target = int(labels[0])
    surrogate = train_classifier(images, labels, FAST)
    result = attacks.gradient_matching(
        images,
        labels,
        target,
        16 / 255,
        0.1,
        0,
        surrogate,
        test_x,
        test_y,
        victims=2,
        steps=15,
        restarts=2,
    )
    assert np.array_equal(result.labels, labels)
    assert set(changed(images, result.images)) <= set(result.poisoned)
    assert all(labels[result.poisoned] == target) and len(result.poisoned) >= 1
    assert np.abs(result.images.astype(int) - images.astype(int)).max() <= 16
    assert len(result.victims) == 2 and all(test_y[result.victims] != target)
    assert np.array_equal(result.trigger(test_x), test_x)  # triggerless

    def gradient(x: np.ndarray, labels_: torch.Tensor) -> torch.Tensor:
        surrogate.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(surrogate(to_tensor(x)), labels_)
        grads = torch.autograd.grad(loss, list(surrogate.parameters()))
        surrogate.requires_grad_(False)
        return torch.cat([g.flatten() for g in grads])

    wanted = gradient(test_x[result.victims], torch.full((2,), target))
    poisons = torch.full((len(result.poisoned),), target)
    before = torch.cosine_similarity(gradient(images[result.poisoned], poisons), wanted, dim=0)
    after = torch.cosine_similarity(
        gradient(result.images[result.poisoned], poisons), wanted, dim=0
    )
    assert after > before


def test_der_and_the_worst_case_on_hand_built_runs():
    from pureebm.evaluation.run import der, worst_case

    none = {"poison_success": 0.6, "natural_accuracy": 0.8}
    assert der(none, {"poison_success": 0.1, "natural_accuracy": 0.75}) == pytest.approx(0.725)
    assert der(none, none) == 0.5  # no change
    assert der(none, {"poison_success": 0.7, "natural_accuracy": 0.9}) == 0.5  # worse: floored
    summary = {
        "8/255": {"a": {"poison_success": 0.2, "natural_accuracy": 0.7}},
        "16/255": {"a": {"poison_success": 0.5, "natural_accuracy": 0.6}},
    }
    assert worst_case(summary)["a"]["strength"] == "16/255"


@pytest.mark.parametrize("clean_label", [False, True])
def test_patch_changes_only_the_corner_and_labels_as_documented(cifar, clean_label):
    images, labels = cifar["images"], cifar["labels"]
    result = attacks.patch(images, labels, 3, 0.1, seed=1, clean_label=clean_label)
    assert len(result.poisoned) == round(0.1 * len(images))
    assert set(changed(images, result.images)) <= set(result.poisoned)
    diff = result.images.astype(int) - images.astype(int)
    assert not diff[:, :-3, :].any() and not diff[:, :, :-3].any()  # only the 3x3 corner
    assert all(result.labels[result.poisoned] == 3)
    if clean_label:
        assert np.array_equal(result.labels, labels)
    else:
        assert all(labels[result.poisoned] != 3)
        untouched = np.setdiff1d(np.arange(len(labels)), result.poisoned)
        assert np.array_equal(result.labels[untouched], labels[untouched])


def test_blend_is_dirty_label_and_bounded_by_alpha(cifar):
    images, labels = cifar["images"], cifar["labels"]
    result = attacks.blend(images, labels, 2, 0.1, seed=2, alpha=0.1)
    assert all(result.labels[result.poisoned] == 2) and all(labels[result.poisoned] != 2)
    assert np.abs(result.images.astype(int) - images.astype(int)).max() <= 26


@pytest.mark.parametrize("architecture", VICTIMS)
def test_every_victim_the_cli_offers_learns_a_small_set(cifar, architecture):
    images, labels = cifar["images"][:16], cifar["labels"][:16]
    settings = TrainSettings(architecture=architecture, epochs=25, batch_size=8, lr=0.05)
    predictions = predict(train_classifier(images, labels, settings), images)
    assert np.mean(predictions == labels) > 0.5  # chance on 10 classes: 0.1


def test_poison_success_on_a_hand_built_case():
    predictions = np.array([7, 7, 1, 7, 0])
    true_labels = np.array([0, 1, 2, 7, 7])  # the two target-class images do not count
    assert attacks.poison_success(predictions, true_labels, 7) == pytest.approx(2 / 3)


def test_defences_jpeg_changes_pixels_and_pureebm_sweeps_one_pipeline_chain(cifar, tiny_model):
    images = cifar["images"][:8]
    jpeg = np.stack([jpeg_roundtrip(image, 75) for image in images])
    assert jpeg.shape == images.shape and not np.array_equal(jpeg, images)
    params = LangevinSpec(steps=99)  # the sweep sets T to its longest chain
    defended, energies = pureebm(tiny_model, images, params, [1, 3], device="cpu")
    for steps in (1, 3):  # each equals a separate chain of that length through the pipeline
        pictures = ((str(i), Picture(image, None, "RGB", "NPZ")) for i, image in enumerate(images))
        results = list(purify_pictures(purifier_of(tiny_model, steps=steps), pictures, seed=0))
        assert np.array_equal(defended[steps], np.stack([p.rgb for p in results]))
        assert np.allclose(energies, [p.energy_before for p in results], atol=1e-6)
    assert not np.array_equal(defended[1], defended[3])
    small = np.ascontiguousarray(images[:, :20, :24])  # under the model's 32 pixels
    assert pureebm(tiny_model, small, params, [3], device="cpu")[0][3].shape == small.shape


def test_evaluation_end_to_end_on_a_tiny_configuration(tmp_path, cifar, tiny_registry):
    data = tmp_path / "set.npz"
    np.savez(data, images=cifar["images"], labels=cifar["labels"])
    config = EvalConfig(
        train=str(data),
        test_fraction=0.25,
        attack="patch",
        poison_fraction=0.1,
        eps=[8 / 255, 16 / 255],  # a patch has no strength: it runs once, at the first
        targets=[1, 2],
        seeds=[0],
        defences=["none", "jpeg:75", "pureebm:3"],
        sweep=[0],
        classifier=FAST,
        model="tiny",
        registry=str(tiny_registry),
        out=str(tmp_path / "out"),
    )
    result = evaluate(config)
    # clean, none, then jpeg:75, pureebm:3 and pureebm:0 each with its '+test' row, per target
    assert len(result["rows"]) == 2 * 8
    for row in result["rows"]:
        assert 0 <= row["natural_accuracy"] <= 1 and 0 <= row["poison_success"] <= 1
        assert 0 <= row["base_rate"] <= 1
    rows = {(r["target"], r["defence"]): r for r in result["rows"]}
    for target in (1, 2):  # pureebm:0 is the undefended set, trained with the same seed
        assert rows[target, "pureebm:0"] == {**rows[target, "none"], "defence": "pureebm:0"}
        assert rows[target, "none"]["trigger_left"] == 1.0
        measured = {k: rows[target, "none"][k] for k in ("natural_accuracy", "poison_success")}
        assert {k: rows[target, "pureebm:0 +test"][k] for k in measured} == measured
        assert rows[target, "jpeg:75"]["psnr"] < 99 and rows[target, "jpeg:75"]["trigger_left"] > 0
    for name in ("results.json", "results.md", "results.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    summary = json.loads((tmp_path / "out" / "results.json").read_text())["summary"]
    assert summary["8/255"]["clean"]["runs"] == 2
    differences = [
        rows[t, "jpeg:75"]["poison_success"] - rows[t, "none"]["poison_success"] for t in (1, 2)
    ]
    jpeg_row = summary["8/255"]["jpeg:75"]
    assert jpeg_row["poison_success_vs_none"] == pytest.approx(np.mean(differences))
    assert "natural_accuracy_vs_none" not in summary["8/255"]["none"]
    assert "| 8/255 | pureebm:3 |" in (tmp_path / "out" / "results.md").read_text()


def test_a_targeted_attack_is_measured_on_its_victims_with_der_and_worst_case(
    tmp_path, cifar, tiny_registry
):
    data = tmp_path / "set.npz"
    np.savez(data, images=cifar["images"], labels=cifar["labels"])
    config = EvalConfig(
        train=str(data),
        test_fraction=0.25,
        attack="gradient-matching",
        poison_fraction=0.1,
        restarts=1,
        eps=[16 / 255],
        targets=[1],
        seeds=[0],
        defences=["none", "jpeg:quality=75"],
        classifier=FAST,
        model="tiny",
        registry=str(tiny_registry),
        out=str(tmp_path / "out"),
        defend_test=False,
    )
    result = evaluate(config)
    # no '+test' rows: clean, none and the defence
    assert [r["defence"] for r in result["rows"]] == ["clean", "none", "jpeg:quality=75"]
    # one victim per poison set: it is classified as the target or not
    assert {r["poison_success"] for r in result["rows"]} <= {0.0, 1.0}
    assert "der" in result["summary"]["16/255"]["jpeg:quality=75"]
    assert result["worst_case"]["none"]["strength"] == "16/255"
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| worst: 16/255 | jpeg:quality=75 |" in table


def tiny_defender(registry, images: np.ndarray, defences: list[str]) -> Defender:
    """A Defender of ``images`` with the tiny model (its clean set defended at once)."""
    config = EvalConfig(
        train="", defences=defences, model="tiny", registry=str(registry), classifier=FAST
    )
    return Defender(config, images)


def test_the_defender_purifies_at_the_models_default_t_and_only_redoes_poisons(
    cifar, tiny_registry
):
    images, labels = cifar["images"][:24], cifar["labels"][:24]
    defender = tiny_defender(tiny_registry, images, ["none", "pureebm", "jpeg:75"])
    poisoned = attacks.patch(images, labels, 3, 0.25, seed=0, clean_label=False)
    defended, _ = defender.defend_all(poisoned)
    assert list(defended) == ["none", "pureebm", "jpeg:75"]
    assert np.array_equal(defended["none"], poisoned.images)
    purified = defended["pureebm"]  # 'pureebm' alone: the model's T
    assert not np.array_equal(purified, poisoned.images)
    untouched = np.setdiff1d(np.arange(len(images)), poisoned.poisoned)
    assert np.array_equal(purified[untouched], defender.clean_defended["pureebm"][untouched])
    jpeg = np.stack([jpeg_roundtrip(image, 75) for image in poisoned.images])
    assert np.array_equal(defended["jpeg:75"], jpeg)


def test_defences_joined_by_a_chevron_run_one_after_the_other(cifar, tiny_registry):
    images = cifar["images"][:12]
    defender = tiny_defender(
        tiny_registry, images, ["jpeg:40", "jpeg:40>langevin:steps=2", "langevin:steps=2"]
    )
    defended = defender.clean_defended
    langevin = defender.purifiers["langevin:steps=2"][0]
    then = purified(langevin, defended["jpeg:40"], "langevin")  # the same set, seed 0
    np.testing.assert_array_equal(defended["jpeg:40>langevin:steps=2"], then)
    assert not np.array_equal(then, defended["langevin:steps=2"])  # JPEG ran first
    for unknown in ("jpeg:40>sharpen:2", "pureebm:3>jpeg:40"):  # a chain is not a step
        with pytest.raises(ValueError, match=f"unknown defence '{unknown}'"):
            tiny_defender(tiny_registry, images, [unknown])


def test_a_filter_purifies_exactly_the_highest_energy_images_and_passes_the_rest(
    cifar, tiny_registry
):
    images, labels = cifar["images"][:24], cifar["labels"][:24]
    defender = tiny_defender(
        tiny_registry, images, ["filt:0.25:3", "pureebm:3", "filt:0.25:3:1", "pureebm:1"]
    )
    poisoned = attacks.patch(images, labels, 3, 0.25, seed=0, clean_label=False)
    defended, energy = defender.defend_all(poisoned)
    highest = set(np.argsort(-energy)[:6].tolist())  # ceil(0.25 * 24)
    filtered, purified = defended["filt:0.25:3"], defended["pureebm:3"]
    lightly = defended["pureebm:1"]  # what 'filt:K:T:R' gives the images it does not choose
    for i in range(len(images)):
        expected = purified[i] if i in highest else poisoned.images[i]
        assert np.array_equal(filtered[i], expected)
        rest = purified[i] if i in highest else lightly[i]
        assert np.array_equal(defended["filt:0.25:3:1"][i], rest)
    assert not np.array_equal(lightly, poisoned.images)
    assert not np.array_equal(filtered, poisoned.images)
    # the set's energies: the clean images' with the poisoned ones scored again
    untouched = np.setdiff1d(np.arange(len(images)), poisoned.poisoned)
    assert np.array_equal(energy[untouched], defender.clean_energy[untouched])
    assert not np.allclose(energy[poisoned.poisoned], defender.clean_energy[poisoned.poisoned])


def test_the_evaluations_filter_is_what_the_cli_writes_image_for_image(
    tmp_path, cifar, tiny_registry
):
    """The evaluation measures the product: its filt:K:T defends a set exactly as
    `pureebm purify --filter K --steps T` does (same ranking, same noise at seed 0)."""
    images = cifar["images"][:24]
    defended = tiny_defender(tiny_registry, images, ["filt:0.25:3"]).clean_defended
    np.savez(tmp_path / "in.npz", images=images)
    command = [sys.executable, "-m", "pureebm", "purify", str(tmp_path / "in.npz")]
    command += ["-o", str(tmp_path / "out.npz"), "--registry", str(tiny_registry)]
    command += ["--model", "tiny", "--filter", "0.25", "--steps", "3", "--seed", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "out.npz") as out:
        written = out["images"]
    assert len(changed(written, images)) == 6  # ceil(0.25 * 24), the rest byte-identical
    np.testing.assert_array_equal(written, defended["filt:0.25:3"])


def test_the_cache_computes_a_defended_set_once_per_set_and_name(tmp_path, cifar):
    calls = []

    def compute(images: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(images))
        return {"images": 255 - images, "energy": images.mean(axis=(1, 2, 3))}

    images = cifar["images"][:8]
    first = cached(str(tmp_path), images, "invert", lambda: compute(images))
    again = cached(str(tmp_path), images.copy(), "invert", lambda: compute(images))
    assert calls == [8]
    for key in ("images", "energy"):
        np.testing.assert_array_equal(first[key], again[key])
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    cached(str(tmp_path), other, "invert", lambda: compute(other))
    cached(str(tmp_path), images, "another", lambda: compute(images))
    cached(None, images, "invert", lambda: compute(images))
    assert calls == [8] * 4


def test_auroc_and_trigger_share_on_hand_built_cases():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([1.0, 4.0]), np.array([2.0, 3.0])) == 0.5
    clean = np.zeros((2, 4, 4, 3))
    trigger = np.full((2, 4, 4, 3), 8)
    assert trigger_left(clean, clean + trigger, trigger) == pytest.approx(1.0)
    assert trigger_left(clean, clean + trigger / 4, trigger) == pytest.approx(0.25)


def test_evaluation_runs_on_28x28_grayscale_data(tmp_path, cifar, tiny_registry):
    """MNIST-like input: one channel, smaller than the EBM's 32 px (the pipeline pads)."""
    gray = cifar["images"][:, 2:30, 2:30].mean(axis=3).astype(np.uint8)
    data = tmp_path / "gray.npz"
    np.savez(data, images=gray, labels=cifar["labels"])
    config = EvalConfig(
        train=str(data),
        test_fraction=0.25,
        attack="narcissus",
        poison_fraction=0.1,
        eps=[16 / 255],
        targets=[1],
        seeds=[0],
        defences=["none", "pureebm:2"],
        classifier=FAST,
        model="tiny",
        registry=str(tiny_registry),
        out=str(tmp_path / "out"),
    )
    result = evaluate(config)
    defences = {"clean", "none", "pureebm:2", "pureebm:2 +test"}
    assert {row["defence"] for row in result["rows"]} == defences
    for row in result["rows"]:
        assert 0 <= row["natural_accuracy"] <= 1 and 0 <= row["poison_success"] <= 1
