"""Hostile uploads: each case of REFUSED is what a caller sends and the status the
API must answer, against a service configured with LIMITS. tests/test_api.py
checks each against the real stack; bench/soak.py mixes them into its load."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import warnings
import zipfile
import zlib

import numpy as np
from PIL import Image

from tests.stack import bomb_png, png, zip_bytes

LIMITS = {
    "max_files": 20,
    "max_upload_bytes": 5_000_000,
    "max_pixels": 1_000_000,
    "max_job_pixels": 2_000_000,
    "max_job_pixel_passes": 100_000_000,
}


def evil_zip(name: str, cifar) -> bytes:
    return zip_bytes({"ok.png": png(cifar["images"][0]), name: png(cifar["images"][1])})


def symlink_zip(cifar) -> bytes:
    buffer = io.BytesIO(zip_bytes({"ok.png": png(cifar["images"][0])}))
    with zipfile.ZipFile(buffer, "a") as archive:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def lying_npz() -> bytes:
    """An npz of a few hundred bytes whose header declares 1e8 images of 320 x 320 x 3."""
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (100000000, 320, 320, 3), }"
    header = header.ljust(117) + "\n"  # the 10-byte prefix and the header: 128 bytes
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    return zip_bytes({"images.npy": npy + bytes(48)})


def object_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=np.array([{"a": 1}], dtype=object))
    return buffer.getvalue()


REFUSED = {
    "truncated image": (415, {"files": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)}, {}),
    "text as image": (415, {"files": ("a.png", b"hello, not a picture")}, {}),
    "text as archive": (415, {"archive": ("a.zip", b"just some text")}, {}),
    "object npz": (415, {"archive": ("a.npz", object_npz())}, {}),
    "dot-dot member": (422, {"archive": ("a.zip", "EVIL:../../etc/x.png")}, {}),
    "absolute member": (422, {"archive": ("a.zip", "EVIL:/etc/x.png")}, {}),
    "symlink member": (422, {"archive": ("a.zip", "SYMLINK")}, {}),
    "zip bomb": (413, {"archive": ("a.zip", "BOMB")}, {}),
    "pixel bomb": (413, {"files": ("a.png", "HUGE")}, {}),
    "declared 50000x50000 bomb": (413, {"files": ("a.png", "DECLARED")}, {}),
    "a 1 x 100,000 strip": (413, {"files": ("a.png", "STRIP")}, {}),
    "over the job's pixel cap": (413, {"archive": ("a.zip", "THREE_MPX")}, {}),
    "repeated tar member": (422, {"archive": ("a.tar", "DUPLICATE")}, {}),
    "too many files": (413, "MANY", {}),
    "too large body": (413, {"archive": ("a.zip", b"\x00" * 6_000_000)}, {}),
    "steps out of range": (422, {"files": ("a.png", "OK")}, {"steps": "5000"}),
    "negative eps": (422, {"files": ("a.png", "OK")}, {"eps": "-1"}),
    "unknown model": (400, {"files": ("a.png", "OK")}, {"model": "nonexistent"}),
    "superscript version": (400, {"files": ("a.png", "OK")}, {"model": "tiny:\u00b2"}),
    "5,000-digit version": (400, {"files": ("a.png", "OK")}, {"model": "tiny:" + "9" * 5000}),
    "drift past its bound": (422, {"files": ("a.png", "OK")}, {"tau": "1e-320"}),
    "npz of empty images": (415, {"archive": ("a.npz", "EMPTY_NPZ")}, {}),
    "npz declaring 1e8 images": (413, {"archive": ("a.npz", "LYING_NPZ")}, {}),
    "a GIF inside a zip": (415, {"archive": ("a.zip", "GIF_IN_ZIP")}, {}),
    "an npy of images inside a zip": (415, {"archive": ("a.zip", "NPY_IN_ZIP")}, {}),
    "a sparse tar of 400 MB in 1.5 KB": (413, {"archive": ("a.tar", "SPARSE_TAR")}, {}),
    "a 16-bit colour PNG": (415, {"files": ("a.png", "SIXTEEN_BIT_RGB")}, {}),
    "a zip inside a zip": (415, {"archive": ("a.zip", "NESTED_ZIP")}, {}),
    "an animated PNG": (415, {"files": ("a.png", "APNG")}, {}),
    "a pax header of 48,000 digits": (422, {"archive": ("a.tar.gz", "PAX_DIGITS")}, {}),
    "a GNU long name declaring 16 MiB": (422, {"archive": ("a.tar.gz", "LONG_NAME")}, {}),
    "a zip declaring 400,000 members": (413, {"archive": ("a.zip", "MANY_ENTRIES")}, {}),
    "a zip member with a bad CRC": (415, {"archive": ("a.zip", "BAD_CRC")}, {}),
    "an npz of float images beside 64 MiB of zeros": (415, {"archive": ("a.npz", "NPZ_BOMB")}, {}),
    "an npz with a member twice": (422, {"archive": ("a.npz", "NPZ_TWICE")}, {}),
    "an npz with a second N x H x W array": (415, {"archive": ("a.npz", "NPZ_SECOND")}, {}),
    "over the job's compute (512 x 512 at T = 2,000)": (
        413,
        {"files": ("a.png", "QUARTER_MPX")},
        {"steps": "2000"},
    ),
    "two archives": (400, "TWO_ARCHIVES", {}),
    "both fields": (400, "BOTH", {}),
}


def sparse_tar(name: str, real_size: int) -> bytes:
    """A GNU tar whose one member is ``real_size`` bytes of holes, in a few KB
    (tarfile reads sparse members but cannot write them)."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:398] = b"%011o\0" % real_size  # one sparse entry: no data at real_size
    header[398:410] = b"%011o\0" % 0
    header[483:495] = b"%011o\0" % real_size  # realsize
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    return bytes(header[:512]) + bytes(1024)


