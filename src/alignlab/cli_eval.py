"""The `alignlab` commands that judge rather than train: eval, check, compare, score, audit-rm.

Split from `cli.py` (which parses the arguments and dispatches here); the same rules hold: each
handler builds what the library needs from its arguments, prints, and returns the exit code; a
`UserError` reaches `cli.main`, which prints it as one line and exits 2.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.errors import UserError


def cmd_score(args) -> int:
    from alignlab.data.batches import PreferenceCollator
    from alignlab.data.sources import read_preferences
    from alignlab.model.heads import load_reward_model
    from alignlab.runtime import resolve_device
    from alignlab.trainers.reward_model import evaluate_pairs, seed_style_report

    pairs = read_preferences(args.pairs)
    model, tokenizer = load_reward_model(args.checkpoint, device=resolve_device(args.device))
    collator = PreferenceCollator(tokenizer, args.max_length)
    items = [collator.tokenize(p) for p in pairs]
    metrics = evaluate_pairs(model, items, tokenizer.pad_id, 64)
    print(seed_style_report(model, tokenizer, items, pairs, metrics, shown=args.show))
    return 0


def cmd_audit_rm(args) -> int:
    from pathlib import Path

    from alignlab.data.sources import read_preferences
    from alignlab.eval.reward_audit import audit_reward_model, format_markdown, format_report
    from alignlab.eval.sampling_eval import write_texts
    from alignlab.model.heads import load_reward_model
    from alignlab.runtime import resolve_device

    for key in ("max_pairs", "max_length", "batch_size"):
        if getattr(args, key) < 1:
            raise UserError(f"expected a positive integer, got {getattr(args, key)}", key="--" + key.replace("_", "-"))
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError("exists and is not a directory", file=str(out))
    pairs = read_preferences(args.pairs)
    model, tokenizer = load_reward_model(args.checkpoint, device=resolve_device(args.device))
    report = audit_reward_model(model, tokenizer, pairs[: args.max_pairs], args.max_length, args.batch_size)
    print(f"audit-rm: {args.checkpoint}, first {report.pairs} of {len(pairs)} pairs from {args.pairs}")
    print(format_report(report))
    if out is not None:
        texts = {"audit.json": json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n",
                 "audit.md": format_markdown(report)}
        write_texts(out, texts)
        print(f"wrote {out / 'audit.json'} and {out / 'audit.md'}")
    return 0


def cmd_eval(args) -> int:
    from alignlab.config import GenerationConfig
    from alignlab.eval.metrics import format_table
    from alignlab.eval.sampling_eval import evaluate_model, read_prompts, task_prompts, write_eval
    from alignlab.eval.verdict import format_verdict, single_verdict
    from alignlab.model.checkpoint import load_model
    from alignlab.runtime import resolve_device

    for key in ("samples", "max_new_tokens", "batch_size"):
        if getattr(args, key) < 1:
            raise UserError(f"expected a positive integer, got {getattr(args, key)}", key="--" + key.replace("_", "-"))
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError("exists and is not a directory", file=str(out))
    if args.task != "study-plan":
        return _eval_task(args, gen, out)
    held_out = task_prompts(args.task)
    prompts = read_prompts(args.prompts) if args.prompts else held_out
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.checkpoint, device=device)
    samples, summary = evaluate_model(model, tokenizer, prompts, args.samples, gen, args.seed, args.batch_size)
    verdict = single_verdict(summary, samples)
    name = args.checkpoint
    print(f"eval: {args.checkpoint} on {len(prompts)} prompts x {args.samples} samples, "
          f"temperature {args.temperature}, task {args.task}")
    print(format_table({name: summary}))
    print(format_verdict(verdict))
    if out is not None:
        info = {"checkpoint": args.checkpoint, "task": args.task, "prompts": args.prompts or "held-out",
                "samples_per_prompt": args.samples, "temperature": args.temperature,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed}
        write_eval(out, name, samples, summary, verdict, info)
        print(f"wrote {out / 'samples.jsonl'}, {out / 'summary.md'} and {out / 'summary.json'}")
    return 0


def _eval_task(args, gen, out: Path | None) -> int:
    """`alignlab eval` of a task other than the study plan: its own check, pass@k."""
    from alignlab.eval.task_eval import evaluate_task, format_task_summary, write_task_eval
    from alignlab.model.checkpoint import load_model
    from alignlab.runtime import resolve_device
    from alignlab.tasks.registry import get_task

    task = get_task(args.task)
    examples = task.held_out_examples(args.prompts or "")
    if not examples:
        raise UserError(f"task {args.task} has no built-in held-out examples: pass --prompts FILE.jsonl",
                        key="--prompts")
    model, tokenizer = load_model(args.checkpoint, device=resolve_device(args.device))
    records, summary = evaluate_task(model, tokenizer, task, examples, args.samples, gen, args.seed, args.batch_size)
    print(f"eval: {args.checkpoint}, temperature {args.temperature}, max {args.max_new_tokens} new tokens")
    print(format_task_summary(summary))
    if out is not None:
        info = {"checkpoint": args.checkpoint, "task": args.task, "prompts": args.prompts,
                "temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
        write_task_eval(out, records, summary, info)
        print(f"wrote {out / 'samples.jsonl'}, {out / 'summary.md'} and {out / 'summary.json'}")
    return 0


def cmd_check(args) -> int:
    from alignlab.eval.sampling_eval import evaluate_completions, read_completions, task_prompts, write_samples

    task_prompts(args.task)  # validates the task name
    records = read_completions(args.completions)
    samples, summary = evaluate_completions(records)
    passed = sum(s.passed for s in samples)
    low, high = summary.pass_rate_ci
    print(f"check: {args.completions}, {len(samples)} completions, task {args.task}")
    print(f"pass rate: {summary.pass_rate:.1%} ({passed}/{len(samples)}, 95% CI [{low:.1%}, {high:.1%}]); "
          f"degenerate: {summary.degenerate_rate:.1%}; sharp reward mean {summary.reward_mean:+.3f}")
    failures = ", ".join(f"{rule} {count}" for rule, count in summary.rule_failures.items() if count)
    print(f"rule failures: {failures or 'none'}")
    if args.out:
        extras = [{k: v for k, v in r.items() if k not in ("prompt", "completion")} for r in records]
        print(f"wrote {write_samples(Path(args.out).expanduser(), samples, extras)}")
    return 0


def cmd_compare(args) -> int:
    from alignlab.eval.metrics import format_table
    from alignlab.eval.run_info import training_info, training_rows
    from alignlab.eval.sampling_eval import load_or_evaluate
    from alignlab.eval.sweep_report import format_table as aligned_table
    from alignlab.eval.verdict import compare_verdict, format_verdict
    from alignlab.runtime import resolve_device

    device = resolve_device(args.device)
    if len(set(args.runs)) != len(args.runs):
        raise UserError("the same path is given twice", key="runs")
    loaded = {arg: load_or_evaluate(arg, samples_per_prompt=args.samples, seed=args.seed, device=device,
                                    temperature=args.temperature, max_new_tokens=args.max_new_tokens)
              for arg in args.runs}
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
    if args.out:
        from alignlab.eval.sweep_report import write_compare_report

        html, _ = write_compare_report(Path(args.out), loaded, verdict, training)
        print(f"report: {html}")
    return 0
