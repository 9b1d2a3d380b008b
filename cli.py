"""twinrank's command line: options in, dataclasses out, work done elsewhere.

    twinrank demo                        # offline: generated scenes, indexed, in the app
    twinrank ingest ~/Pictures           # embed a folder into the store
    twinrank search "a dog on a beach"   # bi-encoder top-k, reranked
    twinrank ui                          # the app: before / after reranking
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="twinrank",
    help="Image search that retrieves fast and reranks smart.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_HOME = Path(os.environ.get("TWINRANK_HOME", "~/.twinrank")).expanduser()
StoreOption = Annotated[
    Path,
    typer.Option("--store", "-s", help="Collection folder (embedded Qdrant Edge).",
                 envvar="TWINRANK_STORE"),
]
DeviceOption = Annotated[
    str | None, typer.Option(help="cpu, cuda or cuda:N; default: CUDA when available.")
]


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Errors a user can cause become one red line and exit code 1, never a traceback."""
    from models import ModelLoadError
    from search import StoreError
    from search.client import QueryError

    try:
        yield
    except (ModelLoadError, StoreError, QueryError, FileNotFoundError, ValueError) as error:
        typer.secho(f"Error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


@app.command()
def ingest(
    folder: Annotated[Path, typer.Argument(help="Folder of images; searched recursively.")],
    store: StoreOption = DEFAULT_HOME / "store",
    model: Annotated[str | None, typer.Option(
        help="Model: an open_clip name (ViT-B-32), a model folder, or twinrank-tiny. "
             "Default: the store's model, or twinrank-tiny for a new store.")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="open_clip pretrained tag or a local checkpoint file, with --model.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model forward.")] = 32,
    workers: Annotated[int, typer.Option(min=1, help="Image decoding threads.")] = 2,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    include_hidden: Annotated[bool, typer.Option(help="Also read hidden files/folders.")] = False,
    device: DeviceOption = None,
    report: Annotated[Path | None, typer.Option(help="Write the run's report as JSON.")] = None,
) -> None:
    """Embed every image under FOLDER into the store; re-runs only embed what changed."""
    from ingest.job import IngestJob, ingest_folder
    from ingest.runner import IngestConfig

    config = IngestConfig(root=folder.expanduser(), batch_size=batch_size, workers=workers,
                          include_hidden=include_hidden, precision=precision)
    with friendly_errors():
        result = ingest_folder(IngestJob(config, store.expanduser(), model, pretrained, device))
    typer.echo(result.summary())
    for failure in result.failed[:20]:
        typer.secho(f"  skipped {failure['path']}: {failure['reason']}", fg=typer.colors.YELLOW)
    if report:
        report.write_text(result.to_json())


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What you are looking for, in words.")],
    store: StoreOption = DEFAULT_HOME / "store",
    k: Annotated[int, typer.Option("-k", min=1, help="Number of results.")] = 10,
    rerank: Annotated[bool, typer.Option(help="Reorder the top candidates with the "
                                              "cross-encoder.")] = True,
    rerank_top_k: Annotated[int, typer.Option(min=1, help="Candidates the reranker sees.")] = 20,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON.")] = False,
) -> None:
    """Search the store by text and print the best matches."""
    from search import SearchClient

    with friendly_errors(), SearchClient(store.expanduser(), device=device,
                                         rerank_top_k=rerank_top_k) as client:
        hits = client.search(query, k=k, rerank=rerank)
    if as_json:
        rows = [{"rank": i, "path": h.path, "score": h.score, "bi_score": h.bi_score,
                 "bi_rank": h.bi_rank, "rerank_score": h.rerank_score,
                 "rerank_rank": h.rerank_rank, "id": h.id} for i, h in enumerate(hits, 1)]
        typer.echo(json.dumps(rows, indent=2))
        return
    for i, hit in enumerate(hits, start=1):
        moved = "" if hit.moved is None else f" (bi #{hit.bi_rank})"
        typer.echo(f"{i:>3}  {hit.score:8.3f}  {hit.path}{moved}")
    typer.echo(" · ".join(f"{key} {value:.1f}" for key, value in hits.timings.items()))


@app.command()
def ui(
    store: StoreOption = DEFAULT_HOME / "store",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
) -> None:
    """Open the app: results before and after reranking, side by side."""
    from ui.launch import is_loopback, start_ui

    if not is_loopback(host):
        typer.secho(f"Warning: listening on {host}; anyone who can reach it can search "
                    f"this collection.", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"twinrank is running at http://{host}:{port}  (Ctrl+C to stop)")
    process = start_ui(store.expanduser(), host, port)
    with contextlib.suppress(KeyboardInterrupt):
        process.wait()


