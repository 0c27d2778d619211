"""Report pages: sections as (markdown, HTML) pairs and the two files they make, for the run report,
the sweep and compare reports and the probe report alike.

`write_pages` writes <stem>.md (figures as PNG files under <stem>_files/) and one self-contained
<stem>.html (figures inlined as base64, style inline), each file atomically. Section builders:
`table_section`, `note`, `figures_section`, `verdict_section`, and the sample views `sample_md` /
`sample_html`; `md_text` and `fenced` make model output safe inside markdown.

Left out: interactive plots and any JavaScript beyond one line that counts loaded images (a
rendering check for tests).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from alignlab.errors import UserError
from alignlab.eval.metrics import ScoredSample
from alignlab.eval.verdict import Verdict
from alignlab.outputs import swap_in, temp_beside, write_file_atomic

DPI = 100
Section = tuple[str, str]  # (markdown, html)
Figure = tuple[str, str, bytes]  # (file name, caption, PNG)
esc = html.escape

LABEL_CLASS = {"ok": "good", "reward_hacking": "bad", "degenerate": "bad", "regressed": "bad", "failing": "warn",
               "no_progress": "warn"}  # other labels ("unknown") are neutral
CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;vertical-align:top}
.num td+td{text-align:right}.pair td{width:50%}img{max-width:100%;display:block;margin:.5em 0}
pre{white-space:pre-wrap;word-break:break-word;background:#f4f4f4;padding:6px;margin:4px 0}
.bad{background:#fde4e4}.bad pre{background:#f9d0d0}.note{color:#666;font-style:italic}
.badge{display:inline-block;padding:1px 7px;border-radius:3px;color:#fff;font-weight:600}
.pass,.label-good{background:#2e7d32}.fail,.label-bad{background:#c62828}.label-warn{background:#e65100}
.label-neutral{background:#757575}.prompt{color:#555}"""
# Sets <body data-images="loaded/total"> on load: lets a headless browser check every plot rendered.
IMAGE_CHECK = ("<script>addEventListener('load',function(){var m=document.images,n=0;for(var i=0;i<m.length;i++)"
               "if(m[i].complete&&m[i].naturalWidth>0)n++;document.body.dataset.images=n+'/'+m.length})</script>")

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<|])")


def md_text(text: str) -> str:
    """Inline markdown text: one line, markdown and HTML characters backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def fenced(text: str) -> str:
    """A fenced block longer than any backtick run inside, so model output cannot close it.

    >>> print(fenced("a ``` b"))
    ````text
    a ``` b
    ````
    """
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"


def table_section(rows: Sequence[Sequence[str]], cls: str = "") -> Section:
    """A table (header row first) as markdown and HTML; `cls` "num" right-aligns all but the first column."""
    return md_table(rows), html_table(rows, cls)


def md_table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join(":---" for _ in rows[0]) + "|")
    return "\n".join(lines)


def html_table(rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows[1:])
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def note(text: str) -> Section:
    """A one-line italic note (a section whose input is missing)."""
    return f"_{md_text(text)}_", f'<p class="note">{esc(text)}</p>'


def figures_section(figures: Sequence[Figure], folder: str = "report_files") -> Section:
    """The figures as markdown images under `folder`/<name>.png and as inline HTML images."""
    md = [f"![{md_text(caption)}]({folder}/{name}.png)" for name, caption, _ in figures]
    page = [f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>" for name, caption, png in figures]
    return "\n\n".join(md), "".join(page)


def _tags(sample: ScoredSample) -> list[str]:
    return [t for t, on in (("degenerate", sample.degenerate), ("garbled", sample.garbled),
                            ("truncated", sample.truncated)) if on]


def sample_md(sample: ScoredSample, heading: str) -> str:
    tags = _tags(sample)
    head = f"{heading}: **{'PASS' if sample.passed else 'FAIL'}**" + (f" ({', '.join(tags)})" if tags else "")
    lines = [head, "", fenced(sample.completion)]
    if not sample.passed:
        lines += ["", f"failed rules: {md_text(', '.join(sample.failed_rules))}", ""]
        lines += [f"- {md_text(reason)}" for reason in sample.reasons]
    return "\n".join(lines)


def sample_html(sample: ScoredSample, heading: str = "") -> str:
    badge = '<span class="badge pass">pass</span>' if sample.passed else '<span class="badge fail">fail</span>'
    tags = "".join(f" <em>{t}</em>" for t in _tags(sample))
    text = f"<div>{esc(heading)} {badge}{tags}</div><pre>{esc(sample.completion)}</pre>"
    if sample.passed:
        return f'<div class="sample">{text}</div>'
    reasons = "".join(f"<li>{esc(reason)}</li>" for reason in sample.reasons)
    return (f'<div class="sample bad">{text}<div>failed rules: {esc(", ".join(sample.failed_rules))}</div>'
            f"<ul>{reasons}</ul></div>")


def verdict_section(heading: str, verdict: Verdict) -> Section:
    md = [f"### {heading}", "", f"**verdict: {verdict.label}**", ""]
    md += [f"- flag: {md_text(flag)}" for flag in verdict.flags] + [f"- {md_text(note)}" for note in verdict.notes]
    page = [f'<h3>{esc(heading)}</h3><p><span class="badge label-{LABEL_CLASS.get(verdict.label, "neutral")}">'
            f"verdict: {esc(verdict.label)}</span></p><ul>"]
    page += [f"<li><strong>flag:</strong> {esc(flag)}</li>" for flag in verdict.flags]
    page += [f"<li>{esc(note)}</li>" for note in verdict.notes] + ["</ul>"]
    for i, sample in enumerate(verdict.evidence, 1):
        md += ["", f"Evidence {i}, prompt: {md_text(sample.prompt)}", "", sample_md(sample, f"evidence {i}")]
        page.append(f'<p class="prompt">Evidence {i}, prompt: {esc(sample.prompt)}</p>{sample_html(sample)}')
    return "\n".join(md), "".join(page)


def write_pages(out: Path, stem: str, title: str, line: str, sections: Sequence[tuple[str, Section]],
                figures: Sequence[Figure]) -> tuple[Path, Path]:
    """Write out/<stem>.html (self-contained) and out/<stem>.md with its figures under
    out/<stem>_files/, each file atomically; `sections` are (heading, section, ...) tuples."""
    md = [f"# {md_text(title)}", "", md_text(line)]
    page = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style>{IMAGE_CHECK}</head><body><h1>{esc(title)}</h1><p>{esc(line)}</p>"]
    for heading, *parts in sections:
        md += ["", f"## {heading}", *("\n" + part[0] for part in parts)]
        page += [f"<h2>{esc(heading)}</h2>", *(part[1] for part in parts)]
    if figures:  # the figures folder is replaced whole: no mix of an old and a new report's plots
        try:
            tmp = temp_beside(out / f"{stem}_files")
            for name, _, png in figures:
                (tmp / f"{name}.png").write_bytes(png)
            swap_in(tmp, out / f"{stem}_files")
        except OSError as err:
            raise UserError(f"cannot write the report's figures: {err.strerror or err}", file=str(out)) from err
    paths = out / f"{stem}.html", out / f"{stem}.md"
    write_file_atomic(paths[0], "".join(page) + "</body></html>\n", what="report")
    write_file_atomic(paths[1], "\n".join(md) + "\n", what="report")
    return paths
