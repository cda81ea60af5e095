"""``sep train``'s loop: the library behind it (:func:`train`), validation, distillation, stopping.

A run lives in one folder (``RUN_DIR``):

* ``last.pt``: the whole training state (a plain dict, read with
  ``torch.load(weights_only=True)``): model, optimizer, scheduler and AMP
  scaler states, torch/numpy/python RNG states, epoch, step within the epoch,
  best score, the resolved config and the recipe text. Written atomically
  every ``checkpoint_minutes`` and at the end of every epoch, so ``kill -9``
  loses at most that many minutes.
* ``best.safetensors``: the weights with the best validation SI-SNRi, in the
  registry's format (``sep separate --model RUN_DIR/best.safetensors``).
* ``log.jsonl``: one JSON line per ``log_every`` steps (``event: "train"``)
  and per validation (``event: "valid"``).
* ``config.json``: the resolved config, for people.

Exact resume: mixture ``i`` of epoch ``e`` depends only on ``(seed, e, i)``
(:mod:`sepcli.training.data`), the batch order of an epoch only on ``(seed, e)``
(:class:`torch.utils.data.DistributedSampler`), and the RNG states are
restored, so ``--resume`` continues with the very batches an uninterrupted
run would have seen. On CPU with the same thread count the losses match to
the bit.

Multi-process: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on
GPU), every epoch's items are sharded by the sampler, validation is sharded
and all-reduced, and only rank 0 writes files. ``batch_size`` is per process.

Shape legend: B batch, S sources, T samples.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sepcli import __version__, registry
from sepcli.errors import SepError
from sepcli.training.checkpoint import (
    BEST,
    CHECKPOINT_FORMAT,
    CONFIG,
    LAST,
    LOG,
    RECIPE,
    _atomic_write_bytes,
    _rng_state,
    _set_rng_state,
    _trim_log,
    _write_json,
    load_checkpoint,
    open_run_dir,
)
from sepcli.training.config import (
    RESUMABLE_KEYS,
    TrainConfig,
    TrainResult,
    _check_config,
    make_config,
    parse_set,
    read_recipe,
    resumed_config,
)
from sepcli.training.datasets import _ListSampler, build_datasets, epoch_indices
from sepcli.training.distributed import _any_rank, _Dist, _init_distributed, _pick_device
from sepcli.training.progress import _hms, _Progress
from sepcli.training.teacher import WAVEFORM_FAMILIES, _LossModule, load_teacher  # noqa: F401
from sepcli.training.validation import validate

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 20  # consecutive non-finite gradients before a run is declared diverged
NORM_MIXTURES = 200  # training mixtures used by models that fit input statistics

__all__ = ["train", "validate", "load_teacher", "TrainConfig", "TrainResult", "make_config", "parse_set",
           "read_recipe", "build_datasets", "epoch_indices", "load_checkpoint", "RESUMABLE_KEYS"]

# ----------------------------------------------------------------------------- training


class _StopSignal:
    """First SIGINT/SIGTERM: finish the step, checkpoint, stop. Second: stop now."""

    def __init__(self) -> None:
        self.flag = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        log.warning("stopping after this step (signal %d); send it again to stop at once", signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(
    config: TrainConfig | None,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overrides: dict | None = None,
    recipe_text: str = "",
    init: str | os.PathLike | None = None,
    device: str | None = None,
    threads: int | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a model; the library behind ``sep train``.

    Args:
        config: the run's settings (None when resuming).
        out: the run folder (see the module docstring for what it holds).
        resume: continue the run in ``out`` from ``last.pt``; ``config`` must be
            None and ``overrides`` may only change :data:`RESUMABLE_KEYS`.
        overrides: settings to change on resume.
        recipe_text: the recipe's TOML, stored with the checkpoints.
        init: start from the weights of a ``.safetensors`` model (fine-tuning).
        device: ``cpu``, ``cuda``, ``cuda:1``...; default CUDA when available.
        threads: torch intra-op threads for this process.
        max_steps: stop (with a checkpoint) once this many optimizer steps are done in total.
        max_minutes: stop (with a checkpoint) after this many minutes of this call.
        force: start over in a folder that already holds a run.
        progress: show progress on stderr (rich on a terminal, log lines otherwise).
    """
    t_call = time.monotonic()
    out = Path(out)
    d = _init_distributed(device)
    pkg_log = logging.getLogger("sepcli")
    level = pkg_log.level
    if not d.main:
        pkg_log.setLevel(max(level, logging.WARNING))  # one copy of the progress lines, from rank 0
    finished = False
    try:
        result = _train(config, out, d, t_call, resume=resume, overrides=overrides or {},
                        recipe_text=recipe_text, init=init, device=device, threads=threads,
                        max_steps=max_steps, max_minutes=max_minutes, force=force, progress=progress)
        finished = True
        return result
    finally:
        pkg_log.setLevel(level)
        if d.owned and dist.is_initialized():
            if finished:
                # Rank 0 still writes the last checkpoint after the others are done; a rank that
                # tears its gloo connections down meanwhile can abort rank 0 (SIGABRT seen in CI).
                # After an error the peers may never arrive, so only a clean finish waits.
                dist.barrier()
            dist.destroy_process_group()


