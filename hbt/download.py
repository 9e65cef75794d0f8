"""hbt-bench download: the public evaluation files, from their GitHub sources, into the data directory.

Each file is fetched to a temporary name, gzip-compressed when the source is plain
JSON (the layout hbt reads, the same as ``../shared/data``), and renamed into place:
an interrupted download leaves no partial file. Files already present are kept.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from hbt.errors import DataError

GITHUB = "https://github.com"
LAREQA_LANGS = {"xquad-r": "ar de el en es hi ru th tr vi zh", "mlqa-r": "ar de en es hi vi zh"}
# name -> [(path under the base URL, file name in the data directory)], pinned to the commits
# ../shared/data was built from (MLQA-R is gone from lareqa's head, so it comes from history).
SOURCES = {
    "xquad-r": [(f"google-research-datasets/lareqa/raw/9bc8c7fb6d/xquad-r/{l}.json", f"{l}.json.gz")
                for l in LAREQA_LANGS["xquad-r"].split()],
    "mlqa-r": [(f"google-research-datasets/lareqa/raw/354d67d1cd/mlqa-r/{l}.json", f"{l}.json.gz")
               for l in LAREQA_LANGS["mlqa-r"].split()],
    "xquad": [(f"google-deepmind/xquad/raw/7d30520c71/xquad.{l}.json", f"xquad.{l}.json.gz")
              for l in "ar de el en es hi ro ru th tr vi zh".split()],
    "mkqa": [("apple/ml-mkqa/raw/main/dataset/mkqa.jsonl.gz", "mkqa.jsonl.gz")],
}


def download(name: str, data_dir: Path, base_url: str | None = None,
             progress: Callable[[str, int], None] = lambda file, size: None) -> list[Path]:
    """Fetch dataset ``name`` into ``data_dir/name``; returns the files written (present ones skipped)."""
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; hbt-bench download knows {', '.join(SOURCES)}")
    base = (base_url or os.environ.get("HBT_DOWNLOAD_URL") or GITHUB).rstrip("/")
    folder = Path(data_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source, file_name in SOURCES[name]:
        target = folder / file_name
        if target.exists():
            continue
        url = f"{base}/{source}"
        fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{file_name}.")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, os.fdopen(fd, "wb") as raw:
                out = raw if source.endswith(".gz") else gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
                shutil.copyfileobj(response, out)
                if out is not raw:
                    out.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, target)
        except (urllib.error.URLError, OSError) as e:
            raise DataError(f"{url}: download failed ({getattr(e, 'reason', e)}); check the connection "
                            f"or copy the files into {folder}") from e
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        written.append(target)
        progress(file_name, target.stat().st_size)
    return written
