"""``python -m vos methods [KEY]``: every registered method with its variants and options, as text."""

from __future__ import annotations

from vos.methods import base as mbase


def describe_method(info: mbase.MethodInfo, *, full: bool = False) -> str:
    task = "unsupervised" if info.task == mbase.UNSUP else "semi-supervised"
    variants = ", ".join(v + (" (default)" if v == info.default_variant else "") for v in info.variants)
    lines = [f"{info.key:8s} {info.title} — {task}", f"         variants: {variants}"]
    if full:
        lines += [
            f"         {info.summary}",
            f"         paper: {info.paper.title} ({info.paper.venue} {info.paper.year})",
        ]
        lines += [f"         code: {info.repo}   licence: {info.licence}"]
        for rep in info.reported:
            figures = ", ".join(f"{k} {v}" for k, v in rep.metrics.items())
            speed = f"; {rep.fps} fps on {rep.hardware}" if rep.fps else ""
            lines.append(
                f"         reported ({rep.dataset}{', ' + rep.variant if rep.variant else ''}): {figures}{speed}"
            )
    for opt in info.options:
        paper = f" [paper: {opt.format(opt.paper)}]" if opt.paper is not None else ""
        lines.append(
            f"         --opt {info.key}.{opt.name}={opt.format(opt.default)} ({opt.describe()}){paper}  {opt.help}"
        )
    return "\n".join(lines)


def command_methods(args) -> int:
    infos = [mbase.get_info(args.key)] if args.key else mbase.available()
    if not infos:
        print("No methods are registered.")
    print("\n\n".join(describe_method(info, full=bool(args.key)) for info in infos))
    return 0
