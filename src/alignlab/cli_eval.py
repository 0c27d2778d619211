"""The `alignlab` commands that judge rather than train: eval, check, compare, score, audit-rm, probe-reward.

Split from `cli.py` (which dispatches here; `add_judge_parsers` builds these commands' parsers); the
same rules hold: each handler builds what the library needs from its arguments, prints, and returns the exit code; a
`UserError` reaches `cli.main`, which prints it as one line and exits 2.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.cli_args import positive_int, seed, temperature
from alignlab.config import EvalConfig
from alignlab.errors import UserError
from alignlab.outputs import check_output_file


def cmd_score(args) -> int:
    from alignlab.data.batches import PreferenceCollator
    from alignlab.data.preferences import read_preferences
    from alignlab.data.sources import BadRows
    from alignlab.model.heads import load_reward_model
    from alignlab.runtime import resolve_device
    from alignlab.trainers.reward_model import evaluate_pairs, seed_style_report

    bad_rows = BadRows("skip" if args.skip_bad_rows else "error")
    pairs = read_preferences(args.pairs, bad_rows=bad_rows)
    for line in bad_rows.report():  # nothing when no row was skipped
        print(line)
    model, tokenizer = load_reward_model(args.checkpoint, device=resolve_device(args.device))
    collator = PreferenceCollator(tokenizer, args.max_length)
    items = [collator.tokenize(p) for p in pairs]
    metrics = evaluate_pairs(model, items, tokenizer.pad_id, 64)
    print(seed_style_report(model, tokenizer, items, pairs, metrics, shown=args.show))
    return 0


def cmd_audit_rm(args) -> int:

    from alignlab.data.preferences import read_preferences
    from alignlab.data.sources import BadRows
    from alignlab.eval.reward_audit import audit_reward_model, format_markdown, format_report
    from alignlab.eval.sampling_eval import json_text, write_output
    from alignlab.model.heads import load_reward_model
    from alignlab.outputs import check_output
    from alignlab.runtime import resolve_device

    for key in ("max_pairs", "max_length", "batch_size"):
        if getattr(args, key) < 1:
            raise UserError(f"expected a positive integer, got {getattr(args, key)}", key="--" + key.replace("_", "-"))
    out = check_output(args.out, "audit", protect=[args.checkpoint, args.pairs]) if args.out is not None else None
    bad_rows = BadRows("skip" if args.skip_bad_rows else "error")
    pairs = read_preferences(args.pairs, bad_rows=bad_rows)
    model, tokenizer = load_reward_model(args.checkpoint, device=resolve_device(args.device))
    report = audit_reward_model(model, tokenizer, pairs[: args.max_pairs], args.max_length, args.batch_size)
    print(f"audit-rm: {args.checkpoint}, first {report.pairs} of {len(pairs)} pairs from {args.pairs}")
    for line in bad_rows.report():  # nothing when no row was skipped
        print(line)
    print(format_report(report))
    if out is not None:
        write_output(out, "audit", {"audit.json": json_text(report.to_dict()), "audit.md": format_markdown(report)})
        print(f"wrote {out / 'audit.json'} and {out / 'audit.md'}")
    return 0


def cmd_eval(args) -> int:
    from alignlab.data.sources import BadRows
    from alignlab.eval.metrics import format_table
    from alignlab.eval.sampling_eval import eval_info, evaluate, held_out, write_eval
    from alignlab.eval.verdict import format_verdict, single_verdict
    from alignlab.model.checkpoint import load_model
    from alignlab.outputs import check_output
    from alignlab.runtime import resolve_device
    from alignlab.tasks.registry import get_task

    cfg = _eval_config(args, batch_size=args.batch_size)
    out = check_output(args.out, "eval", protect=[args.checkpoint, args.prompts]) if args.out is not None else None
    task = get_task(args.task)
    if args.skip_bad_rows and task.columns:
        raise UserError(f"applies to a file of prompts; task {args.task} reads its records with their "
                        f"{', '.join(task.columns)} and checks each", key="--skip-bad-rows")
    if args.prompts and not task.columns:  # the user's own prompts: never filtered by language
        bad_rows = BadRows("skip" if args.skip_bad_rows else "error")
        examples = [{"prompt": p} for p in _read_prompts(args.prompts, bad_rows)]
        for line in bad_rows.report():  # nothing when no row was skipped
            print(line)
    else:
        examples = held_out(task, cfg, args.prompts or "", args.lang)
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.checkpoint, device=device, allow_unverified_base=args.allow_unverified_base)
    samples, summary = evaluate(model, tokenizer, task, examples, cfg)
    if args.judge_model:  # coherence: the judge's likelihood of the answers against fluent references
        from alignlab.eval.judge import judge_evaluation

        if task.references is None:
            raise UserError(f"task {args.task} has no fluent reference answers to judge against", key="--judge-model")
        del model  # the judge may be larger: one model in memory at a time
        summary = judge_evaluation(args.judge_model, summary, samples, task.references(args.lang),
                                   device=device, batch_size=args.judge_batch_size)
    verdict = single_verdict(summary, samples)
    name = args.checkpoint
    print(f"eval: {args.checkpoint} on {len(examples)} prompts x {args.samples} samples, "
          f"temperature {args.temperature}, max {args.max_new_tokens} new tokens, task {args.task}")
    print(format_table({name: summary}))
    print(format_verdict(verdict))
    if out is not None:
        info = eval_info(args.checkpoint, task, cfg, prompts=args.prompts or "held-out",
                         lang=None if args.prompts else args.lang,  # a --prompts file is not filtered by language
                         judge_model=args.judge_model)
        write_eval(out, name, samples, summary, verdict, info)
        print(f"wrote {out / 'samples.jsonl'}, {out / 'summary.md'} and {out / 'summary.json'}")
    return 0


def _eval_config(args, **extra) -> EvalConfig:
    """The `EvalConfig` of `_add_eval_settings`' options (argparse checked each)."""
    return EvalConfig(samples=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                      seed=args.seed, **extra)


