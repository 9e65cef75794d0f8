"""hbt-index build --ray's last step, without a cluster: the commit decides under the lock whether an index is there."""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="needs the ray extra: pip install 'hbt[ray]'")

from hbt.corpus import Document  # noqa: E402
from hbt.distributed import build as ray_build  # noqa: E402
from hbt.errors import SearchIndexError  # noqa: E402
from hbt.index import Index, IndexConfig, build_index, is_staged, stage_segment  # noqa: E402
from tests.fakes import HashEncoder  # noqa: E402


CONFIG = IndexConfig(M=8, ef_construction=32)


def stage_one_part(staging, documents: list[Document], encoder) -> dict:
    """A finished part as the cluster leaves it, and the plan that names it."""
    staging.mkdir()
    stage_segment(staging / ray_build.part_name(0), encoder.dimension, CONFIG,
                  [(documents, encoder.encode_passages([d.text for d in documents]))])
    return {"part_documents": [len(documents)]}


def test_a_ray_build_refuses_an_index_built_while_the_cluster_worked(tmp_path):
    """build_index_on_ray checks the target when it starts; a local build may commit there before it ends."""
    encoder, out = HashEncoder(), tmp_path / "index"
    staging = ray_build.staging_dir(out)
    plan = stage_one_part(staging, [Document(f"r{i}", f"ray text {i}") for i in range(5)], encoder)
    build_index([Document(f"l{i}", f"local text {i}") for i in range(300)], encoder, out)  # meanwhile
    with pytest.raises(SearchIndexError, match="already exists") as error:
        ray_build.commit_parts(out, staging, plan, encoder, CONFIG)
    assert "\n" not in str(error.value)
    assert Index(out).count == 300
    assert is_staged(staging / ray_build.part_name(0))  # kept for a rerun with --force
    assert ray_build.commit_parts(out, staging, plan, encoder, CONFIG, force=True).count == 5
    assert Index(out).count == 5 and not staging.exists()
