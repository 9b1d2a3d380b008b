"""``bench.filter_bench`` measures what it says: both ways select the same points (the
folder and type pairs, and the two conditions an older collection uses), find the same
exact answers, also after the pairs are stripped and upgraded back; its scan-only shard
is the product's less the graphs, and a build for walks links the pairs' points and
nothing else. Real Qdrant Edge on tiny synthetic collections; no timing is checked."""

from __future__ import annotations

import pytest

from bench import ann_corpus as corpus
from bench import filter_bench
from twinrank.store.edge import EdgeStore, _edge_config, edge_filter
from twinrank.store.schema import CENTRED_VECTOR, IMAGE_VECTOR


def test_both_ways_select_the_same_points_and_find_the_exact_answers(tmp_path):
    config = filter_bench.parse(["--points", "3000", "--dim", "32", "--queries", "6",
                                 "--upgrade", "--partition-beams", "40", "--workdir",
                                 str(tmp_path), "--out",
                                 str(tmp_path / "out.json")])
    report = filter_bench.main(config)
    folders, jpeg = corpus.payload_columns(3000, 0)
    wanted = {"folder_and_jpeg": int(((folders == 3) & jpeg).sum()),
              "folder_and_two_types": int((folders == 3).sum()),
              "folder_only": int((folders == 3).sum())}
    for name, ways in report["selection"].items():
        assert ways["pairs"]["points"] == ways["two_fields"]["points"] == wanted[name]
    for key, rows in report["results"].items():
        if key.endswith("_unfiltered_exact"):
            assert rows["recall@20"] == 1.0
            continue
        assert rows["pairs"]["recall@20"] == rows["two_fields"]["recall@20"] == 1.0
    assert set(report["results"]) == {f"{m}_{f}" for m in ("text", "image") for f in
                                      (*filter_bench.FILTERS, "unfiltered_exact")}
    partition = report["partition"]  # folder 3 alone: the filters find the same points
    assert partition["points"] == wanted["folder_only"]
    for name in filter_bench.FILTERS:
        for modality in ("text", "image"):
            rows = partition[f"{modality}_{name}"]
            assert set(rows) == {"exact (the policy)", "walk_40"}
            assert rows["exact (the policy)"]["recall@20"] == 1.0
    upgrade = report["upgrade"]  # stripped, upgraded back, and as exact as before
    assert upgrade["points_stripped"] == upgrade["points_paired"] == 3000
    for step in ("after_pairs", "after_optimize"):
        assert upgrade[f"count_{step}"]["points"] == wanted["folder_and_jpeg"]
        searched = {f"{m}_{f}_{step}" for m in ("text", "image") for f in filter_bench.FILTERS}
        assert {k for k in upgrade if k.endswith(step)} == searched | {f"count_{step}"}
        assert all(upgrade[k]["recall@20"] == 1.0 for k in searched)
    store = EdgeStore.open(tmp_path / "scan-only-3000")
    info = store.info
    payloads = dict(store.iter_payloads())
    store.close()
    assert info.folder_formats and all(p["folder_formats"] for p in payloads.values())
    product, scan_only = _edge_config(info).vectors, filter_bench.scan_only_config(info).vectors
    for name in (IMAGE_VECTOR, CENTRED_VECTOR):  # the graphs go, nothing else changes
        graph = product[name].hnsw_config  # None: Qdrant's default graph (m 16)
        assert (graph is None or graph.m > 0) and scan_only[name].hnsw_config.m == 0
        for kept in ("quantization_config", "datatype", "memory", "on_disk", "size"):
            assert repr(getattr(scan_only[name], kept)) == repr(getattr(product[name], kept))
    paired = edge_filter(filter_bench.FILTERS["folder_and_jpeg"], True)
    two = edge_filter(filter_bench.FILTERS["folder_and_jpeg"], False)
    assert [c.key for c in paired.must] == ["folder_formats"]
    assert [c.key for c in two.must] == ["folders", "format"]


def test_walks_are_measured_on_graphs_with_links_on_the_pairs_only(tmp_path):
    config = filter_bench.parse(["--points", "3000", "--dim", "32", "--queries", "4",
                                 "--walk-beams", "40", "--links", "--workdir", str(tmp_path),
                                 "--out", str(tmp_path / "out.json")])
    report = filter_bench.main(config)
    assert report["build"]["payload_links"] == ["folder_formats"]
    for key, rows in report["results"].items():
        assert ("walk_40" in rows) != key.endswith("_unfiltered_exact")
    store = EdgeStore.open(tmp_path / "graphs-links-3000")
    try:
        with store._lease.hold() as shard:
            linked = {name for name, index in shard.info().payload_schema.items()
                      if index.params is not None and index.params.enable_hnsw}
    finally:
        store.close()
    assert linked == {"folder_formats"}


def test_links_without_walks_are_refused(capsys):
    with pytest.raises(SystemExit):
        filter_bench.parse(["--links"])
    assert "give --walk-beams too" in capsys.readouterr().err


def test_payload_rewrite_measures_each_share_against_the_same_build(tmp_path):
    """``bench.payload_rewrite`` rewrites the share of points it names, through the store's
    own write, and measures before and after (no timing is checked)."""
    from bench import payload_rewrite

    args = payload_rewrite.parse(["--points", "400", "--dim", "16", "--fractions", "0.1",
                                  "1.0", "--out", str(tmp_path / "out.json")])
    report = payload_rewrite.main(args.points, args.dim, args.ef, args.fractions, args.out)
    assert [report[f"rewrite_{f}"]["points_rewritten"] for f in (0.1, 1.0)] == [40, 400]
    for row in (report["built"], *(report[f"rewrite_{f}"][step] for f in (0.1, 1.0)
                                   for step in ("after_rewrite", "after_optimize"))):
        assert set(row) == {"hnsw_ms", "exact_ms"} and min(row.values()) > 0
