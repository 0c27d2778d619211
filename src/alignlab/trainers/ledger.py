"""The rollout ledger: every sampled completion of an RL run, one JSON line each, in `rollouts.jsonl.gz`.

GRPO, PPO and the TRL backend append a record per completion (its step, group, example, reward and
parts, the task's verdict, failed rules with reasons, degeneration flags), so a user can find the
step where a hack started: `zcat rollouts.jsonl.gz | jq 'select(.step == 40)'`. A resumed run cuts
the ledger back to its checkpoint's step first, so no generation is logged twice.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

from alignlab.errors import UserError
from alignlab.outputs import json_safe

LEDGER = "rollouts.jsonl.gz"
# The ledger's own fields; an example column of the same name is kept as example_<name>.
RECORD_KEYS = frozenset({"step", "group", "completion", "reward", "parts", "passed", "failed", "reasons",
                         "degenerate", "truncated", "tokens"})


class Ledger:
    """Appends one JSON record per completion to a gzip file; cut back to a step on resume."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, records: Sequence[dict]) -> None:
        with gzip.open(self.path, "at", encoding="utf-8") as handle:
            handle.writelines(json.dumps(json_safe(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records)

    def keep_until(self, step: int) -> None:
        """Drop records of generations first used after `step` (a crashed run's tail)."""
        if not self.path.exists():
            return
        kept = []
        try:
            with gzip.open(self.path, "rt", encoding="utf-8") as handle:
                for line in handle:
                    try:
                        if json.loads(line)["step"] <= step:
                            kept.append(line)
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line a killed process left half-written
        except gzip.BadGzipFile as err:  # not a gzip file at all: a user's edit, never emptied silently
            if not kept:
                raise UserError(f"the rollout ledger is not a gzip file ({err}); resuming would empty it: restore "
                                "it (gzip it again) or move it away, then --resume", file=str(self.path)) from None
        except (EOFError, OSError, zlib.error):
            pass  # a gzip stream a killed process left unfinished: keep what reads back
        tmp = self.path.with_name(self.path.name + ".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as handle:
            handle.writelines(kept)
        tmp.replace(self.path)


def ledger_records(step: int, group_size: int, examples, rollout, scores) -> list[dict]:
    """One record per completion of a generation batch: the example, the completion, its reward and parts,
    the task's verdict with reasons and degeneration flags, truncation and length (`rollout`: anything
    with texts, truncated (B,) and lengths (B,): a `Rollout`, gathered `Completions`; `scores`: the
    Scorer's `Scores`). Native GRPO, PPO and the TRL backend all write these records."""
    records, totals, parts = [], scores.totals, scores.parts
    for i, (example, text, verdict) in enumerate(zip(examples, rollout.texts, scores.verdicts, strict=True)):
        example = {(f"example_{k}" if k in RECORD_KEYS else k): v for k, v in example.items()}  # ours win
        records.append({"step": step, "group": i // group_size, **example, "completion": text,
                        "reward": totals[i], "parts": {k: v[i] for k, v in parts.items()},
                        "passed": verdict.passed, "failed": list(verdict.failed), "reasons": list(verdict.reasons),
                        "degenerate": list(verdict.degenerate_reasons), "truncated": bool(rollout.truncated[i]),
                        "tokens": int(rollout.lengths[i])})
    return records
