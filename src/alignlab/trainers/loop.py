"""The one optimizer step, written once, and the loop around it.

A trainer builds a `TrainSpec` (the model, a `BatchSource`: next batch + a resumable position,
`compute_loss(batch) -> (loss, metrics)`, how to save the model, an optional closing summary) and
`lifecycle.run_training` hands it here with the open run. The loop does everything else the same
way for every trainer: AdamW, warm-up + cosine (or linear / constant) learning rate, gradient
accumulation, clipping, autocast (+ a grad scaler for fp16), a non-finite loss check, metrics,
progress, periodic evaluation, checkpoints with the full trainer state, and resume from the
newest complete checkpoint. The learning rate is a pure function of the step (no scheduler state).

Failures keep the last good checkpoint: a non-finite loss (named with its micro-batch) or
gradient norm (named with the first parameter whose gradient is not finite) stops the run
(`NonFinite`), or with `optim.nan_policy=skip_step` drops that step's update and counts it
(`skipped_steps`). SIGINT and SIGTERM are deferred to the end of the step in flight, which is then
checkpointed before the run stops (`Interrupted`); a second signal stops at once. A broken reward
is never skipped: its contract error names the step, the function and the sample.

Under torchrun the same loop runs in every process (`parallel.py` wraps the model: DDP, or
FSDP with `run.fsdp`): each rank computes its shard of every micro-batch, gradients are
averaged once per step (no traffic on the other micro-batches), the step's metrics are reduced
over ranks before logging, a non-finite loss or a stop signal on any rank stops every rank at
the same step, and rank 0 alone writes checkpoints while the others wait. Evaluation runs on
every rank (so FSDP can gather its shards); only rank 0's `Run` writes the numbers.

Left out: overlapping evaluation with training, and elastic world-size changes mid-run (resume
from a checkpoint at any world size instead).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from alignlab.config import OptimConfig, RunConfig
from alignlab.errors import Interrupted, NonFinite, UserError
from alignlab.model.checkpoint import atomic_dir
from alignlab.model.hf import read_weights
from alignlab.model.lora import is_adapter_dir, load_adapter_weights
from alignlab.rewards.base import RewardContractError
from alignlab.run_resume import checkpoint_hashes
from alignlab.runs import Run
from alignlab.runtime import Runtime, rng_state, set_rng_state
from alignlab.trainers.parallel import parallel_for

STATE_FILE = "trainer_state.pt"


class BatchSource(Protocol):
    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainSpec:
    """What a trainer supplies; composition instead of a base class with callbacks."""

    model: nn.Module
    source: BatchSource
    compute_loss: Callable[[Any], tuple[torch.Tensor, dict]]
    save_model: Callable[[Path], None]  # writes model (+ tokenizer) files into a directory
    evaluate: Callable[[], dict] | None = None  # held-out metrics, logged as eval/<name>
    status: Callable[[dict], str] | None = None  # the progress line's tail from a step's metrics
    restore_model: Callable[[Path], None] | None = None  # reads save_model's files back; default: model.safetensors
    baseline: bool = True  # a new run evaluates at step 0: the reference later evaluations are read against
    on_resume: Callable[[int], None] | None = None  # told the step a resumed run continues from (a ledger trims)
    step_metrics: Callable[[dict], dict] | None = None  # the batch source's own readings from a step's totals
    close: Callable[[dict], None] | None = None  # the closing summary, given the last step's metrics (after finish)


def lr_at(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then decay to min_lr_ratio * lr.

    >>> cfg = OptimConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.0, schedule="linear")
    >>> [round(lr_at(s, cfg, 6), 2) for s in range(6)]
    [0.5, 1.0, 1.0, 0.67, 0.33, 0.0]
    """
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(total_steps - 1 - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / span, 1.0)
    floor = optim.min_lr_ratio
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule == "linear":
        return optim.lr * (floor + (1 - floor) * (1 - progress))
    return optim.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; biases, norms and nothing else are exempt. With
    `optim.fused`, torch's fused kernel (one pass over each parameter instead of a dozen)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kernel = {"fused": True} if optim.fused else {}
    try:
        return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, **kernel)
    except RuntimeError as error:  # a device or dtype the fused kernel does not cover
        if not optim.fused:
            raise
        raise UserError(f"optim.fused: torch {torch.__version__} has no fused AdamW for these parameters "
                        f"({error}); set optim.fused=false", key="optim.fused") from None


