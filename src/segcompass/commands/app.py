"""``segcompass app``: serve the browser app (:mod:`segcompass.app`) until interrupted.

Loopback only by default (``--host 127.0.0.1``), no public share link unless ``--share``, gradio analytics off.
Without ``--model`` the embedded default checkpoint is used. Needs ``pip install "segcompass[app]"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._args import CommandError, command, resolve_model

__all__ = ["AppArguments", "app_command"]


@dataclass
class AppArguments:
    """Options of ``segcompass app``."""

    model: str | None = field(default=None, metadata={"help": "Checkpoint directory (default: the embedded model)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0 exposes it to the "
                                                             "network)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    share: bool = field(default=False, metadata={"help": "Also ask gradio for a public share link (needs the "
                                                         "internet)."})
    threshold: float | None = field(default=None, metadata={"help": "Start value of the confidence threshold."})


@command("app", (AppArguments,), description="Serve the browser app: reasoning, overlay, heatmaps and concepts.")
def app_command(args: AppArguments) -> int:
    if not 0 < args.port < 65536:
        raise CommandError(f"--port {args.port} is not a TCP port; pass a number from 1 to 65535, e.g. 7860.")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CommandError(f"--threshold {args.threshold} is not a confidence; pass a value in [0, 1].")
    try:
        from ..app import build_app, launch_app

        demo = build_app(resolve_model(args.model), threshold=args.threshold)
    except ImportError as err:
        raise CommandError(str(err)) from None
    print(f"serving the SegCompass app on http://{args.host}:{args.port} (Ctrl+C stops it)")
    launch_app(demo, host=args.host, port=args.port, share=args.share, quiet=True)
    return 0