def _train(config, out, d: _Dist, t_call: float, *, resume, overrides, recipe_text, init, device,
           threads, max_steps, max_minutes, force, progress) -> TrainResult:
    if threads is not None:
        if threads < 1:
            raise SepError(f"threads must be positive, got {threads}")
        torch.set_num_threads(int(threads))
    dev = _pick_device(device, d)
    ckpt = open_run_dir(out, resume, force, d)
    if resume:
        assert ckpt is not None
        if config is not None:
            raise SepError("resume takes its settings from the checkpoint; do not pass a config")
        cfg = resumed_config(ckpt, overrides)
        recipe_text = ckpt.get("recipe", "")
        if ckpt.get("world_size", 1) != d.world:
            log.warning(
                "resuming a %d-process run with %d processes: batches will differ from an "
                "uninterrupted run", ckpt.get("world_size", 1), d.world,
            )
    else:
        if config is None:
            raise SepError("no training config given")
        cfg = dataclasses.replace(config, model=dict(config.model))  # the caller's stays as it was
        _check_config(cfg)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)

    model = _build_model(cfg, init if ckpt is None else None, dev)
    teacher, teacher_sha = None, None
    if cfg.teacher is not None:
        teacher, teacher_sha = load_teacher(cfg.teacher, model, cfg.family, dev)
        if ckpt is not None and ckpt.get("teacher_sha256") not in (None, teacher_sha):
            raise SepError(f"teacher {cfg.teacher} changed since the run started (SHA-256 differs); "
                           "restore it to resume")
        log.info("distilling from %s (weight %g)", cfg.teacher, cfg.distill_weight)

    train_set, valid_set, valid_fixed = build_datasets(cfg, int(model.config.sample_rate),
                                                       int(model.config.n_src))
    if ckpt is None and init is None and hasattr(model, "fit_normalization"):
        # Models with input statistics (deep clustering's feature mean/std) learn
        # them once from training mixtures; a fixed slice keeps it reproducible.
        n_fit = min(NORM_MIXTURES, len(train_set))
        train_set.set_epoch(0)
        frames = model.fit_normalization(train_set[i][0].to(dev) for i in range(n_fit))
        log.info("input normalisation fitted on %d mixtures (%d frames)", n_fit, frames)

    session = _Session(cfg, model, out, d, dev, recipe_text=recipe_text, teacher=teacher,
                       teacher_sha=teacher_sha, ckpt=ckpt)
    session.datasets(train_set, valid_set, valid_fixed)
    return session.run(t_call, max_steps=max_steps, max_minutes=max_minutes, progress=progress)


def _build_model(cfg: TrainConfig, init: str | os.PathLike | None, dev: torch.device) -> nn.Module:
    """The model of ``cfg`` on ``dev``; with ``init`` (a new run only) its weights
    from that file, whose config is the base of ``cfg.model``. Spells every default
    of the model's config out in ``cfg.model``, for the checkpoint."""
    init_tensors = None
    if init is not None:
        init = registry.model_file(init)
        meta, init_tensors = registry.read_checkpoint(init)
        if meta.get("family") != cfg.family:
            raise SepError(f"--init {init}: a {meta.get('family')!r} model, but this run trains {cfg.family!r}")
        cfg.model = {**json.loads(meta["config"]), **cfg.model}
    if registry.combines_members(cfg.family):
        raise SepError(f"{cfg.family!r} averages trained models and is not trained itself: train its members")
    model = registry.build(cfg.family, cfg.model)
    cfg.model = dataclasses.asdict(model.config)
    if init_tensors is not None:
        try:
            model.load_state_dict(init_tensors, strict=True)
        except RuntimeError as exc:
            raise SepError(f"--init {init}: weights do not fit this run's model config: {exc}") from None
        log.info("initialised from %s", init)
    model.to(dev)
    if cfg.speaker_counts is not None and not model.accepts_silent_sources:
        raise SepError(
            f"speaker_counts needs a model whose loss takes silent references (dpcl); {cfg.family} does not"
        )
    return model


