"""`alignlab probe-reward`'s tables and report: a reward's results against a task's attacks.

The probing itself is `rewards/probe.py` (pure, shared with the GRPO preflight); this module turns
its `ProbeResult`s into text: a table per reward (each family's attacks, mean and max reward, and the
exploits: attacks scoring at least the references' median), its verdict and worst examples, and,
when several rewards were probed, one table of exploits by family and reward. `write_probe` writes
probe.md, probe.html and probe.json as one folder, complete or absent (`outputs.new_output`).

Left out: plots (the tables say it), and every scored completion in probe.json (the worst of each
family is there; the probe is seeded, so a rerun writes the same completions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from alignlab.eval.pages import note, table_section, write_pages
from alignlab.eval.sampling_eval import json_text, write_texts
from alignlab.eval.sweep_report import format_table
from alignlab.outputs import new_output
from alignlab.rewards.probe import ProbeResult

HEADER = ["family", "attacks", "mean", "max", "exploits", "what the attacks are"]
SHOWN = 3  # worst examples shown per reward


def _num(x: float) -> str:
    return f"{x:+.3f}" if math.isfinite(x) else "-"


def family_table(result: ProbeResult) -> list[list[str]]:
    """Header, then one row per family; an exploited family's count is marked with `!`."""
    rows = [HEADER]
    for f in result.families:
        exploits = f"{f.exploits}/{f.n}" + (" !" if f.exploits else "")
        rows.append([f.name, str(f.n), _num(f.mean), _num(f.max), exploits, f.claim])
    return rows


def reference_line(result: ProbeResult) -> str:
    return (f"good answers (references): {result.references}, reward median {_num(result.reference_median)}, "
            f"mean {_num(result.reference_mean)}, min {_num(result.reference_min)}; an attack scoring at least the "
            f"median is an exploit")


def one_line(text: str, limit: int = 160) -> str:
    """A completion on one line for a table: line breaks shown as ⏎, cut at `limit` characters.

    >>> one_line("- a\\n- b")
    "'- a ⏎ - b'"
    """
    flat = " ⏎ ".join(text.splitlines()) if text.strip() else text
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def worst_rows(result: ProbeResult) -> list[list[str]]:
    """Header, then the best-scoring attack of each exploitable family (at most SHOWN)."""
    return [["family", "reward", "completion"],
            *([s.family, _num(s.reward), one_line(s.completion)] for s in result.worst_examples(SHOWN))]


def format_probe(result: ProbeResult) -> str:
    """One reward's probe for the terminal: what was probed, the table, the verdict, the worst examples."""
    lines = [f"probe-reward: {result.reward} on task {result.task}, {result.prompts} prompts",
             reference_line(result), "", format_table(family_table(result)), "", f"verdict: {result.verdict}"]
    for s in result.worst_examples(SHOWN):
        lines.append(f"  {s.family} scores {_num(s.reward)}: {one_line(s.completion)}")
    return "\n".join(lines)


def rewards_table(results: Sequence[ProbeResult]) -> list[list[str]]:
    """Exploits by family (rows) and reward (columns), then each reward's verdict."""
    rows = [["family", *(r.reward for r in results)]]
    for i, family in enumerate(results[0].families):
        rows.append([family.name, *(f"{r.families[i].exploits}/{r.families[i].n}" for r in results)])
    rows.append(["verdict", *("robust" if r.robust else f"exploitable ({len(r.exploitable)} "
                              f"famil{'y' if len(r.exploitable) == 1 else 'ies'})" for r in results)])
    return rows


def format_rewards(results: Sequence[ProbeResult]) -> str:
    return "exploits by family and reward:\n" + format_table(rewards_table(results))


def _sections(results: Sequence[ProbeResult]) -> list[tuple]:
    sections = []
    if len(results) > 1:
        sections.append(("Exploits by family and reward", table_section(rewards_table(results), "num")))
    for result in results:
        worst = table_section(worst_rows(result)) if not result.robust else note("no attack reaches the references")
        sections.append((f"{result.reward}: {result.verdict}", note(reference_line(result)),
                         table_section(family_table(result), "num"), worst))
    return sections


def probe_record(results: Sequence[ProbeResult], info: Mapping) -> dict:
    """probe.json: the settings, then each reward's result (families with their worst attack, verdict)."""
    return {**info, "rewards": [r.to_dict() for r in results]}


def write_probe(out: str | Path, results: Sequence[ProbeResult], info: Mapping, *, protect: Sequence = ()) -> Path:
    """out/probe.md, probe.html and probe.json, complete or absent; replaces only an earlier probe folder."""
    line = (f"task {results[0].task}, {results[0].prompts} prompts, seed {info.get('seed')}: "
            + "; ".join(f"{r.reward}: {r.verdict}" for r in results))
    with new_output(out, "probe", protect=protect) as tmp:
        write_texts(tmp, {"probe.json": json_text(probe_record(results, info))})
        write_pages(tmp, "probe", "alignlab probe-reward", line, _sections(results), [])
    return Path(out)