def _read_prompts(path: str, bad_rows) -> list[str]:
    """`sampling_eval.read_prompts`, with the same checks, a malformed row left to `bad_rows` (BadRows)."""
    from alignlab.data.sources import parse_rows, read_jsonl_records
    from alignlab.eval.sampling_eval import _text_field, read_prompts
    from alignlab.rewards.base import prompt_text

    if bad_rows.policy == "error":
        return read_prompts(path)

    def parse(record, where) -> str:
        _text_field(record, "prompt", *where)  # the one definition of a valid prompt field
        return prompt_text(record["prompt"])

    rows = (((path, line), record) for line, record in read_jsonl_records(path, bad_rows))
    return parse_rows(rows, parse, bad_rows, path)


def cmd_check(args) -> int:
    from alignlab.eval.sampling_eval import evaluate_completions, read_completions, write_samples
    from alignlab.tasks.registry import get_task

    task = get_task(args.task)
    out = None if args.out is None else check_output_file(args.out, protect=[args.completions], ours=_checked_file)
    records = read_completions(args.completions)
    samples, summary = evaluate_completions(records, task)
    passed = sum(s.passed for s in samples)
    low, high = summary.pass_rate_ci
    print(f"check: {args.completions}, {len(samples)} completions, task {args.task}")
    print(f"pass rate: {summary.pass_rate:.1%} ({passed}/{len(samples)}, 95% CI [{low:.1%}, {high:.1%}]); "
          f"degenerate: {summary.degenerate_rate:.1%}; sharp reward mean {summary.reward_mean:+.3f}")
    failures = ", ".join(f"{rule} {count}" for rule, count in summary.rule_failures.items() if count)
    print(f"rule failures: {failures or 'none'}")
    if out is not None:
        extras = [{k: v for k, v in r.items() if k not in ("prompt", "completion")} for r in records]
        print(f"wrote {write_samples(out, samples, extras)}")
    return 0


