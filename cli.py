"""twinrank's command line: options in, dataclasses out, work done elsewhere.

    twinrank demo                        # offline: generated scenes, indexed, in the app
    twinrank ingest ~/Pictures           # embed a folder into the store
    twinrank search "a dog on a beach"   # bi-encoder top-k, reranked
    twinrank rerank "a dog" a.jpg b.jpg  # order image files with a cross-encoder
    twinrank ui                          # the app: before / after reranking
    twinrank models                      # the presets, and `models pull NAME` to fetch one
    twinrank check ~/.twinrank/store     # verify a collection (like git fsck); --repair
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
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
DEMO_IMAGES = 300  # generated pictures the demo indexes
StoreOption = Annotated[
    Path,
    typer.Option("--store", "-s", help="Collection folder (embedded Qdrant Edge).",
                 envvar="TWINRANK_STORE"),
]
DeviceOption = Annotated[
    str | None, typer.Option(help="cpu, cuda or cuda:N; default: CUDA when available.")
]
RerankerOption = Annotated[str, typer.Option(
    help="auto (the collection's trained reranker, else none, said in one line), fused "
         "(the model's own over cached tokens), blip-itm[:HF-ID-OR-FOLDER], or none.")]
BiWeightOption = Annotated[float | None, typer.Option(
    min=0.0, help="Reranked score = match + W * bi-encoder score. Default: the model's own "
                  "recipe (BLIP: 1, its authors' ITM + ITC; a model trained here: the W its "
                  "validation split chose); 0 = the reranker's order alone.")]
ThreadsOption = Annotated[int | None, typer.Option(
    min=1, help="CPU threads for the models. Default: torch's choice (one per core); on a "
                "machine others are using, 1 is often faster.")]


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for torch in this process (None: leave torch's choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


# Errors a user can cause, by the module that defines them. A class whose module this run
# never imported cannot have been raised, and importing it just to catch it would load
# torch (the model errors) into commands that never need it: a no-op ingest, a fast search.
USER_ERRORS = (("twinrank.models.factory", "ModelLoadError"),
               ("twinrank.store.schema", "StoreError"),
               ("twinrank.search.route", "QueryError"))


def user_error_types() -> tuple[type[BaseException], ...]:
    """The user-error classes of the modules loaded so far, plus the built-in ones."""
    loaded = [getattr(sys.modules[module], name, None) for module, name in USER_ERRORS
              if module in sys.modules]
    return (*(kind for kind in loaded if isinstance(kind, type)), FileNotFoundError, ValueError,
            ConnectionError)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Errors a user can cause become one red line and exit code 1, never a traceback."""
    try:
        yield
    except Exception as error:
        if not isinstance(error, user_error_types()):
            raise
        typer.secho(f"Error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


@app.command()
def ingest(
    folder: Annotated[Path, typer.Argument(help="Folder of images; searched recursively "
                                                "(JPEG, PNG, WebP, GIF, BMP, TIFF; HEIC/AVIF "
                                                "when their Pillow plugin is installed).")],
    store: StoreOption = DEFAULT_HOME / "store",
    model: Annotated[str | None, typer.Option(
        help="A preset (twinrank models: blip-base, clip-b32, demo, ...), an open_clip name "
             "with --pretrained, blip:HF-ID-OR-FOLDER, or a model folder. Default: the "
             "store's model, or blip-base for a new store.")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="open_clip pretrained tag or a local checkpoint file, with --model.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model forward.")] = 32,
    workers: Annotated[int, typer.Option(
        min=1, help="Threads that read, hash and decode images ahead of the model.")] = 2,
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads for the model's forward pass. Default: torch's choice "
                    "(one per core).")] = None,
    precision: Annotated[str, typer.Option(
        help="auto, fp32, bf16 or fp16. auto: bf16 on CUDA (fp16 without bf16) and on "
             "CPUs with native bf16 for full-size models; fp32 otherwise.")] = "auto",
    device: DeviceOption = None,
    include: Annotated[list[str] | None, typer.Option(
        help="Only ingest files matching this glob (repeatable; case-insensitive). "
             "Without '/' it matches names at any depth ('*.jpg'), with '/' the path "
             "under FOLDER ('2021/**').")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        help="Skip files and folders matching this glob (repeatable), e.g. '@eaDir', "
             "'**/thumbnails'.")] = None,
    include_hidden: Annotated[bool, typer.Option(
        help="Also read hidden files and folders (names starting with '.').")] = False,
    follow_links: Annotated[bool, typer.Option(
        help="Follow symbolic links to files and folders (each folder once, so link "
             "loops are safe).")] = True,
    prune: Annotated[bool, typer.Option(
        help="Forget images under FOLDER whose files are gone (a deleted photo's point "
             "is removed). Off by default, so an unplugged drive loses nothing.")] = False,
    decode_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds one file may take to read and decode before it is "
                      "skipped as hung.")] = 60.0,
    max_megapixels: Annotated[float, typer.Option(
        min=0.001, help="Skip images larger than this (decompression-bomb guard).")] = 180.0,
    max_file_mb: Annotated[float, typer.Option(
        min=0.001, help="Skip files larger than this many MB, from their size alone, "
                        "unread.")] = 256.0,
    report: Annotated[Path | None, typer.Option(
        help="Write the run's report as JSON: counts, every skipped file with its "
             "reason, timings.")] = None,
    progress: Annotated[bool, typer.Option(
        help="Show a progress bar (images/s and ETA).")] = True,
    cache_tokens: Annotated[bool, typer.Option(
        help="Store each image's reranker tokens (BLIP-base: 886 kB per image, on disk), "
             "so a rerank reads no image. --no-cache-tokens stores none (0 bytes; set when "
             "the store is created): a rerank then reads its k images.")] = True,
    engine: Annotated[str, typer.Option(
        help="local: this process. ray: Ray Data, read tasks and an actor pool of models, "
             "here or on a cluster (pip install 'twinrank[ray]'; docs/scale.md).")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        help="With --engine ray: the cluster to join (auto, ray://HOST:10001). Default: "
             "start Ray on this machine.")] = None,
    actors: Annotated[int, typer.Option(
        min=1, help="With --engine ray: embedding actors, one model copy each.")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(
        min=0.0, help="With --engine ray: GPUs each actor reserves (0: it runs on "
                      "CPUs).")] = 0.0,
    source_list: Annotated[bool, typer.Option(
        help="FOLDER is a list of image paths, one per line (txt) or in a 'path' column "
             "(CSV, Parquet); recognised by its suffix without this flag. With --engine "
             "ray.")] = False,
    url: Annotated[str | None, typer.Option(
        help="With --engine ray: ingest into the Qdrant server or cluster at this URL "
             "instead of --store (API key from TWINRANK_QDRANT_API_KEY).")] = None,
    collection: Annotated[str | None, typer.Option(
        help="Collection name on the server (with --url; default twinrank).")] = None,
    shards: Annotated[int | None, typer.Option(
        min=1, help="With --url, for a new collection: shards to split it into.")] = None,
    replicas: Annotated[int | None, typer.Option(
        min=1, help="With --url, for a new collection: copies of each shard.")] = None,
    write_consistency: Annotated[int | None, typer.Option(
        min=1, help="With --url, for a new collection: replicas that must accept a "
                    "write.")] = None,
) -> None:
    """Embed every image under FOLDER into the store; re-runs only embed what changed.

    Unchanged files (same size and mtime) are not opened; moved, renamed or copied
    files are recognised by their content and not embedded again. Unreadable files are
    skipped and listed, never fatal. Safe to interrupt (even kill -9): run it again to
    finish.
    """
    from twinrank.ingest.engines import ingest_with_engine
    from twinrank.ingest.job import IngestInterrupted, IngestJob
    from twinrank.ingest.runner import IngestConfig

    config = IngestConfig(
        root=folder.expanduser(), batch_size=batch_size, workers=workers,
        include_hidden=include_hidden, precision=precision, progress=progress,
        include=tuple(include or ()), exclude=tuple(exclude or ()),
        follow_links=follow_links, prune=prune, decode_timeout=decode_timeout,
        cache_tokens=cache_tokens,
        max_pixels=int(max_megapixels * 1_000_000),
        max_file_bytes=int(max_file_mb * 1024 * 1024))
    job = IngestJob(config, store.expanduser(), model, pretrained, device,
                    report_path=report, torch_threads=threads)
    ray_options, server = None, None
    if engine != "local" or url or source_list:  # the Ray engine's module loads torch
        from twinrank.ingest.ray_engine import RayOptions, ServerTarget
        from twinrank.store import ClusterLayout

        ray_options = RayOptions(address=ray_address, actors=actors,
                                 gpus_per_actor=gpus_per_actor, model_threads=threads,
                                 source_list=source_list)
        server = ServerTarget(url, collection, ClusterLayout(shards, replicas,
                                                             write_consistency)) if url else None
    try:
        with friendly_errors():
            result = ingest_with_engine(job, engine, ray_options, server)
    except IngestInterrupted as interrupted:
        typer.echo("\n".join(interrupted.report.lines()), err=True)
        raise typer.Exit(130) from None
    typer.echo("\n".join(result.lines()))


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What you are looking for, in words.")],
    store: StoreOption = DEFAULT_HOME / "store",
    k: Annotated[int, typer.Option("-k", min=1, help="Number of results.")] = 10,
    rerank: Annotated[bool, typer.Option(help="Reorder the top candidates with the "
                                              "cross-encoder.")] = True,
    rerank_top_k: Annotated[int, typer.Option(min=1, help="Candidates the reranker sees.")] = 20,
    reranker: RerankerOption = "auto",
    bi_weight: BiWeightOption = None,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON.")] = False,
    folder: Annotated[str | None, typer.Option(
        help="Only images under this folder (and its sub-folders).")] = None,
    after: Annotated[str | None, typer.Option(
        help="Only images captured on or after this date, e.g. 2021-01-01.")] = None,
    before: Annotated[str | None, typer.Option(
        help="Only images captured before this date, e.g. 2022-01-01.")] = None,
    file_type: Annotated[list[str] | None, typer.Option(
        "--type", help="Only this file type (jpeg, png, ...); repeat for several.")] = None,
    min_size: Annotated[str | None, typer.Option(help="Only files of at least this "
                                                      "size, e.g. 500kB.")] = None,
    max_size: Annotated[str | None, typer.Option(help="Only files of at most this "
                                                      "size, e.g. 5MB.")] = None,
    orientation: Annotated[str | None, typer.Option(
        help="Only landscape, portrait or square pictures.")] = None,
    url: Annotated[str | None, typer.Option(
        help="Search a Qdrant server instead of --store (API key from "
             "TWINRANK_QDRANT_API_KEY).", envvar="TWINRANK_QDRANT_URL")] = None,
    collection: Annotated[str | None, typer.Option(
        help="Collection name on the Qdrant server (with --url).")] = None,
    threads: ThreadsOption = None,
) -> None:
    """Search the store by text and print the best matches.

    A collection folder answers from its fast query path (ONNX Runtime, no torch) when
    ingest wrote one for its model; otherwise, or for a server, a GPU or a reranker that
    only torch runs, this loads the model (one line says why).
    """
    import warnings

    from twinrank.display import QUERY_CUT, printable  # no torch on the fast path
    from twinrank.store.filters import filter_from_text

    with friendly_errors(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        filters = filter_from_text(folder, after, before, file_type or (), min_size, max_size,
                                   orientation)
        hits, note = None, None
        if url is None and device in (None, "cpu"):
            from twinrank.search import fast

            request = fast.FastSearch(query, k, rerank, rerank_top_k, bi_weight, filters,
                                      reranker)
            try:
                hits, note = fast.run_fast_search(store.expanduser(), request, threads)
            except fast.NeedsTorch:  # e.g. --reranker blip-itm: expected, nothing to say
                pass
            except fast.FastPathUnavailable as why:
                typer.secho(f"Fast search unavailable: {why}; loading the model with torch.",
                            fg=typer.colors.YELLOW, err=True)
        if hits is None:
            from twinrank.search import SearchClient

            set_threads(threads)
            with SearchClient(url or store.expanduser(), device=device, reranker=reranker,
                              rerank_top_k=rerank_top_k, bi_weight=bi_weight,
                              collection=collection) as client:
                hits = client.search(query, k=k, rerank=rerank, filters=filters)
                note = client.reranker_note if rerank else None
    for text in dict.fromkeys(str(w.message) for w in caught):
        if text.startswith(QUERY_CUT):  # the one warning a user should see
            typer.secho(text, fg=typer.colors.YELLOW, err=True)
    if note:
        typer.echo(note, err=True)
    if as_json:
        rows = [{"rank": i, "path": h.path, "score": h.score, "bi_score": h.bi_score,
                 "bi_rank": h.bi_rank, "rerank_score": h.rerank_score,
                 "rerank_rank": h.rerank_rank, "id": h.id} for i, h in enumerate(hits, 1)]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not hits:
        typer.echo("No images match." + (" Try fewer filters." if filters else ""))
    for i, hit in enumerate(hits, start=1):
        moved = "" if hit.moved is None else f" (bi #{hit.bi_rank})"
        typer.echo(f"{i:>3}  {hit.score:8.3f}  {printable(hit.path)}{moved}")
    typer.echo(" · ".join(f"{key} {value:.1f}" for key, value in hits.timings.items()))


@app.command("rerank")
def rerank_command(
    query: Annotated[str, typer.Argument(help="What you are looking for, in words.")],
    images: Annotated[list[Path], typer.Argument(help="Image files to score and order.")],
    reranker: RerankerOption = "fused",
    model: Annotated[str | None, typer.Option(
        help="twinrank model (name or folder) for the fused reranker.")] = None,
    pretrained: Annotated[str | None, typer.Option(help="open_clip tag, with --model.")] = None,
    store: Annotated[Path | None, typer.Option(
        "--store", "-s", help="Use the model this collection was built with.")] = None,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the order as JSON.")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Score IMAGE files against QUERY with a cross-encoder and print them best first."""
    from twinrank.search.files import RerankFilesRequest, rerank_files

    set_threads(threads)
    request = RerankFilesRequest(query, images, reranker, model, pretrained, store, device)
    with friendly_errors():
        hits = rerank_files(request)
    if as_json:
        typer.echo(json.dumps([{"rank": h.rerank_rank, "score": h.rerank_score, "path": h.path,
                                "given": h.bi_rank} for h in hits], indent=2))
        return
    for hit in hits:
        typer.echo(f"{hit.rerank_rank:>3}  {hit.rerank_score:8.3f}  {hit.path}  "
                   f"(given #{hit.bi_rank})")


models_app = typer.Typer(
    help="Model presets: what to pick for --model, and fetching their weights.",
    invoke_without_command=True, no_args_is_help=False)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_command(ctx: typer.Context) -> None:
    """List the presets: what each is, its bi-encoder and reranker, sizes, licence, and the
    published quality figure with its source."""
    from twinrank.models.presets import presets_table

    if ctx.invoked_subcommand is None:
        typer.echo(presets_table())


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="A preset (blip-base, clip-b32, ...) or "
                                             "blip:HF-ID.")],
) -> None:
    """Download what loading a preset reads into the Hugging Face cache (HF_HOME), with
    progress on stderr, whichever file holds its weights; then load it with the hub
    disabled to prove nothing is missing.

    Run it on a connected machine; copy the cache to an offline one.
    """
    from twinrank.models.presets import pull

    with friendly_errors():
        fetched = pull(name)
    for repo, files in fetched.items():
        typer.echo(f"In the cache: {repo} ({len(files)} files: {', '.join(files)}).")
    typer.echo(f"{name} loads with the hub disabled." if fetched
               else f"{name} needs no download.")


