"""Round trips for every container kind, and refusal of unsafe or oversized archives."""

from __future__ import annotations

import gzip
import io
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pureebm.containers import check_output_name, open_container
from pureebm.images import (
    InputTooLarge,
    Limits,
    UnsafeInput,
    UnsupportedInput,
    decode_image,
    encode_image,
)
from tests.hostile import sparse_tar
from tests.stack import png, zip_bytes


def members_of(cifar) -> dict[str, bytes]:
    """A nested tree: PNG, JPEG, BMP, WebP, TIFF, grayscale, RGBA, and a text file."""
    images = cifar["images"]
    return {
        "train/cat/0.png": png(images[0]),
        "train/cat/1.jpg": png(images[1], fmt="JPEG"),
        "train/dog/2.bmp": png(images[2], fmt="BMP"),
        "train/dog/3.webp": png(images[3], fmt="WEBP"),
        "train/4.tiff": png(images[4], fmt="TIFF"),
        "gray.png": png(images[5], "L"),
        "alpha.png": png(images[6], "RGBA"),
        "labels.txt": b"cat\ncat\ndog\n\x00binary-safe\xff",
    }


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def identity(container):
    """The lookup a purifier that changes nothing would give."""
    pictures = [picture for _, picture in container.iter_images()]
    return pictures.__getitem__


def inverted(container):
    pictures = [p.with_pixels(255 - p.rgb) for _, p in container.iter_images()]
    return pictures.__getitem__


def read_all(path: Path, kind: str) -> list[tuple[str, bytes]]:
    if kind == "zip":
        with zipfile.ZipFile(path) as archive:
            return [(i.filename, archive.read(i)) for i in archive.infolist()]
    with tarfile.open(path) as archive:
        return [(m.name, archive.extractfile(m).read()) for m in archive if m.isfile()]


@pytest.mark.parametrize(
    "kind,suffix,mode", [("zip", ".zip", None), ("tar", ".tar", "w"), ("tar", ".tar.gz", "w:gz")]
)
def test_archive_round_trip_keeps_paths_order_and_bytes(tmp_path, cifar, kind, suffix, mode):
    members = members_of(cifar)
    src = tmp_path / f"in{suffix}"
    write_zip(src, members) if kind == "zip" else write_tar(src, members, mode)
    container = open_container(src)
    assert container.kind == kind
    assert [m.name for m in container.members if m.kind != "dir"] == list(members)
    dst = tmp_path / f"out{suffix}"
    container.write(dst, inverted(container))
    out = read_all(dst, kind)
    assert [name for name, _ in out] == list(members)
    for name, data in out:
        if name.endswith(".txt"):
            assert data == members[name]
            continue
        before, after = decode_image(members[name]), decode_image(data)
        assert after.mode == before.mode and after.rgb.shape == before.rgb.shape
        if not name.endswith(".jpg"):
            np.testing.assert_array_equal(after.rgb, restored_rgb(before, 255 - before.rgb))
    if mode == "w:gz":
        header = dst.read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b"
        assert not header[3] & 0x08  # FLG.FNAME unset: no (temporary) file name inside


def restored_rgb(picture, rgb: np.ndarray) -> np.ndarray:
    return decode_image(encode_image(picture.with_pixels(rgb), "PNG")).rgb


def test_identity_round_trip_is_lossless_for_lossless_formats(tmp_path, cifar):
    members = members_of(cifar)
    src = write_zip(tmp_path / "in.zip", members)
    container = open_container(src)
    container.write(tmp_path / "out.zip", identity(container))
    out = dict(read_all(tmp_path / "out.zip", "zip"))
    for name in ("train/cat/0.png", "train/dog/2.bmp", "train/dog/3.webp", "train/4.tiff"):
        np.testing.assert_array_equal(decode_image(out[name]).rgb, decode_image(members[name]).rgb)
    jpeg_error = np.abs(
        decode_image(out["train/cat/1.jpg"]).rgb.astype(int)
        - decode_image(members["train/cat/1.jpg"]).rgb.astype(int)
    )
    assert jpeg_error.mean() < 3


def test_folder_tree_round_trip(tmp_path, cifar):
    src = tmp_path / "tree"
    for name, data in members_of(cifar).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    container = open_container(src)
    assert container.kind == "folder" and len(container.image_names()) == 7
    container.write(tmp_path / "out", identity(container))
    assert (tmp_path / "out/labels.txt").read_bytes() == (src / "labels.txt").read_bytes()
    np.testing.assert_array_equal(
        decode_image((tmp_path / "out/train/cat/0.png").read_bytes()).rgb, cifar["images"][0]
    )