def _amp_dtypes(cfg: TrainConfig, dev: torch.device) -> tuple[bool, torch.dtype | None, torch.dtype | None]:
    """(autocast on, its dtype in training, its dtype in validation). Validation on
    the CPU stays float32, so scores compare across a run."""
    if bool(cfg.amp) and dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return True, dtype, dtype
    if cfg.amp_cpu and dev.type == "cpu":
        from sepcli.engine import native_bfloat16

        if native_bfloat16():
            return True, torch.bfloat16, None
        log.warning("amp_cpu: this CPU has no native bfloat16 products (AVX512-BF16/AMX); "
                    "training in float32")
    return False, None, None


class _Session:
    """One call of :func:`train`: the optimiser, scheduler and AMP scaler, the
    counters a checkpoint restores, and the epoch loop with its stops."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, out: Path, d: _Dist, dev: torch.device, *,
                 recipe_text: str, teacher: nn.Module | None, teacher_sha: str | None,
                 ckpt: dict | None) -> None:
        self.cfg, self.model, self.out, self.d, self.dev = cfg, model, out, d, dev
        self.recipe_text, self.teacher_sha = recipe_text, teacher_sha
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.patience,
            threshold=0.0, threshold_mode="abs",  # "improved" means the same as for best.safetensors
        )
        self.use_amp, self.amp_dtype, self.valid_amp_dtype = _amp_dtypes(cfg, dev)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs, self.elapsed, self.bad_steps = 0, 0.0, 0
        if ckpt is not None:
            self._restore(ckpt)
        if d.main and ckpt is None:
            _write_json(out / CONFIG, {"sep_version": __version__, **cfg.to_dict()})
            if recipe_text:
                _atomic_write_bytes(out / RECIPE, lambda f: f.write(recipe_text.encode()))
        wrapped: nn.Module = _LossModule(model, teacher, cfg.distill_weight)
        if d.world > 1:
            # static_graph: some weights never get gradients (Conv-TasNet's last
            # residual output feeds nothing); the graph is the same every step.
            wrapped = nn.parallel.DistributedDataParallel(
                wrapped, device_ids=[dev.index] if dev.type == "cuda" else None, static_graph=True
            )
        if cfg.compile:
            # Fuses the element-wise work around the convolutions (norms, PReLU,
            # masks) into generated kernels: faster Conv-TasNet training steps
            # on CPU (docs/training.md), after a minute or two of compiling. The saved state is the
            # plain model's, so checkpoints do not depend on it.
            wrapped = torch.compile(wrapped)
        self.wrapped = wrapped
        model.train()
        self.loader_gen = torch.Generator()  # keeps DataLoader from drawing on the global RNG
        self.last_ckpt = time.monotonic()
        self.t_session = time.monotonic()

    def _restore(self, ckpt: dict) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise SepError(f"{self.out / LAST}: checkpoint does not fit its own config: {exc}") from None
        self.epoch, self.step_in_epoch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        self.global_step = int(ckpt["global_step"])
        self.best = ckpt.get("best")
        self.best_epoch = ckpt.get("best_epoch")
        self.bad_epochs = int(ckpt.get("bad_epochs", 0))
        self.elapsed = float(ckpt.get("elapsed", 0.0))
        _set_rng_state(ckpt["rng"])
        if self.d.main:
            _trim_log(self.out / LOG, self.global_step, self.epoch)
        log.info("resuming %s at epoch %d, step %d (global step %d)",
                 self.out, self.epoch, self.step_in_epoch, self.global_step)

    def datasets(self, train_set: Any, valid_set: Any, valid_fixed: bool) -> None:
        """The run's data (:func:`build_datasets`), and the steps of an epoch they make."""
        self.train_set, self.valid_set, self.valid_fixed = train_set, valid_set, valid_fixed
        per_step = self.cfg.batch_size * self.d.world
        self.steps_per_epoch = len(train_set) // per_step
        if self.steps_per_epoch < 1:
            raise SepError(
                f"an epoch of {len(train_set)} mixtures is smaller than one step "
                f"({self.cfg.batch_size} per process x {self.d.world} process(es))"
            )
        self.step_seconds = self.cfg.segment * per_step  # audio seconds consumed by one step, all ranks

    # -------------------------------------------------------------- stops and files

    def write_log(self, rec: dict) -> None:
        if self.log_file is not None:
            self.log_file.write(json.dumps(rec) + "\n")
            self.log_file.flush()

    def save_last(self) -> None:
        self.last_ckpt = time.monotonic()
        if not self.d.main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "sep_version": __version__,
            "config": self.cfg.to_dict(),
            "recipe": self.recipe_text,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": _rng_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "elapsed": self.elapsed + (time.monotonic() - self.t_session),
            "world_size": self.d.world,
            "teacher_sha256": self.teacher_sha,
        }
        _atomic_write_bytes(self.out / LAST, lambda f: torch.save(state, f))

    def synced_stop(self) -> str | None:
        """Why to stop now (None: go on), the same on every rank."""
        why = None
        if self.stop.flag:
            why = "interrupted"
        elif self.max_steps is not None and self.global_step >= self.max_steps:
            why = "max_steps"
        elif self.max_minutes is not None and time.monotonic() - self.t_call >= self.max_minutes * 60:
            why = "max_minutes"
        if _any_rank(why is not None, self.d, self.dev):
            return why or "interrupted"
        return None

    # -------------------------------------------------------------- the loop

    def run(self, t_call: float, *, max_steps: int | None, max_minutes: float | None,
            progress: bool) -> TrainResult:
        """Epochs until ``max_epochs``, early stopping, a limit or a signal; checkpoints on the way."""
        cfg = self.cfg
        self.t_call, self.max_steps, self.max_minutes = t_call, max_steps, max_minutes
        self.log_file = (self.out / LOG).open("a") if self.d.main else None
        self.display = _Progress(progress and self.d.main, self.steps_per_epoch)
        reason = "finished"
        self.t_session = time.monotonic()
        try:
            with _StopSignal() as self.stop:
                stopped = self.synced_stop()
                if cfg.early_stop and self.bad_epochs >= cfg.early_stop:
                    reason, stopped = "early_stop", None  # resuming a run that had stopped early
                while reason == "finished" and stopped is None and self.epoch < cfg.max_epochs:
                    stopped = self._train_epoch()
                    if stopped:
                        break
                    if self._end_epoch():
                        reason = "early_stop"
                        log.info("early stop: no improvement for %d epochs", self.bad_epochs)
                        break
                    stopped = self.synced_stop()
                if stopped:
                    reason = stopped
                    self.save_last()
        finally:
            self.display.close()
            if self.log_file is not None:
                self.log_file.close()
        total_elapsed = self.elapsed + (time.monotonic() - self.t_session)
        return TrainResult(
            run_dir=self.out, reason=reason, epoch=self.epoch, step=self.global_step,
            best_si_snri=self.best, best_epoch=self.best_epoch,
            best_path=(self.out / BEST) if self.best is not None else None, elapsed=total_elapsed,
        )

    def _train_epoch(self) -> str | None:
        """The rest of the current epoch's steps; why it stopped early, or None."""
        cfg, d = self.cfg, self.d
        self.train_set.set_epoch(self.epoch)
        indices = epoch_indices(len(self.train_set), self.epoch, cfg.seed, d.world, d.rank)
        indices = indices[: self.steps_per_epoch * cfg.batch_size][self.step_in_epoch * cfg.batch_size :]
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=_ListSampler(indices),
            num_workers=cfg.workers, drop_last=True, generator=self.loader_gen,
            pin_memory=self.dev.type == "cuda",
        )
        self.display.epoch(self.epoch, self.step_in_epoch)
        win_loss, win_n, win_t = 0.0, 0, time.monotonic()
        for mix, ref in loader:
            stopped = self.synced_stop()
            if stopped:
                return stopped
            win_loss += self._step(mix, ref)
            win_n += 1
            if self.step_in_epoch % cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                now = time.monotonic()
                self._log_steps(win_loss / win_n, self.step_seconds * win_n / max(now - win_t, 1e-9), now)
                win_loss, win_n, win_t = 0.0, 0, now
            else:
                self.display.step(self.step_in_epoch)
            if time.monotonic() - self.last_ckpt >= cfg.checkpoint_minutes * 60:
                self.save_last()
        return None

    def _step(self, mix: torch.Tensor, ref: torch.Tensor) -> float:
        """One optimizer step on a batch; its loss. Shape: mix [B, T], ref [B, S, T]."""
        mix = mix.to(self.dev, non_blocking=True)  # [B, T]
        ref = ref.to(self.dev, non_blocking=True)  # [B, S, T]
        optimizer, scaler = self.optimizer, self.scaler
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.dev.type, dtype=self.amp_dtype or torch.float32, enabled=self.use_amp):
            loss = self.wrapped(mix, ref)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        clip = self.cfg.clip if self.cfg.clip > 0 else float("inf")
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if torch.isfinite(norm) or scaler.is_enabled():
            scaler.step(optimizer)  # the scaler itself skips non-finite steps
            self.bad_steps = 0
        else:
            # Identical on every rank: gradients are already all-reduced.
            self.bad_steps += 1
            log.warning("step %d: non-finite gradient, update skipped", self.global_step + 1)
            if self.bad_steps >= MAX_BAD_STEPS:
                raise SepError(
                    f"training diverged: {self.bad_steps} steps in a row with non-finite gradients; "
                    f"start a new run from {self.out / BEST} (--init) with a lower --lr"
                )
        scaler.update()
        self.step_in_epoch += 1
        self.global_step += 1
        return float(loss.detach())

    def _log_steps(self, mean_loss: float, speed: float, now: float) -> None:
        """A ``train`` line in log.jsonl and on the display (``speed``: audio s/s)."""
        lr = self.optimizer.param_groups[0]["lr"]
        total = self.elapsed + (now - self.t_session)
        eta = (self.steps_per_epoch - self.step_in_epoch) * self.step_seconds / speed
        self.write_log({
            "event": "train", "step": self.global_step, "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch, "loss": mean_loss, "lr": lr,
            "audio_sec_per_sec": speed, "elapsed": total,
        })
        self.display.step(
            self.step_in_epoch, mean_loss, speed,
            f"epoch {self.epoch} step {self.step_in_epoch}/{self.steps_per_epoch} loss {mean_loss:.4f} "
            f"lr {lr:.2e} val {self.display.val} audio {speed:.1f} s/s "
            f"elapsed {_hms(total)} epoch ETA {_hms(eta)}",
        )

    def _end_epoch(self) -> bool:
        """Validate (sharded over ranks), schedule, export, checkpoint; True: stop early."""
        cfg, d, model, epoch = self.cfg, self.d, self.model, self.epoch
        shard = list(range(d.rank, len(self.valid_set), d.world))
        total_db, count = validate(
            model, self.valid_set, batch_size=cfg.valid_batch_size if self.valid_fixed else 1,
            device=self.dev, amp_dtype=self.valid_amp_dtype, indices=shard,
        )
        if d.world > 1:
            t = torch.tensor([total_db, float(count)], dtype=torch.float64, device=self.dev)
            dist.all_reduce(t)
            total_db, count = float(t[0]), int(t[1])
        score = total_db / max(count, 1)
        self.scheduler.step(score)
        if self.best is None or score > self.best:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            if d.main:
                # force: this run's own best model, replaced as it improves.
                registry.save_model(model, self.out / BEST, force=True, extra={
                    "val_si_snri": f"{score:.4f}", "epoch": str(epoch),
                    "step": str(self.global_step), "train_config": json.dumps(cfg.to_dict()),
                })
        else:
            self.bad_epochs += 1
        if cfg.keep_epochs and d.main:
            registry.save_model(model, self.out / f"epoch{epoch}.safetensors", force=True, extra={
                "val_si_snri": f"{score:.4f}", "epoch": str(epoch), "step": str(self.global_step),
            })
        self.write_log({
            "event": "valid", "step": self.global_step, "epoch": epoch, "val_si_snri": score,
            "best": self.best, "lr": self.optimizer.param_groups[0]["lr"],
            "elapsed": self.elapsed + (time.monotonic() - self.t_session),
        })
        self.display.valid(score, f"epoch {epoch}: validation SI-SNRi {score:.2f} dB "
                                  f"(best {self.best:.2f} dB at epoch {self.best_epoch})")
        self.epoch += 1
        self.step_in_epoch = 0
        self.save_last()
        return bool(cfg.early_stop and self.bad_epochs >= cfg.early_stop)