def _checked_file(path: Path) -> bool:
    """True when `path` is an earlier `alignlab check --out` (its first record is a scored sample)."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = json.loads(handle.readline(1 << 20) or "null")
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(first, dict) and {"passed", "reasons", "completion"} <= first.keys()


def cmd_compare(args) -> int:
    from alignlab.eval.metrics import format_table
    from alignlab.eval.run_info import training_info, training_rows
    from alignlab.eval.sampling_eval import load_or_evaluate
    from alignlab.eval.sweep_report import format_table as aligned_table
    from alignlab.eval.verdict import compare_verdict, format_verdict
    from alignlab.outputs import check_output
    from alignlab.runtime import resolve_device

    device = resolve_device(args.device)
    if len(set(args.runs)) != len(args.runs):
        raise UserError("the same path is given twice", key="runs")
    if args.out is not None:  # before any evaluation: a folder that may not be written fails fast
        check_output(args.out, "compare", protect=args.runs)
    from alignlab.tasks.registry import get_task

    cfg = _eval_config(args)
    task = get_task(args.task)
    loaded = {arg: load_or_evaluate(arg, task, cfg, device=device, lang=args.lang) for arg in args.runs}
    print(format_table({arg: summary for arg, (summary, _) in loaded.items()}))
    training = training_rows({arg: training_info(arg) for arg in args.runs})
    if training:
        print(f"\ntraining:\n{aligned_table(training)}")
    verdict = None
    if len(args.runs) == 2:
        (before, _), (after, after_samples) = loaded[args.runs[0]], loaded[args.runs[1]]
        verdict = compare_verdict(before, after, after_samples or [])
        print(f"{args.runs[1]} against {args.runs[0]}:")
        print(format_verdict(verdict))
    if args.out is not None:
        from alignlab.eval.sweep_report import write_compare_report

        html, _ = write_compare_report(Path(args.out), loaded, verdict, training)
        print(f"report: {html}")
    return 0


def add_judge_parsers(sub, commands: dict[str, str]) -> None:
    """The parsers of this module's commands (`commands`: command -> its one-line help)."""
    for add_parser in (_add_audit_rm_parser, _add_eval_parser, _add_check_parser, _add_compare_parser):
        add_parser(sub, commands)
    add_probe_parser(sub, commands["probe-reward"])


def _add_audit_rm_parser(sub, commands) -> None:
    au = sub.add_parser("audit-rm", help=commands["audit-rm"])
    au.add_argument("checkpoint", help="reward model checkpoint or train-rm run directory")
    au.add_argument("--pairs", required=True, help="held-out preference JSONL(.gz), optionally sliced f.jsonl[:100]")
    au.add_argument("--max-pairs", type=positive_int, default=1000,
                    help="audit the first N pairs (7 scored sequences each)")
    au.add_argument("--out", metavar="DIR", help="also write DIR/audit.json and DIR/audit.md")
    au.add_argument("--max-length", type=positive_int, default=512, help="tokens per sequence, as in training")
    au.add_argument("--batch-size", type=positive_int, default=64)
    au.add_argument("--device", default="auto")
    au.add_argument("--skip-bad-rows", action="store_true", help="leave malformed rows out (counted, the first few "
                    "shown) instead of stopping at the first")


def _task_names() -> str:
    from alignlab.tasks.registry import TASKS

    return ", ".join(TASKS)


def _add_eval_settings(parser) -> None:
    """An `EvalConfig`'s sampling settings as options, its defaults the one set."""
    parser.add_argument("--samples", type=positive_int, default=EvalConfig.samples, help="completions per prompt")
    parser.add_argument("--temperature", type=temperature, default=EvalConfig.temperature, help="sampling "
                        "temperature; 0 = greedy")
    parser.add_argument("--max-new-tokens", type=positive_int, default=EvalConfig.max_new_tokens)
    parser.add_argument("--seed", type=seed, default=EvalConfig.seed)