@app.command()
def ui(
    store: StoreOption = DEFAULT_HOME / "store",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
    threads: ThreadsOption = None,
) -> None:
    """Open the app: results before and after reranking, side by side."""
    from twinrank.ui.launch import UIStartError, is_loopback, run_ui

    if not is_loopback(host):
        typer.secho(f"Warning: listening on {host}; anyone who can reach it can search "
                    f"this collection.", fg=typer.colors.YELLOW, err=True)
    try:
        code = run_ui(store.expanduser(), host, port, announce=typer.echo, threads=threads)
    except UIStartError as error:
        typer.secho(f"Error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def upgrade(
    store: StoreOption = DEFAULT_HOME / "store",
    url: Annotated[str | None, typer.Option(
        help="Upgrade a collection on a Qdrant server instead of --store (API key from "
             "TWINRANK_QDRANT_API_KEY).", envvar="TWINRANK_QDRANT_URL")] = None,
    collection: Annotated[str | None, typer.Option(
        help="Collection name on the Qdrant server (with --url).")] = None,
    progress: Annotated[bool, typer.Option(help="Say when the index build starts.")] = True,
) -> None:
    """Bring a collection an older twinrank made up to date, for the fastest filters.

    Gives every image its folder-and-type pairs, so a search by --folder and --type is one
    match (2x faster at 1M images). Qdrant moves each rewritten image out of its search
    index, so a folder's index is then rebuilt, taking as long as its first build (about
    35 minutes at 1M images on 2 cores); a server rebuilds its own in the background.
    Searches stay correct meanwhile. Safe to interrupt: run it again. `twinrank ingest`
    upgrades collections under 20,000 images by itself.
    """
    from twinrank.ingest.runner import upgrade_collection
    from twinrank.store import open_store

    with friendly_errors(), open_store(store.expanduser(), url=url,
                                       collection=collection) as opened:
        typer.echo(upgrade_collection(opened, progress))


