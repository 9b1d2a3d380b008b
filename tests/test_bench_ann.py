"""``bench.ann_bench``'s own parts that decide what its recorded figures mean: a build
asked for payload links gets them (and the product's setting is restored after it), the
ACORN rows run on filtered queries only, and an impossible combination is refused. Real
Qdrant Edge on a tiny synthetic collection; no timing is checked."""

from __future__ import annotations

import pytest

from bench import ann_bench
from twinrank.store import edge as edge_module
from twinrank.store.edge import EdgeStore


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("ann")
    config = ann_bench.parse(["--points", "3000", "--dim", "32", "--queries", "6",
                              "--exact-queries", "3", "--quantization", "none",
                              "--candidates", "40", "--efs", "32", "--payload-links",
                              "--acorn-beams", "40", "--workdir", str(work), "--keep",
                              "--out", str(work / "out.json")])
    return ann_bench.main(config), work


def test_a_build_asked_for_payload_links_makes_its_indexes_with_them(report):
    result, work = report
    assert result["build"]["payload_links"] is True
    assert edge_module.PAYLOAD_GRAPH_LINKS is False  # the product's setting, restored
    (folder,) = [p for p in work.iterdir() if p.is_dir()]
    assert folder.name.endswith("-links")  # never mixed up with a product build
    store = EdgeStore.open(folder)
    try:
        with store._lease.hold() as shard:
            schema = shard.info().payload_schema
    finally:
        store.close()
    assert any(index.params is not None and index.params.enable_hnsw is True
               for index in schema.values())


def test_acorn_rows_are_measured_for_filtered_queries_only(report):
    results = report[0]["results"]
    assert set(results) == {"text", "text_filtered", "image", "image_filtered"}
    for key, rows in results.items():
        assert ("acorn_40" in rows) == key.endswith("_filtered")
        assert rows["exact"]["recall@20"] == 1.0  # against numpy's answer
        assert 0.0 <= rows.get("acorn_40", rows["exact"])["recall@20"] <= 1.0


def test_payload_links_with_indexes_after_the_build_is_refused(capsys):
    with pytest.raises(SystemExit):
        ann_bench.parse(["--payload-links", "--indexes-after-build"])
    assert "--payload-links needs the payload indexes before" in capsys.readouterr().err