def sixteen_bit_rgb_png(rgb: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written chunk by chunk (Pillow writes none)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    height, width = rgb.shape[:2]
    wide = rgb.astype(">u2") * 257
    rows = b"".join(b"\x00" + row.tobytes() for row in wide)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = [chunk(b"IHDR", header), chunk(b"IDAT", zlib.compress(rows)), chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def extended_header_targz(kind: bytes, size: int, cifar) -> bytes:
    """A tar.gz whose first header is an extended one (pax 'x', GNU long name 'L') of
    ``size`` bytes (digits for pax, zeros for 'L'), then one PNG."""
    header = tarfile.TarInfo("././@Extended").tobuf(format=tarfile.USTAR_FORMAT)
    header = bytearray(header)
    header[124:136] = f"{size:011o}\0".encode()
    header[156:157] = kind
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    body = (b"9" if kind == b"x" else b"\0") * size
    padding = bytes(-size % 512)
    return gzip.compress(
        bytes(header) + body + padding + tar_bytes([("a.png", png(cifar["images"][0]))])
    )


def zip_declaring(entries: int, cifar) -> bytes:
    """A small zip whose zip64 end-of-directory record declares ``entries`` members."""
    data = zip_bytes({"a.png": png(cifar["images"][0])})
    end = data.rfind(b"PK\x05\x06")
    directory_size = int.from_bytes(data[end + 12 : end + 16], "little")
    directory_offset = int.from_bytes(data[end + 16 : end + 20], "little")
    record = b"PK\x06\x06" + struct.pack(
        "<QHHIIQQQQ", 44, 45, 45, 0, 0, entries, entries, directory_size, directory_offset
    )
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, end, 1)
    classic = bytearray(data[end:])
    classic[8:12] = b"\xff\xff\xff\xff"
    return data[:end] + record + locator + bytes(classic)


def bad_crc_zip(cifar) -> bytes:
    """A zip of an image and a stored 100 KB labels.txt with one bit flipped."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.png", png(cifar["images"][0]))
        archive.writestr("labels.txt", b"7\n" * 51_000)
    data = bytearray(buffer.getvalue())
    data[data.find(b"7\n7\n") + 60_000] ^= 1
    return bytes(data)


def npz_bytes(members: list[tuple[str, np.ndarray]], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a repeated name is the point of one case
        for name, array in members:
            npy = io.BytesIO()
            np.save(npy, array)
            archive.writestr(name + ".npy", npy.getvalue())
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def materialise(spec, cifar):
    if spec == "MANY":
        return [("files", (f"{i}.png", png(cifar["images"][i]))) for i in range(21)]
    if spec == "TWO_ARCHIVES":
        one = zip_bytes({"a.png": png(cifar["images"][0])})
        return [("archive", ("a.zip", one)), ("archive", ("b.zip", one))]
    if spec == "BOTH":
        return [
            ("files", ("a.png", png(cifar["images"][0]))),
            ("archive", ("a.zip", zip_bytes({"a.png": png(cifar["images"][0])}))),
        ]
    field, (name, data) = next(iter(spec.items()))
    if isinstance(data, str):
        if data == "OK":
            data = png(cifar["images"][0])
        elif data == "STRIP":
            data = png(np.zeros((1, 100_000, 3), np.uint8))
        elif data == "QUARTER_MPX":
            data = png(np.tile(cifar["images"][0], (16, 16, 1)))
        elif data == "HUGE":
            data = png(np.zeros((1000, 1200, 3), np.uint8))
        elif data == "BOMB":
            data = zip_bytes({"a.png": png(cifar["images"][0]), "zeros.bin": bytes(60 << 20)})
        elif data == "SYMLINK":
            data = symlink_zip(cifar)
        elif data == "THREE_MPX":  # three 1 Mpx images, each within the per-image limit
            flat = png(np.zeros((1000, 1000, 3), np.uint8))
            data = zip_bytes({f"{i}.png": flat for i in range(3)})
        elif data == "EMPTY_NPZ":
            buffer = io.BytesIO()
            np.savez(buffer, images=np.zeros((2, 0, 32, 3), np.uint8))
            data = buffer.getvalue()
        elif data == "LYING_NPZ":
            data = lying_npz()
        elif data == "DECLARED":
            data = bomb_png()
        elif data in ("GIF_IN_ZIP", "NESTED_ZIP"):
            inner = png(cifar["images"][1], fmt="GIF")
            if data == "NESTED_ZIP":
                inner = zip_bytes({"b.png": png(cifar["images"][1])})
            data = zip_bytes({"a.png": png(cifar["images"][0]), "b": inner})
        elif data == "NPY_IN_ZIP":
            npy = io.BytesIO()
            np.save(npy, cifar["images"][:2])
            data = zip_bytes({"a.png": png(cifar["images"][0]), "x.npy": npy.getvalue()})
        elif data == "SPARSE_TAR":
            data = sparse_tar("holes.png", 400 << 20)
        elif data == "SIXTEEN_BIT_RGB":
            data = sixteen_bit_rgb_png(cifar["images"][0])
        elif data == "APNG":
            frames = [Image.fromarray(cifar["images"][i]) for i in range(2)]
            buffer = io.BytesIO()
            frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
            data = buffer.getvalue()
        elif data in ("PAX_DIGITS", "LONG_NAME"):
            kind, size = (b"x", 48_000) if data == "PAX_DIGITS" else (b"L", 16 << 20)
            data = extended_header_targz(kind, size, cifar)
        elif data == "MANY_ENTRIES":
            data = zip_declaring(400_000, cifar)
        elif data == "BAD_CRC":
            data = bad_crc_zip(cifar)
        elif data == "NPZ_BOMB":
            images = cifar["images"][:2].astype(np.float32)
            zeros = np.zeros(64 << 20, np.uint8)
            noise = np.random.default_rng(0).integers(0, 256, 300_000, np.uint8)  # under 250x
            arrays = [("zeros", zeros), ("noise", noise), ("images", images)]
            data = npz_bytes(arrays, compressed=True)
        elif data == "NPZ_TWICE":
            labels = np.array([1, 2])
            data = npz_bytes(
                [("images", cifar["images"][:2]), ("labels", labels), ("labels", labels)]
            )
        elif data == "NPZ_SECOND":
            images = cifar["images"][:2]
            data = npz_bytes([("images", images), ("test_images", images[..., 0])])
        elif data == "DUPLICATE":
            data = tar_bytes(
                [("same.png", png(cifar["images"][0])), ("same.png", png(cifar["images"][1]))]
            )
        else:
            data = evil_zip(data.removeprefix("EVIL:"), cifar)
    return {field: (name, data)}