@app.command("make-scenes")
def make_scenes_command(
    out: Annotated[Path, typer.Argument(help="Folder to write images and captions to.")],
    n_train: Annotated[int, typer.Option(min=0)] = 2000,
    n_test: Annotated[int, typer.Option(min=0)] = 500,
    image_size: Annotated[int, typer.Option(min=16)] = 64,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Generate synthetic compositional scenes (shapes, colours, relations) with captions."""
    from train.scenes import ScenesConfig, make_scenes

    config = ScenesConfig(n_train=n_train, n_test=n_test, image_size=image_size, seed=seed)
    with friendly_errors():
        summary = make_scenes(out, config, progress=True)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "config"}, default=str))


@app.command("train")
def train_command(
    data: Annotated[list[str], typer.Option(
        "--data", "-d", help="Training data, repeatable: scenes:DIR:train:en, PATH.jsonl, "
                             "karpathy:JSON:ROOT:train, multi30k:LIST:CAPS:ROOT:LANG.")],
    out: Annotated[Path, typer.Option(help="Model folder to write (config.json + "
                                           "model.safetensors, metrics.jsonl, checkpoints/).")],
    model: Annotated[str, typer.Option(help="Start from: an architecture (twinrank-scenes, "
                                            "ViT-B-32) or a model folder.")] = "twinrank-scenes",
    pretrained: Annotated[str | None, typer.Option(
        help="open_clip pretrained tag or checkpoint file, with --model.")] = None,
    mode: Annotated[str, typer.Option(help="joint (shared towers, both losses), sep (two "
                                           "models), bi or cross.")] = "joint",
    epochs: Annotated[float, typer.Option(min=0.0)] = 10.0,
    steps: Annotated[int, typer.Option(min=0, help="Optimiser steps; overrides --epochs.")] = 0,
    batch_size: Annotated[int, typer.Option(min=2)] = 64,
    accum_steps: Annotated[int, typer.Option(min=1, help="Micro-batches per step.")] = 1,
    lr: Annotated[float, typer.Option(min=0.0)] = 5e-4,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.05,
    warmup_steps: Annotated[int, typer.Option(min=0)] = 100,
    contrastive_weight: Annotated[float, typer.Option(min=0.0)] = 1.0,
    match_weight: Annotated[float, typer.Option(min=0.0)] = 1.0,
    easy_negatives: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of match negatives drawn at random, not mined.")] = 0.5,
    freeze_layers: Annotated[int, typer.Option(min=0, help="Freeze embeddings + first N "
                                                          "blocks of both towers.")] = 0,
    group_lookalikes: Annotated[bool, typer.Option(help="Batch look-alike scenes "
                                                        "together.")] = True,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    device: DeviceOption = None,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads; 0: torch's default. 1 is "
                                                     "fastest on a CPU others use too.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Steps between "
                                                             "checkpoints; 0: none.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in "
                                              "--out.")] = False,
    log_every: Annotated[int, typer.Option(min=1)] = 10,
    save_dtype: Annotated[str, typer.Option(help="fp32, or fp16 for half-size "
                                                 "files.")] = "fp32",
) -> None:
    """Fine-tune a model as bi-encoder and cross-encoder (JOINT), or SEP / one of them."""
    import sys

    from train.trainer import TrainConfig, train

    with friendly_errors():
        config = TrainConfig(
            data=tuple(data), out=out.expanduser(), model=model, pretrained=pretrained,
            mode=mode, epochs=epochs, steps=steps, batch_size=batch_size,
            accum_steps=accum_steps, lr=lr, weight_decay=weight_decay,
            warmup_steps=warmup_steps, contrastive_weight=contrastive_weight,
            match_weight=match_weight, easy_negatives=easy_negatives, freeze_layers=freeze_layers,
            group_lookalikes=group_lookalikes, seed=seed, device=device, threads=threads,
            checkpoint_every=checkpoint_every, resume=resume, log_every=log_every,
            save_dtype=save_dtype, command=" ".join(["twinrank", *sys.argv[1:]]))
        result = train(config)
    typer.echo(f"trained {result.steps} steps in {result.seconds:.0f} s; model folder: "
               f"{result.model_dir}")


@app.command()
def demo(
    home: Annotated[Path, typer.Option(help="Where the demo's images and store go.")] =
        DEFAULT_HOME / "demo",
    port: Annotated[int, typer.Option(help="Port for the app.")] = 8501,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Build the demo, don't start "
                                                        "the app.")] = False,
) -> None:
    """Offline demo: generate scenes, index them with the demo model, open the app."""
    from ingest.job import IngestJob, ingest_folder
    from ingest.runner import IngestConfig
    from models import DEMO_MODEL
    from train.scenes import ScenesConfig, make_scenes

    home = home.expanduser()
    with friendly_errors():
        if not (home / "scenes" / "scenes.json").exists():
            make_scenes(home / "scenes", ScenesConfig(n_train=0, n_val=0, n_test=300,
                                                      n_zeroshot=0, image_size=128))
        job = IngestJob(IngestConfig(home / "scenes" / "images"), home / "store", DEMO_MODEL)
        typer.echo(ingest_folder(job).summary())
    typer.echo('Try: "a small red circle left of a large blue square"')
    if not no_ui:
        ui(store=home / "store", host="127.0.0.1", port=port)


if __name__ == "__main__":
    app()