@pytest.mark.parametrize("shape", ["NHWC3", "NHWC4", "NHW", "NHWC1"])
def test_npz_keeps_keys_labels_and_layout(tmp_path, cifar, shape):
    images = cifar["images"][:5]
    if shape == "NHWC4":
        images = np.concatenate([images, np.full((*images.shape[:3], 1), 77, np.uint8)], axis=3)
    elif shape in ("NHW", "NHWC1"):
        images = images[..., 0] if shape == "NHW" else images[..., :1]
    src = tmp_path / "in.npz"
    np.savez(src, images=images, labels=cifar["labels"][:5], meta=np.array([1.5, 2.5]))
    container = open_container(src)
    assert container.kind == "npz" and container.image_names()[0] == "images/0"
    container.write(tmp_path / "out.npz", inverted(container))
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        assert out.files == ["images", "labels", "meta"]
        np.testing.assert_array_equal(out["labels"], cifar["labels"][:5])
        np.testing.assert_array_equal(out["meta"], [1.5, 2.5])
        assert out["images"].shape == images.shape and out["images"].dtype == np.uint8
        if shape == "NHWC4":
            np.testing.assert_array_equal(out["images"][..., 3], 77)
            np.testing.assert_array_equal(out["images"][..., :3], 255 - images[..., :3])
        else:
            np.testing.assert_array_equal(out["images"], 255 - images)


def test_single_image_is_written_in_the_output_format(tmp_path, cifar):
    src = tmp_path / "one.jpg"
    src.write_bytes(png(cifar["images"][0], fmt="JPEG"))
    container = open_container(src)
    assert container.kind == "image"
    container.write(tmp_path / "one.png", identity(container))
    assert Image.open(tmp_path / "one.png").format == "PNG"


@pytest.mark.parametrize("name", ["../evil.png", "/etc/evil.png", "a/../../evil.png", "C:/x.png"])
def test_unsafe_member_paths_are_refused(tmp_path, cifar, name):
    members = {"ok.png": png(cifar["images"][0]), name: png(cifar["images"][1])}
    with pytest.raises(UnsafeInput, match="unsafe member path"):
        open_container(write_zip(tmp_path / "a.zip", members))
    with pytest.raises(UnsafeInput, match="unsafe member path"):
        open_container(write_tar(tmp_path / "a.tar", members))


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
)
def test_links_and_devices_in_tar_are_refused(tmp_path, cifar, kind):
    path = write_tar(tmp_path / "a.tar", {"ok.png": png(cifar["images"][0])})
    with tarfile.open(path, "a") as archive:
        info = tarfile.TarInfo("link.png")
        info.type, info.linkname = kind, "/etc/passwd"
        archive.addfile(info)
    with pytest.raises(UnsafeInput, match="link"):
        open_container(path)


def test_symlink_in_zip_is_refused(tmp_path, cifar):
    path = write_zip(tmp_path / "a.zip", {"ok.png": png(cifar["images"][0])})
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeInput, match="link"):
        open_container(path)


def test_zip_bomb_and_limits(tmp_path, cifar):
    bomb = write_zip(
        tmp_path / "bomb.zip",
        {"a.png": png(cifar["images"][0]), "zeros.bin": bytes(60 << 20)},
    )
    with pytest.raises(InputTooLarge, match="ratio"):
        open_container(bomb)
    # A tar.gz is refused at the header that crosses the ratio, before its data is
    # decompressed: this one stops right after a header declaring 1 GiB, so reading
    # on would fail as a truncated archive (415), not as a bomb (413).
    header = tarfile.TarInfo("zeros.bin")
    header.size = 1 << 30
    tar_bomb = tmp_path / "bomb.tar.gz"
    tar_bomb.write_bytes(gzip.compress(header.tobuf()))
    with pytest.raises(InputTooLarge, match="compression-ratio"):
        open_container(tar_bomb)
    many = write_zip(tmp_path / "many.zip", {f"{i}.png": png(cifar["images"][i]) for i in range(5)})
    with pytest.raises(InputTooLarge, match="members"):
        open_container(many, Limits(max_members=3))
    with pytest.raises(InputTooLarge, match="pixels"):
        decode_image(png(cifar["images"][0]), Limits(max_pixels=1000))


