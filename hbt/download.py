"""hbt-bench download: the public evaluation files, from their GitHub sources, into the data directory.

Every source is pinned to a commit and checked against the sha256 of the bytes it
served when hbt pinned it. Each file is fetched to a temporary name, gzip-compressed
when the source is plain JSON (the layout hbt reads), checked, and renamed into
place: a failed or tampered download leaves no file. Files already present are
checked the same way and kept.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hbt.errors import DataError

GITHUB = "https://github.com"


@dataclass(frozen=True)
class RemoteFile:
    source: str  # path under the base URL, at a pinned commit
    name: str  # file name in the data directory
    sha256: str  # of the bytes the source serves


def _files(pattern: str, name: str, sha256: dict[str, str]) -> list[RemoteFile]:
    return [RemoteFile(pattern.format(lang=lang), name.format(lang=lang), digest) for lang, digest in sha256.items()]


# The commits ../shared/data was built from (MLQA-R is gone from lareqa's head, so it comes from history).
SOURCES = {
    "xquad-r": _files("google-research-datasets/lareqa/raw/9bc8c7fb6d/xquad-r/{lang}.json", "{lang}.json.gz", {
        "ar": "c52922d3b8ac1ae03ed5ac38647ad59870dca3dda2beefe18ecdc30729acb69d",
        "de": "16fb0f4bf4916154b585a20c24c66074591c9718a1affe764ff4697572328949",
        "el": "163fd43ee785a30eb534ae2061e9eaa766a7ee4e8ffce5e4b422480c150f64b6",
        "en": "7b0954f39297c27a31fef610f0883337dd2907fa8699151dc922afdd0fa12ffe",
        "es": "f8e836b2d91009c4363e04315f7ede363eedbbb49c67dda60de6c4aa782f58de",
        "hi": "ea45ba8ae4513d1533b222bebdc02a90bc319c055d3aeea68584a053d2e92872",
        "ru": "7f4dff853538b9a5fcc28c070b8bb983a5c5d190ac747b8e005a1ada9cab18f1",
        "th": "c3a041864c3a9fb0b4dd91cfdf99cf36b411b3e704c58a303c97bc6dc786cfe4",
        "tr": "f3e8c13002bbce154a4578f535f7533cb70f3da08840e6b62735935baec7bd94",
        "vi": "e35926bf5cc6fc6ecbdfca49467aabeb454f08d152d7818143a906bd31dde995",
        "zh": "80c2cde7b9c2fb134c303cbb52f2ba396ead9eb0014aec43993543d2ba9e93ed",
    }),
    "mlqa-r": _files("google-research-datasets/lareqa/raw/354d67d1cd066854cdfbf5ad0e6105528976141d/mlqa-r/{lang}.json",
                     "{lang}.json.gz", {
        "ar": "2132fbc03208535c0fe01f2e2c5121d06f9c2aa799af93b0a719dbc105bdf137",
        "de": "ce9454dc5aa6f2d85c23cd6e49cb367fbb7c4c6e62d7f71e355c6b5dae4d0886",
        "en": "fedd9a5cc0848dda80caf84aa36f482adaae230526a3f6e9e86926a93ef3b1e4",
        "es": "70ecba276b8c96a692b120693a595d076ce94ad21d4b28311538a9fcbfe0f9d7",
        "hi": "4dd0fb3c06f737a5481d705bc1dcac7876712a5815c9265908fbb3a0696cb654",
        "vi": "9d3baff6ba03e6793b25594217265ea59a136b9733833dca8a9582a84a78ff85",
        "zh": "57f01d2fff50cf3392805635b01445339f225ad5bf28ba8443b12f8dbd1e69dc",
    }),
    "xquad": _files("google-deepmind/xquad/raw/7d30520c71/xquad.{lang}.json", "xquad.{lang}.json.gz", {
        "ar": "abdabd7afed5c635d99cca0f3f0d0c9d9ed0bc77451e963c2e4e0638c29e486d",
        "de": "990b5d746746ed65ed4702ea5f35f99ffa4e2f1c390c07d003642acd937916f9",
        "el": "821cf0f88e73fa258fd2f548b19b6ec39f7025059e16f6f9fc8cd797c9c3663e",
        "en": "e4c57d1c9143aaa1c5d265ba5987a65f4e69528d2a98f29d6e75019b10344f29",
        "es": "dcbae93ec3a9f4b9e78fd834a171d6f96c1a875e10e15b7530b7e4ef4971e37e",
        "hi": "df2cce3532b37e9beb8979704b5c9a4bf874358f105395a298b89427b43b9d24",
        "ro": "94f8d54e93ad2b7dd2e76dd921a666b5b8eff2d4379df9f179c42b445f09643f",
        "ru": "208d5b1aa154c52b1b5c5eda16281e455e8fd198cdb9af3f469f0d6037d973bf",
        "th": "5cdda11d0e1e075f7872abf4e6ae830388ce7f617964d542308e9ae4257e0f43",
        "tr": "92179a564774b7696100d144c1e10870d0a966b6fccbdd254a65b9d2ab1971cc",
        "vi": "f619a1eb11fb42d3ab0834259e488a65f585447ef6154437bfb7199d85161a04",
        "zh": "691d0b3359bc6b8faa8de931dfdfe21d50a65861ae348e32a0d1a0190b0c8835",
    }),
    # The checksum Hugging Face datasets recorded for this file (11,903,948 bytes).
    "mkqa": [RemoteFile("apple/ml-mkqa/raw/651b8cc85c407270b024157aff06ee6ab8c4fc6d/dataset/mkqa.jsonl.gz",
                        "mkqa.jsonl.gz", "f77ac6bf6306e98816c5c047880db71a3c67d2f1491b169896d63e9bb14ef3d3")],
}


def default_data_dir() -> Path:
    """$HBT_DATA, else the user's data directory: $XDG_DATA_HOME/hbt (~/.local/share/hbt), %LOCALAPPDATA%\\hbt."""
    if os.environ.get("HBT_DATA"):
        return Path(os.environ["HBT_DATA"]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "hbt"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "hbt"


def _stored_sha256(file: RemoteFile, target: Path) -> str:
    """The sha256 of the source bytes ``target`` holds (gunzipped, when hbt compressed them)."""
    digest = hashlib.sha256()
    with (open(target, "rb") if file.source.endswith(".gz") else gzip.open(target, "rb")) as stored:
        while chunk := stored.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_present(file: RemoteFile, target: Path) -> None:
    try:
        matches = _stored_sha256(file, target) == file.sha256
    except (OSError, EOFError, zlib.error):  # not gzip, or cut short
        matches = False
    if not matches:
        raise DataError(f"{target}: present, but not the pinned file (sha256 {file.sha256[:16]}…); "
                        "delete it and run hbt-bench download again")


def _fetch(url: str, file: RemoteFile, target: Path) -> None:
    """``url`` into ``target``, gzip-compressed unless it is already, if its sha256 is the pinned one."""
    try:
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as e:
        raise DataError(f"{target.parent}: not writable ({e.strerror or e}); choose another --data-dir") from e
    try:
        digest = hashlib.sha256()
        compress = not file.source.endswith(".gz")
        with urllib.request.urlopen(url, timeout=60) as response, os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else contextlib.nullcontext(raw) as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            raw.flush()
            os.fsync(raw.fileno())
        if digest.hexdigest() != file.sha256:
            raise DataError(f"{url}: sha256 {digest.hexdigest()[:16]}… is not the pinned {file.sha256[:16]}…; "
                            "the source changed or the mirror serves another file, so nothing was written")
        os.replace(partial, target)
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: download failed ({getattr(e, 'reason', e)}); check the connection "
                        f"or copy the files into {target.parent}") from e
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def download(name: str, data_dir: Path, base_url: str | None = None,
             progress: Callable[[str, int], None] = lambda file, size: None) -> list[Path]:
    """Fetch dataset ``name`` into ``data_dir/name``; returns the files written (present ones skipped)."""
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; hbt-bench download knows {', '.join(SOURCES)}")
    base = (base_url or os.environ.get("HBT_DOWNLOAD_URL") or GITHUB).rstrip("/")
    folder = Path(data_dir) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create ({e.strerror or e}); choose another --data-dir") from e
    written = []
    for file in SOURCES[name]:
        target = folder / file.name
        if target.exists():
            _check_present(file, target)
            continue
        _fetch(f"{base}/{file.source}", file, target)
        written.append(target)
        progress(file.name, target.stat().st_size)
    return written