@app.command("check")
def check_command(
    store: Annotated[Path, typer.Argument(help="The collection folder to check.",
                                          envvar="TWINRANK_STORE")] = DEFAULT_HOME / "store",
    repair: Annotated[bool, typer.Option(
        help="Rebuild what is damaged: intact images are kept, damaged and lost ones "
             "re-embedded from their files (dropped when the files are gone), a damaged "
             "twinrank.json restored from its backup.")] = False,
    device: DeviceOption = None,
) -> None:
    """Verify a collection against what twinrank recorded (like git fsck): its point count,
    every image's vector, cached tokens and payload against their checksums, and its
    twinrank.json. One line says what is wrong, in which file, and how to repair it; the
    exit code is 1 while it is damaged.
    """
    with friendly_errors():
        if repair:
            from twinrank.ingest.repair import RepairJob, repair_store

            lines, intact = repair_store(RepairJob(store.expanduser(), device))
        else:
            from twinrank.store.check import check_store

            found = check_store(store.expanduser())
            lines, intact = [found.line()], found.ok
    typer.echo("\n".join(lines))
    raise typer.Exit(0 if intact else 1)


@app.command("make-scenes")
def make_scenes_command(
    out: Annotated[Path, typer.Argument(help="Folder to write images and captions to.")],
    n_train: Annotated[int, typer.Option(min=0)] = 2000,
    n_test: Annotated[int, typer.Option(min=0)] = 500,
    image_size: Annotated[int, typer.Option(min=16)] = 64,
    seed: Annotated[int, typer.Option()] = 0,
    extra_objects: Annotated[int, typer.Option(
        min=0, max=2, help="Unnamed shapes per scene besides the two its captions name "
                           "(0-2). Harder for a bi-encoder, which must encode them all "
                           "without knowing which ones the query asks about.")] = 0,
    train_views: Annotated[int, typer.Option(
        min=1, help="Pictures of each training scene, each with its own unnamed extras, "
                    "places, tints and noise: more training images without new captions "
                    "(the scenes' captions run out near 4,000 training scenes).")] = 1,
) -> None:
    """Generate synthetic compositional scenes (shapes, colours, relations) with captions."""
    from twinrank.captions.scenes import ScenesConfig, make_scenes

    config = ScenesConfig(n_train=n_train, n_test=n_test, image_size=image_size, seed=seed,
                          extra_objects=extra_objects, train_views=train_views)
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
    rank_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the cross-encoder's listwise rank loss: each caption "
                      "against its image and --rank-negatives mined look-alikes (and each "
                      "image against look-alike captions). 0: off.")] = 0.0,
    rank_negatives: Annotated[int, typer.Option(
        min=1, help="Look-alikes per caption and per image in the rank loss.")] = 7,
    freeze_layers: Annotated[int, typer.Option(min=0, help="Freeze embeddings + first N "
                                                          "blocks of both towers.")] = 0,
    image_size: Annotated[int, typer.Option(
        min=0, help="Train at this picture size in pixels, a multiple of the patch size "
                    "(e.g. 64 for a 48 px model): the image tower's position embeddings "
                    "are interpolated to the new patch grid. 0: the model's own.")] = 0,
    fusion_layers: Annotated[int, typer.Option(
        min=0, help="Grow the fusion head (the cross-encoder) to this many layers: the new "
                    "ones start as identities, so the start model's scores are kept. "
                    "0: keep its depth.")] = 0,
    group_lookalikes: Annotated[bool, typer.Option(help="Batch look-alike scenes "
                                                        "together.")] = True,
    also_true: Annotated[bool, typer.Option(
        help="Never take an image a caption is also true of (the data's also_true lists) "
             "as that caption's negative.")] = True,
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
    validation_fraction: Annotated[float, typer.Option(
        min=0.0, max=0.9, help="Training pictures held out (by group: look-alikes stay "
                               "together) to measure bi-encoder and COOP recall on; 0: "
                               "none, and search will not trust the reranker.")] = 0.1,
    validation_data: Annotated[list[str] | None, typer.Option(
        help="A validation split instead of holding out (dataset spec; repeatable).")] = None,
    validate_every: Annotated[int | None, typer.Option(
        min=1, help="Steps between validations (default: at each checkpoint and the "
                    "end).")] = None,
    validation_k: Annotated[list[int] | None, typer.Option(
        help="COOP@k measured on validation (repeatable; default 5 and 20).")] = None,
    keep_best: Annotated[bool, typer.Option(
        help="End on the validated weights that did best, not the last.")] = True,
) -> None:
    """Fine-tune a model as bi-encoder and cross-encoder (JOINT), or SEP / one of them.

    A validation split is held out and measured during and after training; the model
    folder records the figures (validation.json), and search reranks by default only
    when they show the reranker beating the bi-encoder.
    """
    import sys

    from twinrank.train.trainer import TrainConfig, train

    with friendly_errors():
        config = TrainConfig(
            data=tuple(data), out=out.expanduser(), model=model, pretrained=pretrained,
            mode=mode, epochs=epochs, steps=steps, batch_size=batch_size,
            accum_steps=accum_steps, lr=lr, weight_decay=weight_decay,
            warmup_steps=warmup_steps, contrastive_weight=contrastive_weight,
            match_weight=match_weight, easy_negatives=easy_negatives, rank_weight=rank_weight,
            rank_negatives=rank_negatives, freeze_layers=freeze_layers, image_size=image_size,
            fusion_layers=fusion_layers,
            group_lookalikes=group_lookalikes, also_true=also_true, seed=seed, device=device,
            threads=threads,
            checkpoint_every=checkpoint_every, resume=resume, log_every=log_every,
            save_dtype=save_dtype, command=" ".join(["twinrank", *sys.argv[1:]]),
            validation_fraction=validation_fraction,
            validation_data=tuple(validation_data or ()), validate_every=validate_every,
            validation_ks=tuple(validation_k or (5, 20)), keep_best=keep_best)
        result = train(config)
    typer.echo(f"trained {result.steps} steps in {result.seconds:.0f} s; model folder: "
               f"{result.model_dir}")


