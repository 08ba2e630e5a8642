"""Class labels where containers state them: npz arrays, class folders, WebDataset."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import numpy as np
from PIL import Image

from pureebm.containers import open_container
from pureebm.containers.labels import folder_labels


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def test_npz_labels_pair_with_their_image_arrays(tmp_path, cifar):
    images, labels = cifar["images"], cifar["labels"]
    keras = tmp_path / "keras.npz"
    np.savez(keras, x_train=images[:5], y_train=labels[:5], x_test=images[5:8],
             y_test=labels[5:8])  # fmt: skip
    found = open_container(keras).labels()
    assert found.values == [str(v) for v in labels[:8]]
    assert "'y_train', 'y_test'" in found.source
    plain = tmp_path / "plain.npz"
    np.savez(plain, images=images[:4], labels=np.array(["cat", "dog", "cat", "ship"]))
    assert open_container(plain).labels().values == ["cat", "dog", "cat", "ship"]
    unlabelled = tmp_path / "bare.npz"
    np.savez(unlabelled, images=images[:4])
    assert open_container(unlabelled).labels().values is None
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=images[:4], labels=labels[:3])
    assert "not one class per image" in open_container(wrong).labels().source


def test_class_folders_label_their_images_below_a_common_root(tmp_path, cifar):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, name in enumerate(["cat", "dog", "cat"]):
            z.writestr(f"train/{name}/{i}.png", png_bytes(cifar["images"][i]))
        z.writestr("train/README.txt", b"not an image")
    found = open_container(archive).labels()
    assert found.values == ["cat", "dog", "cat"] and "class folders" in found.source
    assert folder_labels(["a.png", "b/c.png"]).values is None  # one image at the root
    assert folder_labels(["x/a.png", "x/b.png"]).values is None  # one class


def test_webdataset_sidecars_label_their_images(tmp_path, cifar):
    archive = tmp_path / "shard.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(3):
            members = {f"{i:04d}.png": png_bytes(cifar["images"][i])}
            if i < 2:
                members[f"{i:04d}.cls"] = str(7 - i).encode()
            else:
                members[f"{i:04d}.json"] = json.dumps({"label": 3, "caption": "x"}).encode()
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    found = open_container(archive).labels()
    assert found.values == ["7", "6", "3"] and "WebDataset" in found.source


def test_a_folder_of_class_folders_and_a_lone_image(tmp_path, cifar):
    for i, name in enumerate(["a", "b"]):
        (tmp_path / "set" / name).mkdir(parents=True)
        Image.fromarray(cifar["images"][i]).save(tmp_path / "set" / name / f"{i}.png")
    assert open_container(tmp_path / "set").labels().values == ["a", "b"]
    Image.fromarray(cifar["images"][0]).save(tmp_path / "one.png")
    assert open_container(tmp_path / "one.png").labels().values is None
