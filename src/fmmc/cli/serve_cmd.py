"""``fmmc serve MODEL [--host 127.0.0.1 --port 8000 ...]``: the HTTP API and web page.

    $ fmmc serve runs/demo/model                       # http://127.0.0.1:8000/ (page), /docs (API)
    $ export FMMC_SERVE_TOKEN=$(openssl rand -hex 16)  # the token from the environment, not argv
    $ fmmc serve runs/demo/model --host 0.0.0.0 --max-concurrency 2

Prefer ``$FMMC_SERVE_TOKEN`` to ``--token``: a command line is visible to every user of the machine
(``ps``, ``/proc/<pid>/cmdline``). Needs ``pip install 'fmmc[serve]'``. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (JSON API + web page)")
    p.add_argument("model", help="model directory (from `fmmc train`) or hub id")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=os.environ.get("FMMC_SERVE_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' on /v1/* (default $FMMC_SERVE_TOKEN, which is better: "
                        "a command line is visible to other users; none = open)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (413 above)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height (413 above)")
    p.add_argument("--max-pixels-in-flight", type=int, default=None,
                   help="decoded pixels of all requests at once (default 2 x --max-pixels); more wait in line")
    p.add_argument("--queue-timeout", type=float, default=10.0,
                   help="seconds a request may wait for that pixel budget (503 'busy' after)")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds to send the request headers, and the longest pause in a body (408 after)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (504 after)")
    p.add_argument("--max-concurrency", type=int, default=4, help="requests worked on at once")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting beyond those (503 'busy' above)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="micro-batching window for /v1/classify")
    p.add_argument("--max-batch", type=int, default=8, help="largest micro-batch (1 = no batching)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow this browser origin (repeatable); CORS is off by default")
    p.add_argument("--segment-mode", choices=["sam", "grid"], default="sam", help="default /v1/segment mode")
    p.add_argument("--points-per-side", type=int, default=16, help="SAM automatic-mask point grid")
    p.add_argument("--segmenter", help="segmenter spec (default: the model's, else hf:facebook/sam-vit-base)")
    p.add_argument("--grounder", help="grounder spec (default: the model's, else hf:IDEA-Research/grounding-dino-base)")
    p.add_argument("--describer", help="describer spec for two-stream models (e.g. openai:gpt-4o-mini, "
                                       "hf:<local VLM>, none)")
    p.add_argument("--description", help="language-stream text for requests that send no 'description' field")
    p.add_argument("--preload", action="store_true", help="load the segmenter and grounder at start-up")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N, mps, or auto (cuda, else mps, else cpu)")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> object:
    from fmmc.serve.settings import ServeSettings

    overrides = {k: getattr(args, k) for k in ("segmenter", "grounder", "describer") if getattr(args, k)}
    if args.device:  # from_pretrained(device=...): resolved (and refused in one line) there
        overrides["device"] = args.device
    return ServeSettings(host=args.host, port=args.port, token=args.token or None, max_upload_mb=args.max_upload_mb,
                         max_pixels=args.max_pixels, max_pixels_in_flight=args.max_pixels_in_flight,
                         queue_timeout=args.queue_timeout, read_timeout=args.read_timeout, timeout=args.timeout, max_concurrency=args.max_concurrency,
                         max_queue=args.max_queue, batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
                         cors_origins=tuple(args.cors_origin), segment_mode=args.segment_mode,
                         points_per_side=args.points_per_side, preload=args.preload, model_overrides=overrides,
                         description=getattr(args, "description", None))


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError("fmmc serve needs the serve extra: pip install 'fmmc[serve]'") from e
    from fmmc.serve import create_app
    from fmmc.serve.protocol import protocol_class

    settings = settings_from_args(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        log.warning("listening on %s without --token: anyone who can reach this port can use the model", args.host)
    app = create_app(args.model, settings)  # type: ignore[arg-type]
    if app.state.runtime.model.config.needs_description and settings.description is None:  # type: ignore[attr-defined]
        log.warning("%s: every request must send a 'description' field (or restart with --description TEXT, or "
                    "--describer openai:gpt-4o-mini / hf:<local VLM> / none): its describer 'metadata' reads "
                    "dataset descriptions, which a new photo lacks", args.model)
    _warm_up(app.state.runtime, args.model)
    print(f"fmmc serving {args.model} on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, http=protocol_class(settings),  # type: ignore[arg-type]
                log_level="info" if args.verbose else "warning")
    return 0


def _warm_up(runtime: object, model: str) -> None:
    """Build the model (and the ``--preload`` components) before anything says it is serving: a component that
    cannot load ends the command with one line instead of a traceback from inside the server."""
    from fmmc.cli.main import CLIError
    from fmmc.core.errors import is_io_fault
    from fmmc.serve.errors import os_error_line

    try:
        runtime.warm_up()  # type: ignore[attr-defined]
    except (RuntimeError, ValueError, ImportError, OSError) as e:
        text = os_error_line(e) if is_io_fault(e) else str(e)  # type: ignore[arg-type]
        raise CLIError(f"not serving {model}: {' '.join(text.split())}") from e