def test_corrupt_truncated_and_non_images_are_refused(tmp_path, cifar):
    data = png(cifar["images"][0])
    with pytest.raises(UnsupportedInput, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(UnsupportedInput, match="not a readable image"):
        decode_image(b"this is text, not a picture")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UnsupportedInput, match="not an image or a supported archive"):
        open_container(text)
    no_images = write_zip(tmp_path / "none.zip", {"a.txt": b"x"})
    with pytest.raises(UnsupportedInput, match="no images"):
        open_container(no_images)
    pickled = tmp_path / "p.npz"
    np.savez(pickled, images=np.array([object()], dtype=object))
    with pytest.raises(UnsupportedInput):
        open_container(pickled)


def test_encrypted_and_unknown_compression_zip_members_are_unsupported(tmp_path, cifar):
    path = write_zip(tmp_path / "a.zip", {"a.png": png(cifar["images"][0])})
    raw = bytearray(path.read_bytes())
    encrypted = tmp_path / "encrypted.zip"  # set the "encrypted" flag bit in both headers
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    flagged = bytearray(raw)
    flagged[local + 6] |= 1
    flagged[central + 8] |= 1
    encrypted.write_bytes(bytes(flagged))
    with pytest.raises(UnsupportedInput, match="encrypted"):
        open_container(encrypted)
    unknown = tmp_path / "unknown.zip"  # compression method 99 (AES) in both headers
    patched = bytearray(raw)
    patched[local + 8 : local + 10] = (99).to_bytes(2, "little")
    patched[central + 10 : central + 12] = (99).to_bytes(2, "little")
    unknown.write_bytes(bytes(patched))
    with pytest.raises(UnsupportedInput, match="compression method"):
        open_container(unknown)


