"""`pureebm import` on folders built in each reference layout with random weights: the
imported nets against independent forward passes of the reference architectures,
the DDPM's posterior step against its closed form, refusals, and purification of
the imported entries through the CLI and the service."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.nn import functional as F

from pureebm import diffusion
from pureebm.client import PureEBMClient
from pureebm.registry import Registry
from pureebm.registry.importing import ImportRefused, import_folder
from tests.conftest import TINY_UNET
from tests.stack import KEY_A, Stack, png, pureebm_cli, zip_bytes

pytest.importorskip("diffusers")


def sngan_folder(folder: Path, nf: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """An `EBMSNGAN32(nf)` as PyTorchModelHubMixin saves it, with random weights."""
    g = torch.Generator().manual_seed(seed)

    def conv(c_out: int, c_in: int, k: int) -> dict[str, torch.Tensor]:
        return {
            "weight": torch.randn(c_out, c_in, k, k, generator=g) * (2 / (c_in * k * k)) ** 0.5,
            "bias": torch.randn(c_out, generator=g) * 0.1,
        }

    layers = {
        "block1.c1": conv(nf, 3, 3),
        "block1.c2": conv(nf, nf, 3),
        "block1.c_sc": conv(nf, 3, 1),
        "block2.c1": conv(nf, nf, 3),
        "block2.c2": conv(nf, nf, 3),
        "block2.c_sc": conv(nf, nf, 1),
        "block3.c1": conv(nf, nf, 3),
        "block3.c2": conv(nf, nf, 3),
        "block4.c1": conv(nf, nf, 3),
        "block4.c2": conv(nf, nf, 3),
    }
    state = {f"{name}.{kind}": t for name, ts in layers.items() for kind, t in ts.items()}
    state["l5.weight"] = torch.randn(1, nf, generator=g)
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"nf": nf, "patch_size": 1}))
    return state


def reference_sngan(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EBMSNGAN32's forward, written from the reference architecture."""

    def conv(h: torch.Tensor, name: str, padding: int) -> torch.Tensor:
        return F.conv2d(h, state[f"{name}.weight"], state[f"{name}.bias"], padding=padding)

    residual = F.avg_pool2d(conv(F.relu(conv(x, "block1.c1", 1)), "block1.c2", 1), 2)
    h = residual + conv(F.avg_pool2d(x, 2), "block1.c_sc", 0)
    residual = F.avg_pool2d(conv(F.relu(conv(F.relu(h), "block2.c1", 1)), "block2.c2", 1), 2)
    h = residual + F.avg_pool2d(conv(h, "block2.c_sc", 0), 2)
    for block in ("block3", "block4"):
        h = conv(F.relu(conv(F.relu(h), f"{block}.c1", 1)), f"{block}.c2", 1) + h
    return (F.relu(h).mean(dim=(2, 3)) @ state["l5.weight"].T)[:, 0]


