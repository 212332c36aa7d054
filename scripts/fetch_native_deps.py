"""Fetch the headers the native spectral kernel builds against, from package registries.

- pocketfft (BSD-3, header-only C++ FFT) as numpy's source distribution on PyPI carries it;
- onnxruntime's C/C++ API headers (MIT) from Debian's ``libonnxruntime-dev`` package (the
  onnxruntime wheel ships none; the C API is versioned, so these headers build a custom-op
  library that newer runtimes load).

Each download is pinned by its SHA-256. Only the headers and their licences are kept,
under ``<out>/include``; nothing is copied into the repository. Standard library only, so
it runs before the virtual environment exists. Exits non-zero with one clear line on
failure (the package then installs without its native lowering).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

POCKETFFT = {
    "url": "https://files.pythonhosted.org/packages/d0/ad/"
    "fed0499ce6a338d2a03ebae59cd15093910c8875328855781952abf6c2fe/numpy-2.4.6.tar.gz",
    "sha256": "f3a3570c4a2a16746ac2c31a7c7c7b0c186b95ce902e33db6f28094ed7387dda",
    "members": {
        "numpy-2.4.6/numpy/fft/pocketfft/pocketfft_hdronly.h": "pocketfft_hdronly.h",
        "numpy-2.4.6/numpy/fft/pocketfft/LICENSE.md": "LICENSE.pocketfft.md",
    },
}
ONNXRUNTIME = {
    "url": "http://deb.debian.org/debian/pool/main/o/onnxruntime/"
    "libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb",
    "sha256": "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08",
    "members": {
        f"./usr/include/onnxruntime/{name}": f"onnxruntime/{name}"
        for name in (
            "onnxruntime_c_api.h",
            "onnxruntime_cxx_api.h",
            "onnxruntime_cxx_inline.h",
            "onnxruntime_float16.h",
        )
    }
    | {"./usr/share/doc/libonnxruntime-dev/copyright": "onnxruntime/COPYRIGHT.debian"},
}


def download(url: str, sha256: str) -> bytes:
    """The bytes at ``url``, checked against ``sha256``."""
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise OSError(f"{url}: SHA-256 {digest}, expected {sha256}")
    return data


def deb_data(deb: bytes) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise OSError("not a Debian package")
    offset = 8
    while offset + 60 <= len(deb):
        header = deb[offset : offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        body = deb[offset + 60 : offset + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body))
        offset += 60 + size + size % 2
    raise OSError("the Debian package has no data.tar member")


def extract(archive: tarfile.TarFile, members: dict[str, str], include: Path) -> None:
    """Write ``members`` (archive name -> file under ``include``)."""
    for name, target in members.items():
        source = archive.extractfile(name)
        if source is None:
            raise OSError(f"{name} is not a file in the archive")
        path = include / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write include/ under")
    include = parser.parse_args().out / "include"
    try:
        tarball = download(POCKETFFT["url"], POCKETFFT["sha256"])
        extract(tarfile.open(fileobj=io.BytesIO(tarball)), POCKETFFT["members"], include)
        deb = download(ONNXRUNTIME["url"], ONNXRUNTIME["sha256"])
        extract(deb_data(deb), ONNXRUNTIME["members"], include)
    except (OSError, tarfile.TarError, KeyError, ValueError) as error:
        print(f"fetch_native_deps: {error}; the native lowering will not be built", file=sys.stderr)
        return 1
    print(f"native headers in {include}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
