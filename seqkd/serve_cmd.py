"""`seqkd serve BUNDLE`: the teacher over HTTP with Ray Serve, until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from seqkd.transcribe_cmd import add_whisper_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="model bundle directory (or a run directory holding bundle/, an "
                                  "exported directory, or a Whisper CTranslate2 directory)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=16, help="requests per batched beam search")
    p.add_argument("--batch-wait-ms", type=float, default=20.0,
                   help="how long a batch waits for more requests")
    p.add_argument("--max-queued-requests", type=int, default=48, metavar="N",
                   help="transcriptions a replica lets wait beside the batch it decodes; the next "
                        "client gets 503 with Retry-After at once instead of a wait")
    p.add_argument("--retry-after-s", type=float, default=1.0,
                   help="the Retry-After of a refusal (seconds)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    p.add_argument("--token", help="require `Authorization: Bearer TOKEN` (default: $SEQKD_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.add_argument("--max-duration-s", type=float, default=60.0)
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    add_whisper_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from common.bundle import BundleError, find_bundle
    from common.teachers import check_teacher
    from seqkd.ray_connect import connect
    from services.teacher import TOKEN_ENV, Teacher, deployment_options

    bundle = find_bundle(args.bundle)
    try:
        check_teacher(bundle)   # fail here, in one line, rather than in a replica's log
    except BundleError as exc:
        print(f"seqkd serve: {exc}", file=sys.stderr)
        return 2
    if args.replicas < 1:
        print("seqkd serve: --replicas must be >= 1", file=sys.stderr)
        return 2
    try:
        options = deployment_options(args.max_batch_size, args.max_queued_requests, args.retry_after_s)
    except ValueError as exc:
        print(f"seqkd serve: {exc}", file=sys.stderr)
        return 2
    connect(args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = Teacher.options(
        num_replicas=args.replicas, **options,
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
    ).bind(bundle=str(bundle.resolve()), token=args.token or os.environ.get(TOKEN_ENV),
           max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
           max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_duration_s=args.max_duration_s,
           max_queued_requests=args.max_queued_requests, retry_after_s=args.retry_after_s,
           compute_type=args.compute_type, language=args.language)
    try:
        serve.run(app, name="teacher", route_prefix="/")
        print(f"seqkd serve: {bundle} at http://{args.host}:{args.port}/v1/transcribe "
              f"(docs: /docs, {args.replicas} replica(s), batches of <= {args.max_batch_size}, "
              f"{args.max_queued_requests} more queued per replica, then 503); Ctrl-C stops", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    except KeyboardInterrupt:   # Ctrl-C while the app was still starting
        pass
    finally:
        print("seqkd serve: shutting down", flush=True)
        serve.shutdown()
        ray.shutdown()
    return 0
