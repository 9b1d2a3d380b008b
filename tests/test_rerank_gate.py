"""A reranker earns its place: search reranks by default only with recorded held-out gain.

A model folder trained before evidence existed is unproven; one whose evidence says the
reranker lost to the bi-encoder is not used either; the line says why, with the figures,
and ``--reranker fused`` still forces it (with the same figures). The torch client and the
torch-free fast path follow the one rule (``rerank.policy``). The tiny random head's
scores mean nothing here: the rule reads the evidence, not the scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_image
from typer.testing import CliRunner

from twinrank.cli import app
from twinrank.models import create_model, save_model
from twinrank.models.evidence import Evidence, read_evidence, write_evidence
from twinrank.search import SearchClient
from twinrank.search.fast import FastSearch, run_fast_search

UNTRAINED = "TWINRANK_ALLOW_UNTRAINED_RERANKER"
LOST = Evidence(0.0, -2.5, {"bi": {"t2i_recall@1": 20.0}, "coop@20": {"t2i_recall@1": 17.5}},
                "a held-out split")
WON = Evidence(3.0, 4.0, {"bi": {"t2i_recall@1": 20.0}, "coop@20": {"t2i_recall@1": 24.0}},
               "a held-out split")


@pytest.fixture
def trained_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A collection built with a model folder that says its reranker was trained."""
    monkeypatch.delenv(UNTRAINED, raising=False)
    folder = save_model(create_model("twinrank-tiny"), tmp_path / "model", reranker_trained=True)
    photos = tmp_path / "photos"
    for i in range(6):
        make_image(photos / f"p{i}.png", seed=700 + i)
    store = tmp_path / "store"
    done = CliRunner().invoke(app, ["ingest", str(photos), "--store", str(store), "--model",
                                    str(folder), "--no-progress"])
    assert done.exit_code == 0, done.output
    return folder, store


def search_json(store: Path, *extra: str) -> tuple[list[dict], str]:
    result = CliRunner().invoke(app, ["search", "blocks", "--store", str(store), "-k", "4",
                                      "--json", *extra])
    assert result.exit_code == 0, result.output
    text = result.output
    return json.loads(text[text.index("[") : text.rindex("]") + 1]), text


def test_an_unproven_reranker_is_off_by_default_and_forced_with_the_same_line(
        trained_store: tuple[Path, Path]) -> None:
    folder, store = trained_store
    assert read_evidence(folder) is None
    rows, text = search_json(store)
    assert all(r["rerank_rank"] is None for r in rows)
    assert "reranker is unproven" in text and "twinrank evaluate --record" in text
    with SearchClient(store) as client:
        assert client.reranker is None and "unproven" in (client.reranker_note or "")
    forced, text = search_json(store, "--reranker", "fused")
    assert all(r["rerank_rank"] is not None for r in forced)
    assert "Reranking as asked, although" in text and "unproven" in text


def test_a_reranker_that_lost_on_validation_says_so_with_its_figures(
        trained_store: tuple[Path, Path]) -> None:
    folder, store = trained_store
    write_evidence(folder, LOST)
    rows, text = search_json(store)
    assert all(r["rerank_rank"] is None for r in rows)
    assert "did not beat the bi-encoder" in text and "20.0" in text and "-2.5" in text
    results, note = run_fast_search(store, FastSearch("blocks", k=4))
    assert all(h.rerank_rank is None for h in results) and "-2.5" in (note or "")


def test_a_reranker_with_positive_evidence_reranks_with_its_weight(
        trained_store: tuple[Path, Path]) -> None:
    folder, store = trained_store
    write_evidence(folder, WON)
    rows, text = search_json(store)
    assert all(r["rerank_rank"] is not None for r in rows)
    assert "No reranking" not in text
    for row in rows:  # rerank + w * bi, w = the recorded 3.0
        assert row["score"] == pytest.approx(row["rerank_score"] + 3.0 * row["bi_score"],
                                             abs=1e-4)
    with SearchClient(store) as client:
        assert client.reranker is not None and client.bi_weight == 3.0
        hits = client.search("blocks", k=4)
    assert [h.id for h in hits] == [r["id"] for r in rows]


def test_evaluate_record_writes_the_evidence_search_reads(
        trained_store: tuple[Path, Path], tmp_path: Path) -> None:
    folder, store = trained_store
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({"image": str(p), "caption": f"picture {p.stem}"}) + "\n"
                            for p in sorted((tmp_path / "photos").glob("*.png"))))
    result = CliRunner().invoke(app, [
        "evaluate", "--model", str(folder), "--data", str(data), "--modes", "bi,coop",
        "--k-sweep", "5", "--latency-queries", "0", "--record"])
    assert result.exit_code == 0, result.output
    evidence = read_evidence(folder)
    assert evidence is not None and evidence.reranker_gain is not None
    assert "Recorded in" in result.output
    assert evidence.figures["bi"]["t2i_recall@1"] >= 0
    _, text = search_json(store)
    assert ("No reranking" in text) == (not evidence.reranker_helps)