def _add_eval_parser(sub, commands) -> None:
    ev = sub.add_parser("eval", help=commands["eval"])
    ev.add_argument("checkpoint", help="alignlab checkpoint, HF model directory or hub id")
    ev.add_argument("--task", default="study-plan", help=f"task whose check judges the samples: "
                    f"{_task_names()}, or your own: path/to/file.py:NAME")
    _add_eval_settings(ev)
    ev.add_argument("--prompts", metavar="FILE.jsonl", help="records with a `prompt` field instead of the "
                    "task's held-out prompts (a task with columns reads its own records: gsm8k question / answer)")
    ev.add_argument("--lang", default="all", help="held-out prompts of one language where the task has them "
                    "(study-plan: all, the original set; en, English, more phrasings; zh); --prompts is not filtered")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=positive_int, default=EvalConfig.batch_size, help="sequences generated "
                    "at once")
    ev.add_argument("--skip-bad-rows", action="store_true", help="--prompts: leave malformed rows out (counted, "
                    "the first few shown) instead of stopping at the first")
    ev.add_argument("--out", metavar="DIR", help="also write DIR/samples.jsonl, summary.md and summary.json")
    ev.add_argument("--judge-model", metavar="PATH", help="coherence: each completion's mean token NLL under this "
                    "causal LM (any checkpoint, .gguf or smollm2-135m-instruct), compared with fluent references")
    ev.add_argument("--judge-batch-size", type=positive_int, default=16, help="sequences the judge scores at once")
    ev.add_argument("--allow-unverified-base", action="store_true", help="load a LoRA adapter whose "
                    "adapter.json records no SHA-256 of its base model (the base cannot be checked)")


def _add_check_parser(sub, commands) -> None:
    ch = sub.add_parser("check", help=commands["check"])
    ch.add_argument("completions", metavar="FILE.jsonl", help="records with `prompt` and `completion` fields")
    ch.add_argument("--task", default="study-plan", help=f"task whose rules score the completions: "
                    f"{_task_names()}, or your own: path/to/file.py:NAME")
    ch.add_argument("--out", metavar="OUT.jsonl", help="one scored record per input: passed, score, degenerate, "
                    "reasons, ...")


def _add_compare_parser(sub, commands) -> None:
    co = sub.add_parser("compare", help=commands["compare"])
    co.add_argument("runs", nargs="+", metavar="RUN_OR_CKPT", help="`alignlab eval --out` directories (or their "
                    "summary.json), checkpoints or run directories (evaluated on the held-out prompts); with "
                    "two, the second is judged against the first")
    co.add_argument("--task", default="study-plan", help=f"task that judges checkpoints evaluated here: "
                    f"{_task_names()}, or your own: path/to/file.py:NAME")
    co.add_argument("--lang", default="all", help="held-out prompts of one language for checkpoints (study-plan)")
    _add_eval_settings(co)
    co.add_argument("--device", default="auto")
    co.add_argument("--out", metavar="DIR", help="also write DIR/compare.html, compare.md (table, pass-rate plot, "
                    "verdict) and each checkpoint's evaluation under DIR/<n>/")