def test_a_tar_with_a_repeated_member_name_is_refused(tmp_path, cifar):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as archive:
        for index in (0, 1):  # two different images under one name
            data = png(cifar["images"][index])
            info = tarfile.TarInfo("same.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeInput, match="appears twice"):
        open_container(path)


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz"])
def test_an_archives_shards_are_read_through_one_handle(tmp_path, cifar, suffix):
    members = {f"img/{i:02d}.png": png(cifar["images"][i]) for i in range(12)}
    members["notes.txt"] = b"not an image"
    src = tmp_path / f"in{suffix}"
    if suffix == ".zip":
        write_zip(src, members)
    else:
        write_tar(src, members, "w:gz" if suffix == ".tar.gz" else "w")
    container = open_container(src)
    names = container.image_names()
    opened: list[object] = []
    open_reader = container.open_reader
    container.open_reader = lambda: opened.append(1) or open_reader()

    shards = [range(0, 4), range(4, 8), range(8, 12), range(2, 5)]  # the last goes back
    for shard in shards:
        read = dict(container.image_bytes(shard))
        assert read == {names[p]: members[names[p]] for p in shard}
    assert len(opened) == 1  # not re-listed or reopened per shard
    assert len(dict(container.image_bytes(None))) == 12  # a whole pass has its own handle
    container.close()
    assert container.reader is None


def disguised_members(cifar) -> dict[str, bytes]:
    """Images under names that do not say so, beside metadata that must pass through."""
    images = cifar["images"]
    return {
        "a.png": png(images[0]),
        "b.jfif": png(images[1], fmt="JPEG"),
        "c.jpe": png(images[2], fmt="JPEG"),
        "no-extension": png(images[3]),
        "x.png.bak": png(images[4]),
        "labels.json": b'{"a.png": 3}',
        "classes.csv": b"name,label\nBM,1\nP1 cat,2\n",  # text that starts like BMP or PBM
    }


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", "folder"])
def test_images_are_recognised_by_content_whatever_their_name(tmp_path, cifar, suffix):
    members = disguised_members(cifar)
    src = tmp_path / f"src{suffix}"
    if suffix == "folder":
        for name, data in members.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
    elif suffix == ".zip":
        write_zip(src, members)
    else:
        write_tar(src, members, "w:gz")
    container = open_container(src)
    assert sorted(container.image_names()) == sorted(list(members)[:5])
    dst = tmp_path / f"dst{suffix}"
    container.write(dst, inverted(container))
    if suffix == "folder":
        out = {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*")}
    else:
        out = dict(read_all(dst, "zip" if suffix == ".zip" else "tar"))
    for name in list(members)[:5]:
        sent = decode_image(members[name])
        back = decode_image(out[name])
        assert back.format == sent.format  # a JPEG named .jfif comes back a JPEG
        assert np.abs(back.rgb.astype(int) - (255 - sent.rgb)).mean() < 3
    assert out["labels.json"] == members["labels.json"]
    assert out["classes.csv"] == members["classes.csv"]


def nested_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("inner.png")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "member,make",
    [
        ("anim.gif", lambda rgb: png(rgb, fmt="GIF")),
        ("photo.ppm", lambda rgb: png(rgb, fmt="PPM")),
        ("photo", lambda rgb: png(rgb, fmt="PPM")),
        ("inner.zip", lambda rgb: zip_bytes({"a.png": png(rgb)})),
        ("inner.tar", lambda rgb: nested_tar()),
        ("inner.tgz", lambda rgb: gzip.compress(nested_tar())),
        ("images.npy", lambda rgb: npy_bytes(np.stack([rgb, rgb]))),
        ("fake.png", lambda rgb: b"not a png at all"),
        ("icon.tga", lambda rgb: png(rgb, fmt="TGA")),  # TGA has no magic number
        ("icon.ico", lambda rgb: png(rgb, fmt="ICO")),
    ],
)
def test_content_that_would_pass_unpurified_is_refused_naming_the_member(
    tmp_path, cifar, member, make
):
    rgb = cifar["images"][0]
    members = {"ok.png": png(rgb), member: make(rgb)}
    for src in (write_zip(tmp_path / "s.zip", members), write_tar(tmp_path / "s.tar", members)):
        with pytest.raises(UnsupportedInput, match=f"member '{member}'"):
            open_container(src)


def test_an_npz_with_a_second_array_that_could_hold_images_is_refused(tmp_path, cifar):
    """Unless the arrays are alike (uint8 of one image shape: Keras' layout)."""
    images = cifar["images"][:2]
    candidates = {
        "masks": images[..., 0],  # N x H x W
        "train_chw": images.transpose(0, 3, 1, 2).copy(),  # N x C x H x W
        "floats": images.astype(np.float32) / 255,
    }
    for key, array in candidates.items():
        both = tmp_path / f"{key}.npz"
        np.savez(both, images=images, labels=[1, 2], **{key: array})
        with pytest.raises(UnsupportedInput, match=f"'{key}'"):
            open_container(both)
    small = tmp_path / "small.npz"  # 4 x 4 boxes per image: metadata, not images
    np.savez(small, images=images, boxes=np.zeros((2, 4, 4), np.uint8), labels=[1, 2])
    assert len(open_container(small).image_names()) == 2


@pytest.mark.parametrize("compressed", [False, True])
def test_every_npz_member_comes_back_under_its_name_byte_for_byte(tmp_path, cifar, compressed):
    images = cifar["images"][:3]
    others = {"file": npy_bytes(np.arange(3)), "allow_pickle.npy": npy_bytes(np.array([7]))}
    others |= {"labels.npy": npy_bytes(np.array([1, 2, 3]))}
    src = tmp_path / "in.npz"
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(src, "w", method) as z:
        z.writestr("file.npy", others["file"])
        z.writestr("images.npy", npy_bytes(images))
        for name in ("allow_pickle.npy", "labels.npy"):
            z.writestr(name, others[name])
    container = open_container(src)
    container.write(tmp_path / "out.npz", inverted(container))
    with zipfile.ZipFile(tmp_path / "out.npz") as out:
        assert out.namelist() == ["file.npy", "images.npy", "allow_pickle.npy", "labels.npy"]
        assert {i.compress_type for i in out.infolist()} == {method}
        assert out.read("file.npy") == others["file"]
        for name in ("allow_pickle.npy", "labels.npy"):
            assert out.read(name) == others[name]
        written = np.load(io.BytesIO(out.read("images.npy")))
    np.testing.assert_array_equal(written, 255 - images)


def test_an_npz_images_array_is_found_by_name_or_by_shape(tmp_path, cifar):
    images, labels = cifar["images"][:3], cifar["labels"][:3]
    for arrays, key in [
        ({"x": images, "y": labels}, "x"),  # Keras' names
        ({"x_train": images, "y_train": labels}, "x_train"),
        ({"pixels": images, "targets": labels}, "pixels"),  # the one image-shaped array
    ]:
        src = tmp_path / f"{key}.npz"
        np.savez(src, **arrays)
        container = open_container(src)
        assert container.image_names()[0] == f"{key}/0"
        container.write(tmp_path / "out.npz", inverted(container))
        with np.load(tmp_path / "out.npz") as out:
            assert out.files == list(arrays)
            np.testing.assert_array_equal(out[key], 255 - images)
            np.testing.assert_array_equal(out[next(k for k in arrays if k != key)], labels)
    both = tmp_path / "both.npz"
    np.savez(both, a=images, b=images[..., :1], y=labels)
    with pytest.raises(UnsupportedInput, match="'a', 'b' could each hold images"):
        open_container(both)
    none = tmp_path / "none.npz"
    np.savez(none, y=labels, names=np.array([1.5]))
    with pytest.raises(UnsupportedInput, match=r"no array of images \(arrays: y, names\)"):
        open_container(none)


def test_a_keras_npz_has_every_image_array_purified_and_the_rest_kept(tmp_path, cifar):
    """x_train, y_train, x_test, y_test: both image arrays purified, members in order."""
    images, labels = cifar["images"], cifar["labels"]
    arrays = {"x_train": images[:5], "y_train": labels[:5], "x_test": images[5:8],
              "y_test": labels[5:8]}  # fmt: skip
    src = tmp_path / "keras.npz"
    np.savez(src, **arrays)
    container = open_container(src)
    assert container.image_names() == [f"x_train/{i}" for i in range(5)] + [
        f"x_test/{i}" for i in range(3)
    ]
    np.testing.assert_array_equal(container.picture(6).rgb, images[6])
    container.write(tmp_path / "out.npz", inverted(container))
    with np.load(tmp_path / "out.npz") as out:
        assert out.files == list(arrays)
        np.testing.assert_array_equal(out["x_train"], 255 - images[:5])
        np.testing.assert_array_equal(out["x_test"], 255 - images[5:8])
        np.testing.assert_array_equal(out["y_test"], labels[5:8])


def test_an_npz_with_a_member_twice_is_refused(tmp_path, cifar):
    src = tmp_path / "twice.npz"
    with zipfile.ZipFile(src, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it writes
        z.writestr("images.npy", npy_bytes(cifar["images"][:2]))
        z.writestr("labels.npy", npy_bytes(np.array([1, 2])))
        z.writestr("labels.npy", npy_bytes(np.array([3, 4])))
    with pytest.raises(UnsafeInput, match=r"'labels\.npy' appears twice"):
        open_container(src)


def test_an_npz_is_checked_from_its_headers_and_its_images_mapped_not_loaded(tmp_path, cifar):
    src = tmp_path / "big.npz"
    padding = np.zeros(64 << 20, np.uint8)  # 64 MiB beside the images: never read
    np.savez(src, images=cifar["images"][:4], padding=padding)
    container = open_container(src)
    assert isinstance(container.images(container.arrays[0]), np.memmap)
    np.testing.assert_array_equal(container.picture(3).rgb, cifar["images"][3])
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=cifar["images"][:4].astype(np.float32))
    with pytest.raises(UnsupportedInput, match="uint8"):
        open_container(floats)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_sparse_tar_member_counts_its_real_size_against_the_ratio(tmp_path, cifar):
    src = tmp_path / "s.tar"
    src.write_bytes(sparse_tar("holes.png", 400 << 20))
    with tarfile.open(src) as archive:
        assert archive.getmembers()[0].size == 400 << 20  # what a reader would unpack
    with pytest.raises(InputTooLarge, match="compression-ratio"):
        open_container(src)


def test_an_output_name_must_fit_the_copy_it_will_hold(tmp_path, monkeypatch):
    gz = tmp_path / "set.tar.gz"
    with tarfile.open(gz, "w:gz"):
        pass
    monkeypatch.chdir(tmp_path)  # a name sent to the service is not read as a local file
    with tarfile.open("sent.tar", "w:gz"):
        pass
    fits = [
        ("zip", "o.zip", "in.zip", False),
        ("tar", "o.tgz", gz, False),  # the copy keeps the gzip compression
        ("tar", "o.tar", "sent.tar", True),
        ("npz", "o.npz", "in.npz", False),
        ("files", "o.zip", "a.png", True),  # loose files come back as one zip
        ("image", "o.jpg", "a.png", False),  # in-process: written in the name's format
        ("image", "o.tif", "a.png", True),
        ("folder", "out", "images", False),
    ]
    for kind, name, sent, service in fits:
        check_output_name(kind, tmp_path / name, sent, service)
    refused = [
        ("zip", "o.tar", "in.zip", False),
        ("tar", "o.tar", gz, False),
        ("tar", "o.tar.bz2", "sent.tar.gz", True),
        ("npz", "o.zip", "in.npz", False),
        ("image", "o.zip", "a.png", False),
        ("image", "o.jpg", "a.png", True),  # the service answers PNG or TIFF
        ("folder", "out.zip", "images", False),
    ]
    for kind, name, sent, service in refused:
        with pytest.raises(UnsupportedInput, match=name):
            check_output_name(kind, tmp_path / name, sent, service)
