"""Methods page: one card per registered method, drawn from its MethodInfo (a new method appears by itself).

Each card says what the method does, its task, paper and official repository, licence, the figures its paper
reports, its variants with whether their weights are on this machine (and the command that fetches them), and
its options.
"""

from __future__ import annotations

import html

import gradio as gr

from pages import weights_state
from vos.methods import UNSUP, MethodInfo, available


def _e(text: object) -> str:
    return html.escape(str(text))


def _link(url: str, text: str) -> str:
    return f'<a href="{_e(url)}" target="_blank" rel="noopener">{_e(text)}</a>'


def _scroll(table: str) -> str:
    """A table that scrolls sideways on a phone instead of breaking its words letter by letter."""
    return f'<div class="vos-scroll">{table}</div>'


def _variants_html(info: MethodInfo) -> str:
    rows = []
    for variant in info.variants:
        state = weights_state(info, variant)
        default = " <small>(default)</small>" if variant == info.default_variant else ""
        if not state.needed:
            status = '<span class="vos-badge vos-good">no weights needed</span>'
        elif state.available is None:
            status = f'<span class="vos-badge">unknown</span> <code>{_e(state.command)}</code>'
        elif state.available:
            status = '<span class="vos-badge vos-good">weights here</span>'
        else:
            status = (
                '<span class="vos-badge vos-bad">weights missing</span> '
                f'<span class="vos-fetch">fetch: <code>{_e(state.command)}</code></span>'
            )
        rows.append(f'<tr><td class="vos-nowrap"><code>{_e(variant)}</code>{default}</td><td>{status}</td></tr>')
    return (
        '<table class="vos-card-table"><tr><th>Variant</th><th>Weights on this machine</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _reported_html(info: MethodInfo) -> str:
    if not info.reported:
        return "<p><small>The paper reports no figure we record.</small></p>"
    rows = []
    for rep in info.reported:
        figures = ", ".join(f"{_e(k)} {_e(v)}" for k, v in rep.metrics.items())
        speed = f"{rep.fps:g} fps" if rep.fps else ""
        if speed and rep.hardware:
            speed += f" on {_e(rep.hardware)}"
        if speed and rep.resolution:
            speed += f" ({_e(rep.resolution)})"
        note = f" <small>{_e(rep.note)}</small>" if rep.note else ""
        rows.append(
            f"<tr><td>{_e(rep.dataset)}</td><td class='vos-nowrap'>{_e(rep.variant or '')}</td><td>{figures}{note}</td>"
            f"<td>{speed}</td></tr>"
        )
    return _scroll(
        '<table class="vos-card-table"><tr><th>Dataset</th><th>Variant</th><th>Reported</th><th>Speed</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _options_html(info: MethodInfo) -> str:
    if not info.options:
        return ""
    rows = []
    for opt in info.options:
        paper = _e(opt.format(opt.paper)) if opt.paper is not None else ""
        choices = f" <small>({', '.join(_e(opt.format(c)) for c in opt.choices)})</small>" if opt.choices else ""
        rows.append(
            f"<tr><td><code>{_e(opt.name)}</code></td><td><code>{_e(opt.format(opt.default))}</code>{choices}</td>"
            f"<td>{paper}</td><td>{_e(opt.help)}</td></tr>"
        )
    return (
        "<details><summary>Options (the Compare page's advanced panel, "
        f"<code>--opt {_e(info.key)}.NAME=VALUE</code> on the command line)</summary>"
        + _scroll(
            '<table class="vos-card-table"><tr><th>Name</th><th>Default</th><th>Paper</th><th>What it does</th></tr>'
            + "".join(rows)
            + "</table>"
        )
        + "</details>"
    )


def card_html(info: MethodInfo) -> str:
    task = "unsupervised" if info.task == UNSUP else "semi-supervised"
    paper = info.paper
    citation = (
        f"<details><summary>Cite</summary><pre class='vos-bibtex'>{_e(paper.bibtex)}</pre></details>"
        if paper.bibtex
        else ""
    )
    return f"""
<article class="vos-card" id="method-{_e(info.key)}">
  <header>
    <h3>{_e(info.title)}</h3>
    <span class="vos-badge">{_e(task)}</span> <span class="vos-badge"><code>{_e(info.key)}</code></span>
  </header>
  <p>{_e(info.summary)}</p>
  <p class="vos-card-meta">
    <b>Paper:</b> {_link(paper.url, paper.title)} — {_e(paper.authors)}, {_e(paper.venue)} {_e(paper.year)}<br>
    <b>Code:</b> {_link(info.repo, info.repo.removeprefix("https://"))} · <b>Licence:</b> {_e(info.licence)}
  </p>
  <h4>Variants</h4>
  {_variants_html(info)}
  <h4>Reported by the paper</h4>
  {_reported_html(info)}
  {_options_html(info)}
  {citation}
</article>"""


def page_html() -> str:
    """Every card; recomputed at each page load, so fetched weights show up without a restart."""
    infos = available()
    if not infos:
        return '<p class="vos-empty">No methods are registered.</p>'
    return '<div class="vos-cards">' + "".join(card_html(info) for info in infos) + "</div>"


def build() -> gr.HTML:
    """Add the Methods page to the current Blocks context."""
    gr.Markdown(
        "Every method the app can run, as its authors describe it. Weights are looked up on this machine; "
        "`python -m vos weights list` shows the same from the command line.",
        elem_classes="vos-small",
    )
    cards = gr.HTML(elem_id="vos-method-cards")
    # Drawn at each page load (no trigger = on load), so weights fetched meanwhile show up without a restart.
    gr.on(triggers=None, fn=page_html, outputs=cards, api_visibility="private")
    return cards


CSS = """
.vos-card-table tr { border: none !important; }  /* Gradio's prose style frames every row */
.vos-cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 460px), 1fr)); gap: 16px; }
.vos-card { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 14px 16px;
  background: var(--background-fill-primary); overflow-wrap: anywhere; }
.vos-card header { display: flex; flex-wrap: wrap; align-items: center; gap: 6px 8px; margin-bottom: 6px; }
.vos-card h3 { margin: 0 8px 0 0 !important; font-size: 1.1rem; }
.vos-card h4 { margin: 12px 0 4px !important; font-size: 0.95rem; }
.vos-card p { margin: 4px 0 !important; }
.vos-card-meta { font-size: 0.88rem; line-height: 1.55; }
.vos-badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 0.78rem;
  background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary); }
.vos-good { background: rgba(46, 157, 79, 0.12); border-color: rgba(46, 157, 79, 0.5); }
.vos-bad { background: rgba(192, 57, 43, 0.1); border-color: rgba(192, 57, 43, 0.5); }
.vos-card-table { width: 100%; border-collapse: collapse; font-size: 0.84rem; margin: 2px 0 !important;
  border: none !important; }
.vos-card-table th, .vos-card-table td { text-align: left; padding: 4px 6px !important; vertical-align: top;
  border: none !important; border-bottom: 1px solid var(--border-color-primary) !important; }
.vos-card-table th { font-weight: 600; background: var(--background-fill-secondary); }
.vos-nowrap { white-space: nowrap; }
.vos-scroll { overflow-x: auto; }
.vos-card-table td, .vos-card-table th { overflow-wrap: normal; word-break: normal; min-width: 5em; }
.vos-fetch { display: inline-block; margin-top: 2px; font-size: 0.8rem; }
.vos-card details { margin-top: 8px; font-size: 0.86rem; }
.vos-bibtex { white-space: pre-wrap; font-size: 0.78rem; }
"""