class StopSignals:
    """Defers SIGINT / SIGTERM while active: the first sets `signum`, a second stops at once by raising
    `ForcedStop` (a KeyboardInterrupt that code wrapping user functions lets through, and the CLI turns
    into exit 128 + signum). `last_checkpoint` (optional) names the checkpoint that stays in that message.
    Installed only in the main thread (Python delivers signals there); a no-op elsewhere."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, last_checkpoint: Callable[[], Path | None] | None = None):
        self.signum: int | None = None
        self._previous: dict = {}
        self._last_checkpoint = last_checkpoint

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        from alignlab.errors import ForcedStop

        raise ForcedStop(f"second {signal.Signals(signum).name}: stopped at once, the step in flight not saved; "
                         f"{self._kept()}", signum)

    def _kept(self) -> str:
        try:
            last = self._last_checkpoint() if self._last_checkpoint else None
        except Exception:  # a signal handler must raise ForcedStop, whatever a directory listing does
            last = None
        if last is not None:
            return f"the last checkpoint is {last} (continue from it with --resume)"
        if self._last_checkpoint is not None:
            return "no checkpoint was saved yet"
        return "any earlier checkpoint is kept (continue from it with --resume)"

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _first_bad_gradient(model: nn.Module) -> str:
    for name, param in model.named_parameters():
        if param.grad is not None and not torch.isfinite(param.grad).all():
            return name
    return "none found"


class Loop:
    """Runs `run_cfg.steps` optimizer steps of a `TrainSpec`, checkpointing as it goes."""

    def __init__(self, spec: TrainSpec, optim: OptimConfig, run_cfg: RunConfig, runtime: Runtime, run: Run):
        self.spec, self.optim_cfg, self.run_cfg, self.runtime, self.run = spec, optim, run_cfg, runtime, run
        self.dist = runtime.dist
        # before the optimizer: FSDP replaces the parameters with their shards
        self.parallel = parallel_for(spec.model, spec.compute_loss, runtime.dist, runtime.device, run_cfg.fsdp)
        self.optimizer = build_optimizer(spec.model, optim)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
        self.skipped = 0  # steps whose update a non-finite loss or gradient dropped (nan_policy=skip_step)
        self.step = 0
        self.weights_checked = False  # after this process's first step (and before every save)

    def train(self, resume: bool = False) -> dict:
        """The run's lifecycle once `Run.create` has made (or reopened and locked) its folder: resume from
        the newest complete checkpoint, or evaluate the starting model at step 0; then the steps, the final
        checkpoint, the spec's closing summary (`close`, on the whole model, still under the run's lock) and
        the run's finish. Returns the last step's metrics."""
        if resume:
            self.resume()
        elif self.spec.evaluate is not None and self.spec.baseline and self.run_cfg.eval_every:
            with self.parallel.full_parameters():
                self.run.log(0, {f"eval/{k}": v for k, v in self.spec.evaluate().items()})
        cfg, metrics = self.run_cfg, {}
        self.run.start_progress(cfg.steps, self.step, every=cfg.log_every)
        try:
            with StopSignals(self._newest_checkpoint) as stop:
                while self.step < cfg.steps:
                    metrics = self._train_step(stop)
        finally:
            self.run.close()
        self.save(self.run.checkpoint_path(None))
        if self.spec.close is not None:  # before finish: what it writes (train-rm's checkpoints/best) is under the lock
            with self.parallel.full_parameters():
                self.spec.close(metrics)
        self.run.finish()
        return metrics

    def _newest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, unverified (cheap enough for a signal handler's message)."""
        found = self.run.complete_checkpoints()
        return found[-1][1] if found else None

    def _train_step(self, stop: StopSignals) -> dict:
        """One step with its evaluation, logging and checkpoint; a pending stop signal ends the run here."""
        cfg = self.run_cfg
        metrics = self.optimizer_step()
        self.step += 1
        if not self.weights_checked:  # a setting that wrecks the weights shows on the first step: stop at once
            self.weights_checked = True
            self.check_weights()
        if cfg.eval_every and self.spec.evaluate and self.step % cfg.eval_every == 0:
            with self.parallel.full_parameters():
                metrics.update({f"eval/{k}": v for k, v in self.spec.evaluate().items()})
        evaluated = any(key.startswith("eval/") for key in metrics)
        if self.step % max(cfg.log_every, 1) == 0 or self.step == cfg.steps or evaluated or "skipped" in metrics:
            self.run.log(self.step, metrics)
        self.run.advance(self.step, (self.spec.status or _status)(metrics))
        if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
            self.save(self.run.checkpoint_path(self.step))
            self.run.prune(cfg.keep_checkpoints)
        if self.dist.any(stop.signum is not None):  # every rank stops after the same step
            signum = stop.signum or signal.SIGTERM
            path = self.run.checkpoint_path(self.step)
            if not path.exists():
                self.save(path)
            raise Interrupted(f"{signal.Signals(signum).name} after step {self.step}: checkpoint saved to "
                              f"{path}; continue with --resume", signum)
        return metrics

    def _micro_batches(self) -> tuple[dict, str | None]:
        """Forward and backward over `grad_accum` micro-batches -> (summed metrics, why not finite or None)."""
        accum, totals = self.optim_cfg.grad_accum, {}
        for i in range(accum):
            try:
                with self.parallel.full_parameters():  # an RL source generates with the policy
                    batch = self.spec.source.next_batch()
            except RewardContractError as err:  # a broken reward is never skipped; say when it broke
                raise RewardContractError(f"step {self.step + 1}: {err.message}") from err
            with self.parallel.sync(final=i == accum - 1):  # gradients cross ranks once per step
                with self.runtime.autocast():
                    loss, parts = self.parallel.loss(batch)
                if self.dist.any(not torch.isfinite(loss)):
                    return totals, f"loss {loss.item()} in micro-batch {i + 1} of {accum}"
                self.scaler.scale(loss / accum).backward()
            for key, value in {"loss": loss.item(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + float(value) / accum
        return totals, None

    def _not_finite(self, what: str) -> dict:
        """Drop the step's gradients; stop (nan_policy=stop) or count the skipped step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        if self.optim_cfg.nan_policy == "skip_step":
            self.run.print(f"step {self.step + 1}: non-finite {what}; update skipped (nan_policy=skip_step)")
            return {"skipped": 1, "skipped_steps": self.skipped, "lr": lr_at(self.step, self.optim_cfg,
                                                                             self.run_cfg.steps)}
        last = self.run.latest_checkpoint()
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        raise NonFinite(f"step {self.step + 1}: non-finite {what}; {kept} (continue from it with --resume, or set "
                        f"optim.nan_policy=skip_step to skip such steps)")

    def optimizer_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches -> metrics of the step."""
        model, started = self.spec.model, time.perf_counter()
        model.train()
        totals, bad = self._micro_batches()
        if bad is not None:
            return self._not_finite(bad)
        totals = self.dist.reduce_metrics(totals)  # this rank's shard -> the whole batch's figures
        self.scaler.unscale_(self.optimizer)
        clip = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        grad_norm = self.parallel.grad_norm(clip)
        if not torch.isfinite(grad_norm) and not self.scaler.is_enabled():  # fp16's scaler skips such steps itself
            return self._not_finite(f"gradient norm {grad_norm.item()} (first non-finite gradient: "
                                    f"{_first_bad_gradient(model)})")
        lr = lr_at(self.step, self.optim_cfg, self.run_cfg.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        totals.update(lr=lr, grad_norm=float(grad_norm), step_time=elapsed)
        if self.spec.step_metrics is not None:
            totals.update(self.spec.step_metrics(totals))
        if "tokens" in totals:
            totals["tokens_per_s"] = totals["tokens"] * self.optim_cfg.grad_accum / elapsed
        return totals

    def check_weights(self) -> None:
        """NonFinite when any weight is NaN or infinite: such weights are never saved or reported as done
        (skipping a step cannot help once the weights themselves are gone, whatever optim.nan_policy says)."""
        bad = next((name for name, p in self.spec.model.named_parameters() if not torch.isfinite(p).all()), None)
        if self.dist.any(bad is not None):
            last = self.run.latest_checkpoint(warn=lambda message: None)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
            raise NonFinite(f"step {self.step}: the weights are not finite ({bad or 'on another rank'}); nothing was "
                            f"saved; {kept} (lower optim.lr or check the data, then continue with --resume)")

    def save(self, directory: Path) -> None:
        """Model files + trainer_state.pt + state.json (step and each file's SHA-256), complete or absent;
        written by rank 0 alone (the data position and RNGs are the same on every rank), every rank taking
        part in FSDP's gathers. Non-finite weights are never saved (`check_weights`)."""
        self.check_weights()
        source = self.spec.source.state_dict()  # may gather across ranks: every rank calls it
        if self.parallel.sharded:
            optimizer, saving = self.parallel.full_optimizer_state(self.optimizer), self.parallel.saving()
        else:
            optimizer, saving = self.optimizer.state_dict(), contextlib.nullcontext()
        state = {"format": 1, "step": self.step, "skipped": self.skipped, "optimizer": optimizer,
                 "scaler": self.scaler.state_dict(), "source": source, "rng": rng_state()}
        if self.parallel.sharded:
            state["optimizer_by_name"] = True  # FSDP's full optimizer state is keyed by parameter name
        with saving:
            if self.dist.is_main:
                self._write_checkpoint(directory, state)
        self.dist.barrier()

    def _write_checkpoint(self, directory: Path, state: dict) -> None:
        try:
            with atomic_dir(directory) as tmp:
                self.spec.save_model(tmp)
                torch.save(state, tmp / STATE_FILE)
                record = {"step": self.step, "files": checkpoint_hashes(tmp)}  # verified on resume
                (tmp / "state.json").write_text(json.dumps(record, indent=1) + "\n")
        except OSError as err:  # disk full, read-only: say what is kept, in one line
            last = self.run.latest_checkpoint(warn=lambda message: None)
            kept = f"the last complete checkpoint {last} is kept" if last else "no checkpoint was saved yet"
            raise UserError(f"cannot write checkpoint {directory}: {err.strerror or err}; nothing half-written "
                            f"is left, {kept} (free space, then continue with --resume)") from err

    def resume(self) -> None:
        """Restore weights, optimizer, data position and RNGs from the newest complete checkpoint."""
        directory = self.run.latest_checkpoint(warn=self.run.warn)
        if directory is None:
            self.run.print(f"no complete checkpoint in {self.run.checkpoints}: starting from step 0")
            self.run.keep_metrics_until(0)
            if self.spec.on_resume is not None:
                self.spec.on_resume(0)
            return
        state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        if self.parallel.sharded:
            if not state.get("optimizer_by_name"):
                raise UserError(f"{directory} was saved without FSDP; resume it with run.fsdp=false",
                                key="run.fsdp")
            self.parallel.load_full(read_weights(directory), self.optimizer, state["optimizer"])
        elif state.get("optimizer_by_name"):
            raise UserError(f"{directory} was saved by an FSDP run; resume it with run.fsdp=true (its weights "
                            "load anywhere)", key="run.fsdp")
        else:
            try:  # a checkpoint of another model (copied in by hand) is one line, not a size-mismatch traceback
                if self.spec.restore_model is not None:
                    self.spec.restore_model(directory)
                else:
                    restore_weights(self.spec.model, directory)
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, RuntimeError, KeyError) as err:
                raise UserError(f"the checkpoint does not fit this run's model ({str(err).splitlines()[0][:200]}); "
                                "remove it, or resume with the run's own model", file=str(directory)) from None
        self.scaler.load_state_dict(state["scaler"])
        self.spec.source.load_state_dict(state["source"])
        set_rng_state(state["rng"])
        self.step, self.skipped = state["step"], state.get("skipped", 0)
        self.run.keep_metrics_until(self.step)
        if self.spec.on_resume is not None:
            self.spec.on_resume(self.step)
        self.run.print(f"resuming from {directory} (step {self.step})")


def _status(metrics: dict) -> str:
    """The progress line's tail: loss, accuracy when the trainer reports one, held-out figures, lr."""
    if "skipped" in metrics:
        return f"step skipped (non-finite; {metrics['skipped_steps']} so far)"
    parts = [f"loss {metrics['loss']:.4f}"]
    parts += [f"{key.replace('eval/', 'held-out ')} {metrics[key]:.3f}"
              for key in ("accuracy", "eval/loss", "eval/accuracy") if key in metrics]
    return "  ".join([*parts, f"lr {metrics['lr']:.2e}"])


def restore_weights(model: nn.Module, directory: Path) -> None:
    """Load model.safetensors into an existing model in place (tied lm_head may be absent)."""
    if is_adapter_dir(directory):  # a LoRA checkpoint: only the adapters were trained and saved
        load_adapter_weights(model, directory)
        return
    state = read_weights(directory)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]
    if missing or result.unexpected_keys:
        raise ValueError(f"{directory}: checkpoint does not fit the model "
                         f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
