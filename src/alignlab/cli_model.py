"""The `alignlab` commands that move models: generate, export (transformers folder or GGUF), import.

Split from `cli.py` (which parses the arguments and dispatches here), under the same rules as
`cli_eval.py`: each handler builds what the library needs from its arguments, prints, and returns
the exit code; a `UserError` reaches `cli.main`, which prints it as one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.errors import UserError


def cmd_generate(args) -> int:
    from alignlab.config import GenerationConfig, load_config
    from alignlab.generation.engine import generate
    from alignlab.model.checkpoint import load_model
    from alignlab.runtime import make_generator, resolve_device

    _check_prompts(args.prompt)
    gen = load_config(GenerationConfig, None, args.overrides)
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.checkpoint, engine=args.engine, device=device,
                                  allow_unverified_base=args.allow_unverified_base)
    model.eval()
    prompts = [p for p in args.prompt for _ in range(args.samples)]
    rollout = generate(model, tokenizer, prompts, gen, make_generator(args.seed, device), chat=not args.raw)
    for prompt, text, cut in zip(prompts, rollout.texts, rollout.truncated.tolist(), strict=True):
        print(f"### {prompt}\n{text}" + ("  [truncated]" if cut else ""))
    return 0


def _check_prompts(prompts) -> None:
    """Refuse a prompt the model cannot be given: an empty or blank one (nothing to continue), or one
    that is not UTF-8 text (a shell's stray byte reaches Python as a lone surrogate escape)."""
    for prompt in prompts:
        if not prompt.strip():
            raise UserError("empty prompt; expected some text to continue", key="--prompt")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as err:
            raise UserError(f"not UTF-8 text (an undecodable byte at character {err.start}); expected a "
                            "prompt in UTF-8", key="--prompt") from None


def cmd_export(args) -> int:
    from alignlab.model.checkpoint import EXPORT_HINT, load_model, to_hf
    from alignlab.model.lora import adapter_bases, is_adapter_dir, merge_lora
    from alignlab.outputs import check_output

    source = Path(args.checkpoint).expanduser()
    protect = [source, source.parent.parent] if source.parent.name == "checkpoints" else [source]
    protect += adapter_bases(source)  # a merge written over the adapter's base would orphan the adapter
    if args.fmt == "gguf":  # checked before loading, as below
        from alignlab.model.gguf_export import check_gguf_output, check_gguf_source, export_gguf

        check_gguf_output(args.out, overwrite=args.overwrite, protect=protect)
        check_gguf_source(args.checkpoint)
    elif args.dtype is not None:
        raise UserError("--dtype applies to --to gguf", key="--dtype")
    else:
        check_output(args.out, "export", replace=args.overwrite, protect=protect, hint=EXPORT_HINT)
    if is_adapter_dir(args.checkpoint) and not args.merge:
        raise UserError("a LoRA adapter checkpoint (adapter.json): add --merge to write its base with the adapter "
                        "folded in", file=args.checkpoint)
    model, tokenizer = load_model(args.checkpoint, allow_unverified_base=args.allow_unverified_base)
    if args.merge:
        if not is_adapter_dir(args.checkpoint):
            raise UserError("--merge needs a LoRA adapter checkpoint (adapter.json)", file=args.checkpoint)
        model = merge_lora(model)
    if args.fmt == "gguf":
        out = export_gguf(model, tokenizer, args.out, dtype=args.dtype or "f16", overwrite=args.overwrite,
                          protect=protect, source=args.checkpoint)
        print(f"exported {args.checkpoint} -> {out} ({args.dtype or 'f16'} GGUF: runs in llama.cpp and Ollama)")
        return 0
    out = to_hf(model, args.out, tokenizer, overwrite=args.overwrite, protect=protect)
    print(f"exported {args.checkpoint} -> {out} (loads with transformers.AutoModelForCausalLM)")
    return 0


def cmd_import(args) -> int:
    from alignlab.model.gguf import import_gguf

    out = import_gguf(args.gguf, args.out, replace=args.overwrite)
    print(f"imported {args.gguf} -> {out} (loads with alignlab and transformers.AutoModelForCausalLM)")
    return 0