def conv_folder(folder: Path, n_f: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    """The reference conv `EBM(n_c=3, n_f)` as PyTorchModelHubMixin saves it."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(n_f, 3, 3), (2 * n_f, n_f, 4), (4 * n_f, 2 * n_f, 4), (8 * n_f, 4 * n_f, 4)]
    shapes.append((1, 8 * n_f, 4))
    state = {}
    for i, (c_out, c_in, k) in zip(range(0, 9, 2), shapes, strict=True):
        state[f"f.{i}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) / (c_in * k * k) ** 0.5
        state[f"f.{i}.bias"] = torch.randn(c_out, generator=g) * 0.1
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"n_c": 3, "n_f": n_f}))
    return state


def reference_conv(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The reference conv EBM's forward: f(x).squeeze() on 32 x 32 images."""
    h = x
    for i, (stride, padding) in zip(
        range(0, 9, 2), [(1, 1), (2, 1), (2, 1), (2, 1), (1, 0)], strict=True
    ):
        h = F.conv2d(h, state[f"f.{i}.weight"], state[f"f.{i}.bias"], stride, padding)
        if i < 8:
            h = F.leaky_relu(h, 0.05)
    return h.squeeze()


def unet_folder(folder: Path) -> None:
    """A diffusers UNet2DModel saved by save_pretrained, with its scheduler's config."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(2)
    UNet2DModel(**TINY_UNET).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(folder)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def energy_and_gradient(energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    e = energy(x)
    (grad,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), grad


@pytest.mark.parametrize(
    ("layout", "reference", "architecture"),
    [(sngan_folder, reference_sngan, "resnet"), (conv_folder, reference_conv, "conv")],
    ids=["EBMSNGAN32", "conv EBM"],
)
def test_an_imported_ebm_has_the_reference_energy_and_gradient(
    tmp_path, layout, reference, architecture
) -> None:
    state = layout(tmp_path / "download")
    registry = Registry(tmp_path / "registry")
    manifest = import_folder(tmp_path / "download", registry, "paper")
    assert (manifest.weights.architecture, manifest.version) == (architecture, 1)
    p = manifest.purifier
    assert (p.steps, p.eps, p.tau) == (150, 1.25e-2, 1e-4)
    net = registry.load("paper").net
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ours, our_grad = energy_and_gradient(net, x)
    theirs, their_grad = energy_and_gradient(lambda v: reference(state, v), x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-4, atol=1e-6)


def test_an_imported_ddpm_takes_the_posterior_step_of_its_scheduler(tmp_path) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    unet_folder(tmp_path / "download")
    registry = Registry(tmp_path / "registry")
    manifest = import_folder(tmp_path / "download", registry, "paper-ddpm", version=3)
    assert (manifest.weights.architecture, manifest.version) == ("unet", 3)
    assert manifest.purifier.model_dump() == {"family": "ddpm", "steps": 75}
    model = registry.load("paper-ddpm:3")
    original = UNet2DModel.from_pretrained(tmp_path / "download")
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "download")
    x_t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = 40
    with torch.no_grad():
        eps = diffusion.noise_predictor(model.net)(x_t, t)
        torch.testing.assert_close(eps, original(x_t, t - 1).sample)
    # the posterior mean of q(x_{t-1} | x_t, x0_hat) in closed form, from the scheduler's betas
    abar = scheduler.alphas_cumprod.double()
    a_t, a_prev, beta = abar[t - 1], abar[t - 2], scheduler.betas[t - 1].double()
    x0_hat = ((x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
    mean = (a_prev.sqrt() * beta * x0_hat + (1 - beta).sqrt() * (1 - a_prev) * x_t) / (1 - a_t)
    ours = diffusion.reverse_step(
        x_t, eps, diffusion.alphas_cumprod(manifest.weights.diffusion), t, None
    )
    torch.testing.assert_close(ours, mean.float(), rtol=1e-5, atol=1e-5)


def test_folders_that_cannot_be_mapped_or_hold_pickle_are_refused(tmp_path) -> None:
    registry = Registry(tmp_path / "registry")
    pickled = tmp_path / "pickled"
    sngan_folder(pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ImportRefused, match="pickle"):
        import_folder(pickled, registry, "x")
    extra = tmp_path / "extra"
    state = sngan_folder(extra)
    save_file({**state, "block5.c1.weight": torch.zeros(1)}, extra / "model.safetensors")
    with pytest.raises(ImportRefused, match="block5"):
        import_folder(extra, registry, "x")
    misshapen = tmp_path / "misshapen"
    state = conv_folder(misshapen)
    save_file({**state, "f.2.bias": torch.zeros(3)}, misshapen / "model.safetensors")
    with pytest.raises(ImportRefused, match="shape"):
        import_folder(misshapen, registry, "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportRefused, match="neither"):
        import_folder(tmp_path / "empty", registry, "x")
    assert registry.list() == []


def test_imported_entries_purify_through_the_cli_and_the_service(tmp_path, cifar) -> None:
    sngan_folder(tmp_path / "ebm-download")
    unet_folder(tmp_path / "ddpm-download")
    registry = tmp_path / "registry"
    for source, name in (("ebm-download", "paper-ebm"), ("ddpm-download", "paper-ddpm")):
        stdout = pureebm_cli(
            "import",
            str(tmp_path / source),
            "--name",
            name,
            "--registry",
            str(registry),
        )
        assert f"registered {name}:1" in stdout
    source = tmp_path / "data.zip"
    source.write_bytes(zip_bytes({f"{i}.png": png(cifar["images"][i]) for i in range(3)}))
    outputs = {}
    for name, steps in (("paper-ebm", "3"), ("paper-ddpm", "5")):
        dst = tmp_path / f"{name}.cli.zip"
        pureebm_cli(
            "purify",
            str(source),
            "-o",
            str(dst),
            "--model",
            name,
            "--registry",
            str(registry),
            "--steps",
            steps,
            "--seed",
            "1",
            "--device",
            "cpu",
        )
        outputs[name] = dst
    (tmp_path / "stack").mkdir()
    stack = Stack(tmp_path / "stack", registry, default_model="paper-ebm")
    try:
        stack.start_worker()
        with PureEBMClient(stack.url, KEY_A) as client:
            for name, steps in (("paper-ebm", 3), ("paper-ddpm", 5)):
                dst = tmp_path / f"{name}.api.zip"
                job = client.purify(source, dst, model=name, steps=steps, seed=1)
                assert job["status"] == "finished"
                with zipfile.ZipFile(dst) as api, zipfile.ZipFile(outputs[name]) as cli:
                    for i, member in enumerate(api.namelist()):
                        ours, theirs = decode(api.read(member)), decode(cli.read(member))
                        assert not np.array_equal(ours, cifar["images"][i])  # purified
                        assert np.abs(ours.astype(int) - theirs).max() <= 1, member
    finally:
        stack.stop()
