"""Command line: ``python -m vos {run, eval, bench, weights, methods, present}``.

Each subcommand's work lives in the module that owns it (``runner``, ``metrics``, ``bench``, ``weights``,
``present``); this file only parses arguments. Errors meant for the user (``VosError``) are printed as one line
and exit with code 2 (a full disk, which stops a run that had started: 1). SIGTERM is handled as a second Ctrl+C
(a run removes its unfinished files) and exits with 143; a run's first Ctrl+C stops it after the current frame and
keeps its bundle (vos.runner).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from vos.errors import VosError

log = logging.getLogger("vos")


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number above zero (0 frames or a 0-pixel side is never what someone meant)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


class _Once(argparse.Action):
    """Store an option that makes sense once: a repeat is an error instead of silently replacing the first."""

    def __call__(self, parser, namespace, values, option_string=None):
        marker = f"_{self.dest}_given"
        if getattr(namespace, marker, False):
            parser.error(f"{option_string} may be given once")
        setattr(namespace, marker, True)
        setattr(namespace, self.dest, values)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run methods on a clip and write a run bundle",
        description="Run several methods on one clip, one after another, and write a run bundle: RUN_DIR/run.json, "
        "RUN_DIR/frames/<frame>.jpg (the input at the working size), RUN_DIR/masks/<method>/<frame>.png (palette "
        "PNGs) and RUN_DIR/side_by_side.mp4; `python -m vos present` plays it back anywhere. With --from, the flags "
        "given override what the run.json records.",
    )
    p.add_argument("clip", nargs="?", help="video file (mp4, webm, avi, mov, mkv) or a folder / zip of frames")
    p.add_argument("--prompt", help="first-frame mask: a DAVIS palette PNG (index = object id)")
    p.add_argument("--methods", default=None, help="'all' (default) or a comma-separated list of method keys")
    p.add_argument(
        "--variant", action="append", default=[], metavar="KEY=VARIANT", help="choose a variant, e.g. tvos=davis_train"
    )
    # None, not "auto", so that --from can tell a device given here from the one the run.json records.
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="compute precision (default fp32)")
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="[KEY=]SPEC",
        help="hub (default), random, a safetensors or official checkpoint file, a folder of them, or "
        "hf://OWNER/REPO[/FILE]; KEY=SPEC for one method (repeatable, e.g. --weights tvos=a.pth --weights "
        "mixture=b.pth)",
    )
    p.add_argument(
        "--opt", action="append", default=[], metavar="KEY.NAME=VALUE", help="a method option, e.g. tvos.temperature=1"
    )
    p.add_argument(
        "--max-side",
        type=_positive(int),
        default=None,
        help="run the methods at most this many pixels on the long side",
    )
    p.add_argument("--max-frames", type=_positive(int), default=None, help="use at most this many frames")
    p.add_argument("--max-seconds", type=_positive(float), default=None, help="use at most this many seconds of video")
    p.add_argument("--fps", type=_positive(float), default=None, help="frame rate of a frame folder / zip (default 24)")
    p.add_argument("--gt", default=None, help="ground-truth masks (folder or zip of palette PNGs) to score J&F")
    p.add_argument("--no-video", action="store_true", help="skip the side-by-side MP4")
    p.add_argument(
        "--zip", action="store_true", help="also write the bundle as one file, OUT.zip, for `python -m vos present`"
    )
    p.add_argument(
        "--from", dest="from_run", default=None, metavar="RUN_JSON", help="repeat the run a run.json records"
    )
    p.add_argument("--out", default=None, help="the run bundle's folder (created; must be empty if it exists)")
    p.set_defaults(module="vos.runner", function="command_run")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score predicted masks against ground truth (DAVIS-2017 J&F)",
        description="DIR is one sequence (palette PNGs, matched by file name) or a DAVIS-style results root with one "
        "folder per sequence.",
    )
    p.add_argument("--pred", required=True, help="predicted masks")
    p.add_argument("--gt", required=True, help="ground-truth masks")
    p.add_argument("--task", default="semi", choices=["semi", "unsup"], help="evaluation protocol")
    p.add_argument("--json", default=None, help="also write the results as JSON (DAVIS column names)")
    p.set_defaults(module="vos.metrics", function="command_eval")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure peak memory and speed versus resolution")
    p.add_argument("--methods", default="all", help="'all' or KEY[:VARIANT],... (a method may come twice)")
    p.add_argument("--resolutions", default="240,360,480,720,1080", help="short sides in pixels, comma-separated")
    p.add_argument("--frames", type=_positive(int), default=8, help="clip length")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--dtype",
        default="fp32",
        help="precision, or several comma-separated (fp32,bf16: each point in each, as separate lines on the charts)",
    )
    # One spec for every point: a sweep has no per-method weights, so a second --weights is refused, not dropped.
    p.add_argument("--weights", action=_Once, default="random", help="random (default), hub, a file or a folder")
    p.add_argument("--repeats", type=_positive(int), default=1)
    p.add_argument("--timeout", type=_positive(float), default=600.0, help="seconds allowed per point")
    p.add_argument("--opt", action="append", default=[], metavar="KEY.NAME=VALUE")
    p.add_argument(
        "--memory-cap",
        type=_positive(float),
        default=None,
        metavar="MIB",
        help="stop a point whose memory passes this many MiB (default: 85%% of the RAM free at the start)",
    )
    p.add_argument("--out", required=False, default=None, help="results JSON file")
    p.add_argument("--from", dest="from_file", default=None, metavar="FILE", help="chart a results file, no measuring")
    p.add_argument("--charts", default=None, metavar="DIR", help="also write the charts (PNG and HTML) into DIR")
    p.add_argument("--no-png", action="store_true", help="with --charts: HTML only (PNG needs kaleido and Chrome)")
    p.add_argument(
        "--no-flops",
        action="store_true",
        help="skip the machine's GEMM rate and each point's FLOP count (one more pass of the clip per point): the "
        "speed chart then has no compute-limit lines",
    )
    p.set_defaults(module="vos.bench", function="command_bench")
    actions = p.add_subparsers(dest="action", required=False, metavar="{agreement,profile}")
    agree = actions.add_parser(
        "agreement",
        help="masks in a reduced precision (or with other options) against the fp32 defaults on real footage: mean "
        "IoU, time and speed-up per method",
        description="Run each method twice on real camera footage (Carphone, with a hand-traced first-frame mask): "
        "the reference in fp32, then the candidate in a reduced precision and/or with --candidate options, and "
        "print, per method, the mean IoU of the candidate's masks against the reference's over all frames and "
        "objects, each run's time and the speed-up. Methods without installed checkpoints run with random weights, "
        "and the output says so.",
    )
    agree.add_argument("--methods", default="all", help="'all' or KEY[:VARIANT],...")
    agree.add_argument(
        "--dtype",
        default=None,
        help="the candidate's precision (default: bf16 on a CPU, fp16 on CUDA; fp32 when --candidate is given)",
    )
    agree.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="KEY.NAME=VALUE",
        help="an option of the candidate run only, e.g. mixture.fast_em=true (the reference keeps the default)",
    )
    agree.add_argument("--frames", type=_positive(int), default=10, help="frames of the footage (at most 120)")
    agree.add_argument("--size", type=_positive(int), default=144, help="the frames' height (the footage's is 144)")
    agree.add_argument("--device", default="auto")
    agree.add_argument("--weights", action=_Once, default="hub", help="hub (default; random where missing) or random")
    agree.add_argument("--opt", action="append", default=[], metavar="KEY.NAME=VALUE")
    agree.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    agree.set_defaults(module="vos.bench.agreement", function="command_agreement")
    prof = actions.add_parser(
        "profile",
        help="where one method's time goes: named regions' time and FLOPs against the machine's GEMM rate",
        description="Run one method on real footage (Carphone resized to --size rows, 16:9) once timed and once "
        "under torch's FlopCounterMode, and print per region (backbone, affinity, EM, CRF training...) its time, "
        "share, counted GFLOP and compute limit (FLOPs / the machine's fp32 GEMM rate), for frame 0 and per later "
        "frame.",
    )
    prof.add_argument("method", help="KEY or KEY:VARIANT (regions are declared for tvos and mixture)")
    prof.add_argument("--frames", type=_positive(int), default=6, help="frames of the footage")
    prof.add_argument("--size", type=_positive(int), default=480, help="the frames' height (width: 16:9)")
    prof.add_argument("--device", default="cpu")
    prof.add_argument("--opt", action="append", default=[], metavar="KEY.NAME=VALUE")
    prof.set_defaults(module="vos.bench.profile", function="command_profile")


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list, fetch, convert and publish checkpoints")
    actions = p.add_subparsers(dest="action", required=True, metavar="{list,fetch,convert,push}")
    actions.add_parser("list", help="every checkpoint, where it would come from, whether it is cached")
    fetch = actions.add_parser("fetch", help="download (and convert) checkpoints into the cache")
    fetch.add_argument("what", nargs="*", default=["all"], help="METHOD[:VARIANT], a file id, or all")
    convert = actions.add_parser("convert", help="convert an official release file to safetensors")
    convert.add_argument("what", help="METHOD[:VARIANT] or a file id from the manifest")
    convert.add_argument("file", help="the official file as the authors publish it")
    convert.add_argument("--out", default=None, help="where to write the safetensors (default: the cache)")
    push = actions.add_parser("push", help="upload converted files to a Hugging Face Hub repo with a model card")
    push.add_argument("--repo", required=True, help="OWNER/NAME")
    push.add_argument("--private", action="store_true")
    push.add_argument("what", nargs="*", default=["all"])
    p.set_defaults(module="vos.catalog", function="command_weights")


def _add_methods(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list every method with its variants and options")
    p.add_argument("key", nargs="?", help="show one method in full")
    p.set_defaults(module="vos.methods.listing", function="command_methods")


def _add_present(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "present",
        help="play saved run bundles back in a Streamlit presenter (no GPU, weights or network needed)",
        description="Start the talk-mode page on run bundles, or with --png / --mp4 export the synchronized grid for "
        "slides instead (method names and frame number burnt in).",
    )
    p.add_argument(
        "run_dir",
        metavar="PATH",
        help="a run bundle (its folder or its .zip, from `python -m vos run --zip` or the app), or a folder of them",
    )
    p.add_argument("--port", type=_positive(int), default=8501)
    p.add_argument("--theme", choices=["dark", "light"], default="dark", help="page colours (default dark)")
    p.add_argument(
        "--bench", action="append", default=[], metavar="FILE", help="also chart a `python -m vos bench` results file"
    )
    p.add_argument("--png", default=None, metavar="FILE", help="export one frame of the grid as PNG, then exit")
    p.add_argument("--frame", type=_positive(int), default=None, help="with --png: the frame, 1..N (default 1)")
    p.add_argument("--mp4", default=None, metavar="FILE", help="export the whole grid as an H.264 MP4, then exit")
    p.add_argument("--style", choices=["overlay", "mask only", "contour only"], default="overlay")
    p.add_argument("--methods", default=None, help="with --png / --mp4: a comma-separated list (default: all)")
    p.set_defaults(module="vos.present", function="command_present")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vos", description="Run, compare, score and benchmark video object segmentation methods."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,eval,bench,weights,methods,present}")
    for add in (_add_run, _add_eval, _add_bench, _add_weights, _add_methods, _add_present):
        add(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service stopping, `kill`, a CI timeout), handled as an interrupt: the run removes its unfinished
    files (only a run's first Ctrl+C stops gently and keeps them)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():  # signal handlers can only be set there
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        command = getattr(importlib.import_module(args.module), args.function)
        return int(command(args) or 0)
    except VosError as err:
        print(f"error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