@app.command("make-openclipart")
def make_openclipart(
    out: Annotated[Path, typer.Argument(help="Folder for the captioned set (JSONL + "
                                             "thumbnails).")],
    root: Annotated[Path | None, typer.Option(
        help="Where Debian's openclipart-svg and openclipart-png are installed (default: "
             "/usr/share/openclipart).")] = None,
    validation_fraction: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.1,
    test_fraction: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.1,
    max_per_group: Annotated[int, typer.Option(
        min=0, help="Most pictures kept of one look-alike group (0: all).")] = 20,
    thumbnail_size: Annotated[int, typer.Option(
        min=0, help="Square thumbnails' side; 0 points at the package's PNGs.")] = 256,
) -> None:
    """Build a real captioned image set from Debian's Open Clip Art packages (public
    domain drawings with titles, descriptions and keywords), split train / validation /
    test by look-alike groups (docs/data.md). apt-get install openclipart-svg openclipart-png
    first."""
    from twinrank.captions.openclipart import (
        DEFAULT_ROOT,
        OpenClipartConfig,
        build_openclipart,
    )

    with friendly_errors():
        report = build_openclipart(OpenClipartConfig(
            out.expanduser(), root or DEFAULT_ROOT, validation_fraction, test_fraction,
            max_per_group, thumbnail_size))
    typer.echo(report.summary())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Benchmark to run; omit to list them. "
                                                    "Extra options go to the benchmark.")] = None,
) -> None:
    """Run a benchmark from bench/ (results land in bench/results/NAME.json)."""
    try:  # bench/ belongs to the source checkout, not to the installed package
        from bench import BENCHMARKS, run_benchmark
    except ModuleNotFoundError as error:
        if error.name != "bench":
            raise
        typer.secho("Error: the benchmarks live in the source repository's bench/ folder; "
                    "run `twinrank bench` from a checkout of twinrank.", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(1) from None

    if name is None:
        for key, text in BENCHMARKS.items():
            typer.echo(f"{key:<18} {text}")
        return
    with friendly_errors():
        code = run_benchmark(name, list(ctx.args))
    raise typer.Exit(code)


@app.command()
def demo(
    home: Annotated[Path, typer.Option(help="Where the demo's images and store go.")] =
        DEFAULT_HOME / "demo",
    port: Annotated[int, typer.Option(help="Port for the app.")] = 8501,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Build the demo, don't start "
                                                        "the app.")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Offline demo: busy scenes, the shipped model, example queries it fixes, the app."""
    from twinrank.captions.data import load_dataset
    from twinrank.captions.scenes import ScenesConfig, make_scenes
    from twinrank.ingest.job import IngestJob, ingest_folder
    from twinrank.ingest.runner import IngestConfig
    from twinrank.models import DEMO_MODEL
    from twinrank.search import SearchClient
    from twinrank.ui.examples import Tally, choose_examples, read_examples, write_examples

    home = home.expanduser()
    set_threads(threads)
    scenes = home / "scenes-busy"  # two named shapes and two unnamed ones per picture
    store = home / "store-busy"
    with friendly_errors():
        if not (scenes / "scenes.json").exists():
            make_scenes(scenes, ScenesConfig(n_train=0, n_val=0, n_test=DEMO_IMAGES,
                                             n_zeroshot=0, image_size=128, extra_objects=2))
        job = IngestJob(IngestConfig(scenes / "images"), store, DEMO_MODEL)
        typer.echo(ingest_folder(job).summary())
        examples = read_examples(store)
        if not examples:
            typer.echo("Measuring which captions the reranker fixes…")
            pairs = [(min(record.captions, key=len), str(record.image_path.resolve()))
                     for record in load_dataset(f"scenes:{scenes}:test:en")
                     if not record.also_true]
            tally = Tally()
            with SearchClient(store) as client:
                examples = choose_examples(client, pairs, tally=tally)
            write_examples(store, examples)
            typer.echo(tally.summary())
    typer.echo("Try these (bi-encoder rank → reranked rank of the image the query describes):")
    for example in examples:
        typer.echo(f"  {example.label()}")
    if not no_ui:
        ui(store=store, host="127.0.0.1", port=port, threads=threads)


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="Model: a twinrank model folder, an open_clip "
                                            "name (with --pretrained) or twinrank-tiny.")],
    data: Annotated[list[str], typer.Option(
        help="Test split, repeatable: PATH.jsonl, scenes:DIR:SPLIT[:LANG], "
             "karpathy:JSON:IMAGE_ROOT:SPLIT, multi30k:LIST:CAPTIONS:IMAGE_ROOT:LANG; "
             "prefix LABEL= to name it.")],
    pretrained: Annotated[str | None, typer.Option(
        help="open_clip pretrained tag or local checkpoint, with an architecture name.")] = None,
    modes: Annotated[str, typer.Option(help="Comma list of bi, cross-all, coop.")] =
        "bi,cross-all,coop",
    k_sweep: Annotated[str, typer.Option(help="COOP candidate counts, comma list.")] =
        "5,10,20,50,100",
    bi_weight: BiWeightOption = None,
    record: Annotated[bool, typer.Option(
        help="Also measure whether the model folder's reranker beats its bi-encoder on the "
             "first --data (held-out captions, never its training data) and write it into "
             "the folder (validation.json): search reranks by default only where it "
             "helps.")] = False,
    split_protocol: Annotated[str, typer.Option(
        help="full, coco5k, coco1k (mean of 5 folds), f30k or multi30k.")] = "full",
    positives: Annotated[str, typer.Option(
        help="own: a caption's right answer is its own image (the literature's protocol); "
             "all-true: also the images its data lists under also_true.")] = "own",
    allow_ce_all: Annotated[bool, typer.Option(
        help="Run the cross-encoder over all pairs even above --ce-all-limit.")] = False,
    ce_all_limit: Annotated[int, typer.Option(min=0, help="Most pairs cross-all may score "
                                                          "without --allow-ce-all.")] = 2_000_000,
    query_sample: Annotated[int | None, typer.Option(
        min=1, help="Evaluate every mode on a random sample of this many queries per "
                    "direction; the corpus stays whole.")] = None,
    ce_queries: Annotated[int | None, typer.Option(
        min=1, help="Run cross-all on a random sample of this many caption queries (all "
                    "pairs each); every mode is also reported on that sample.")] = None,
    ce_image_queries: Annotated[int | None, typer.Option(
        min=1, help="Image queries for cross-all (default: --ce-queries).")] = None,
    latency_queries: Annotated[int, typer.Option(min=0, help="Queries timed per stage "
                                                             "(0: no latency).")] = 30,
    search_backend: Annotated[str, typer.Option(
        help="First stage for latency: numpy (exact) or qdrant-edge.")] = "numpy",
    reranker: Annotated[str, typer.Option(
        help="The cross-encoder of cross-all and COOP: any registered reranker, as search "
             "uses it: fused (the model's own, over cached tokens) or "
             "blip-itm[:HF-ID-OR-FOLDER].")] = "fused",
    out: Annotated[Path | None, typer.Option(help="Folder for evaluation.json and "
                                                  "the sweep plots.")] = None,
    device: DeviceOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per fusion-head "
                                                        "forward.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed for query samples.")] = 0,
    threads: ThreadsOption = None,
) -> None:
    """Recall@K (both directions) and cost per query: bi-encoder, cross-encoder, COOP@k."""
    from twinrank.evaluation.harness import HarnessConfig
    from twinrank.evaluation.run import EvaluateJob, run_evaluation

    set_threads(threads)
    with friendly_errors():
        harness = HarnessConfig(
            modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
            ks=_int_list(k_sweep, "--k-sweep"), bi_weight=bi_weight,
            ce_all_limit=ce_all_limit, allow_ce_all=allow_ce_all, query_sample=query_sample,
            ce_queries=ce_queries, ce_image_queries=ce_image_queries,
            batch_size=batch_size, latency_queries=latency_queries,
            search_backend=search_backend, seed=seed, positives=positives, reranker=reranker)
        job = EvaluateJob(model=model, datasets=tuple(data), harness=harness,
                          protocol=split_protocol, pretrained=pretrained, device=device,
                          out_dir=out.expanduser() if out else None)
        text, _ = run_evaluation(job)
        if record:
            from twinrank.evaluation.run import record_job_evidence

            text += "\n" + record_job_evidence(job)
    typer.echo(text)


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{option} takes whole numbers separated by commas, "
                         f"got {text!r}") from None


def main() -> None:
    """The ``twinrank`` command: runs ``app``, then ends the process at once.

    Python's own shutdown after torch was imported takes ~0.7 s on 2 cores (tearing down
    thousands of modules that will never run again): a third of ``twinrank ingest``'s
    start-up when it adds one photo. So once a command has finished, the exit handlers
    run (``atexit``: scratch folders, logging, Ray), the output is flushed, and the process
    exits without the teardown. Every store is closed by then; a command that fails with
    a traceback, or leaves a thread that Python's exit would wait for, exits the usual way.
    """
    try:
        app()
    except SystemExit as done:
        import threading

        working = [t for t in threading.enumerate()
                   if t is not threading.main_thread() and not t.daemon and t.is_alive()]
        if "torch" not in sys.modules or working:  # Python's exit waits for such threads
            raise
        code = done.code
        if isinstance(code, str):  # sys.exit("message"): shown, as Python would
            print(code, file=sys.stderr)
        import atexit

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`)
                stream.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))


if __name__ == "__main__":
    main()