def add_probe_parser(sub, help_text: str) -> None:
    """`alignlab probe-reward`: the task, the reward as `alignlab grpo` builds it (recipe / reward.* keys)."""
    pr = sub.add_parser("probe-reward", help=help_text)
    pr.add_argument("overrides", nargs="*", metavar="[RECIPE.yaml] key=value", help="the reward and task as for "
                    "`alignlab grpo` (a GRPO recipe, reward.mode, reward.function=file.py:fn, reward.model=PATH, "
                    "reward.*_weight, reward.judge_weight, data=, lang=); other GRPO keys are read and unused")
    pr.add_argument("--task", help="task: study-plan, gsm8k (needs data=GSM8K.jsonl) or your own "
                    "(path/to/file.py:NAME); default: the recipe's, else study-plan")
    pr.add_argument("--modes", metavar="M1,M2", help="probe the reward once per rule mode (naive,shaped,sharp), "
                    "everything else as configured")
    pr.add_argument("--families", metavar="F1,F2", help="only these attack families (default: all of the task's)")
    pr.add_argument("--prompts", type=int, default=16, help="prompts sampled (seeded) from the task's train examples")
    pr.add_argument("--seed", type=int, default=0, help="seeds the prompt sample and the attacks")
    pr.add_argument("--device", default="auto", help="where a reward model or judge runs")
    pr.add_argument("--out", metavar="DIR", help="also write DIR/probe.md, probe.html and probe.json")


def _listed(text: str | None, key: str, allowed: tuple[str, ...] | None = None) -> list[str] | None:
    """A comma-separated option as a list (None when not given); `allowed` checks each item."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if allowed is not None and item not in allowed]
    if not items or bad:
        expected = f"a comma-separated list of {', '.join(allowed)}" if allowed else "a comma-separated list"
        raise UserError(f"expected {expected}, got {text!r}", key=key)
    return items


def _probe_config(args):
    """The GRPO config whose task, data, lang and reward the probe uses (recipe, overrides, --task)."""
    from alignlab.config import GRPOConfig, load_config

    if args.prompts < 1:
        raise UserError(f"expected a positive integer, got {args.prompts}", key="--prompts")
    if not 0 <= args.seed < 2**64:
        raise UserError(f"expected a seed in [0, 2^64 - 1], got {args.seed}", key="--seed")
    items = list(args.overrides)
    recipe = items.pop(0) if items and "=" not in items[0] else None
    return load_config(GRPOConfig, recipe, [*items, *([f"task={args.task}"] if args.task else [])])


def cmd_probe_reward(args) -> int:
    import dataclasses

    from alignlab.eval.probe import format_probe, format_rewards, write_probe
    from alignlab.outputs import check_output
    from alignlab.rewards.base import MODES
    from alignlab.rewards.probe import probe_examples, probe_reward
    from alignlab.runtime import resolve_device
    from alignlab.tasks.registry import get_task
    from alignlab.trainers.rl_data import Scorer

    cfg = _probe_config(args)
    modes, families = _listed(args.modes, "--modes", MODES), _listed(args.families, "--families")
    inputs = [cfg.data, cfg.reward.model, cfg.reward.function.rpartition(":")[0],
              cfg.reward.judge_model if cfg.reward.judge_weight else ""]
    out = check_output(args.out, "probe", protect=inputs) if args.out is not None else None
    task = get_task(cfg.task)
    examples = probe_examples(task, cfg.data, cfg.lang, args.prompts, args.seed)
    device = resolve_device(args.device)
    results = []
    for reward in [dataclasses.replace(cfg.reward, mode=m) for m in modes] if modes else [cfg.reward]:
        scorer = Scorer(task, reward, device)  # exactly the trainers' reward
        result, _ = probe_reward(scorer.reward, task, examples, seed=args.seed, families=families)
        results.append(result)
        print(format_probe(result) + "\n")
    if len(results) > 1:
        print(format_rewards(results))
    if out is not None:
        info = {"task": cfg.task, "data": cfg.data or None, "lang": cfg.lang, "seed": args.seed, "modes": modes,
                "families": families, "reward": dataclasses.asdict(cfg.reward),
                "prompts": [e["prompt"] for e in examples]}
        write_probe(out, results, info, protect=inputs)
        print(f"wrote {out / 'probe.md'}, {out / 'probe.html'} and {out / 'probe.json'}")
    return 0
