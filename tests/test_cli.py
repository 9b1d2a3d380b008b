"""The CLI through Typer's runner: what a user types, what they see."""

from __future__ import annotations

import json
import os
import shutil

from typer.testing import CliRunner

from twinrank.cli import app

runner = CliRunner()


TINY = ("--model", "twinrank-tiny")  # a new store defaults to a pretrained preset

def test_ingest_then_search_as_json(image_folder, tmp_path):
    store = tmp_path / "store"
    result = runner.invoke(app, ["ingest", str(image_folder), "--store", str(store),
                                 "--model", "twinrank-tiny",
                                 "--report", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert "added 10" in result.output and "failed 1" in result.output
    assert "broken.jpg" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["added"] == 10
    result = runner.invoke(app, ["search", "a red block", "--store", str(store), "-k", "3",
                                 "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["rerank_rank"] == r["rank"] for r in rows)


def test_plain_search_output_and_no_rerank(image_folder, tmp_path):
    store = tmp_path / "store"
    runner.invoke(app, ["ingest", str(image_folder), "--store", str(store), *TINY])
    result = runner.invoke(app, ["search", "blocks", "--store", str(store), "--no-rerank"])
    assert result.exit_code == 0
    assert result.output.count(str(image_folder)) == 10
    assert "encode_ms" in result.output and "rerank_ms" not in result.output


def test_threads_option_sets_torch_threads_and_the_apps_environment(image_folder, tmp_path):
    import torch

    from twinrank.ui.launch import ui_environment

    store = tmp_path / "store"
    runner.invoke(app, ["ingest", str(image_folder), "--store", str(store), *TINY])
    shutil.rmtree(store / "fast")  # the torch path (the fast one gives ONNX Runtime the threads)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        result = runner.invoke(app, ["search", "blocks", "--store", str(store), "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert ui_environment(store, threads=3)["OMP_NUM_THREADS"] == "3"
    assert ui_environment(store).get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
    assert runner.invoke(app, ["search", "x", "--store", str(store), "--threads", "0"]
                         ).exit_code != 0  # refused: at least one thread


def test_user_errors_are_one_line_not_a_traceback(image_folder, tmp_path):
    cases = [
        ["search", "x", "--store", str(tmp_path / "none")],
        ["ingest", str(tmp_path / "missing"), "--store", str(tmp_path / "s"), *TINY],
        ["ingest", str(image_folder), "--store", str(tmp_path / "s2"), "--model", "nope"],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, args
        assert "Error:" in result.output and "Traceback" not in result.output


def test_empty_query_is_refused(image_folder, tmp_path):
    store = tmp_path / "store"
    runner.invoke(app, ["ingest", str(image_folder), "--store", str(store), *TINY])
    result = runner.invoke(app, ["search", "  ", "--store", str(store)])
    assert result.exit_code == 1 and "empty" in result.output


def test_help_teaches_every_command():
    result = runner.invoke(app, ["--help"])
    for command in ("ingest", "search", "ui", "demo"):
        assert command in result.output
    result = runner.invoke(app, ["ingest", "--help"])
    assert "--batch-size" in result.output and "--store" in result.output


def test_bench_lists_benchmarks_and_refuses_unknown_names():
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 0
    for name in ("ingest_bench", "store_bench", "rerank_bench", "train_bench", "eval_scenes"):
        assert name in result.output
    result = runner.invoke(app, ["bench", "no_such_bench"])
    assert result.exit_code == 1 and "Unknown benchmark" in result.output


def test_every_runnable_bench_module_is_listed():
    """`twinrank bench NAME` runs only what the registry lists: a new bench/ script with a
    main must be added there, or users cannot find it."""
    from bench import BENCHMARKS, ROOT

    runnable = {path.stem for path in (ROOT / "bench").glob("*.py")
                if 'if __name__ == "__main__"' in path.read_text(encoding="utf-8")}
    assert runnable == set(BENCHMARKS)
