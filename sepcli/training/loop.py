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
from sepcli.losses import distillation_loss
from sepcli.training.checkpoint import (
    BEST,
    CHECKPOINT_FORMAT,
    CONFIG,
    LAST,
    LOG,
    RECIPE,
    _atomic_write_bytes,
    _prepare_run_dir,
    _rng_state,
    _set_rng_state,
    _trim_log,
    _write_json,
    load_checkpoint,
)
from sepcli.training.config import (
    PATH_KEYS,
    RESUMABLE_KEYS,
    TrainConfig,
    TrainResult,
    _abs_path,
    _check_config,
    make_config,
    parse_set,
    read_recipe,
)
from sepcli.training.datasets import _ListSampler, build_datasets, epoch_indices
from sepcli.training.distributed import _any_rank, _broadcast, _Dist, _init_distributed, _pick_device
from sepcli.training.progress import _hms, _Progress
from sepcli.training.validation import validate

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 20  # consecutive non-finite gradients before a run is declared diverged
NORM_MIXTURES = 200  # training mixtures used by models that fit input statistics
WAVEFORM_FAMILIES = ("convtasnet", "lstm-tasnet", "upit-lstm")  # forward(mix) gives waveforms: they can teach or learn from one

__all__ = ["train", "validate", "load_teacher", "TrainConfig", "TrainResult", "make_config", "parse_set",
           "read_recipe", "build_datasets", "epoch_indices", "load_checkpoint", "RESUMABLE_KEYS"]

# ----------------------------------------------------------------------------- training


class _LossModule(nn.Module):
    """DDP only synchronises gradients through ``forward``; this routes
    ``compute_loss`` through it, and adds the distillation term when a teacher
    is given (see :func:`sepcli.losses.distillation_loss`)."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None = None, weight: float = 0.5) -> None:
        super().__init__()
        self.model = model
        # Not a submodule: DDP, state_dict and the optimiser must not see it.
        self._teacher = [teacher] if teacher is not None else []
        self.weight = float(weight)

    def forward(self, mix: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if not self._teacher:
            return self.model.compute_loss(mix, ref)
        with torch.no_grad():
            target = self._teacher[0](mix)  # [B, S, T]
        return distillation_loss(self.model(mix), ref, target, self.weight)


def load_teacher(path: str, model: nn.Module, family: str, device: torch.device) -> tuple[nn.Module, str]:
    """The frozen teacher for distillation, and its file's SHA-256.

    Both models must map a mixture to waveforms ([B, T] -> [B, S, T]) with the
    same number of speakers and sample rate.
    """
    teacher = registry.load_model(path, device)
    for who, fam in (("student", family), ("teacher", teacher.family)):
        if fam not in WAVEFORM_FAMILIES:
            raise SepError(f"distillation needs waveform models ({', '.join(WAVEFORM_FAMILIES)}); "
                           f"the {who} is {fam!r}")
    for key in ("n_src", "sample_rate"):
        a, b = getattr(model.config, key), getattr(teacher.config, key)
        if a != b:
            raise SepError(f"teacher {path}: {key} is {b}, but the model being trained has {a}")
    teacher.eval().requires_grad_(False)
    return teacher, registry.file_sha256(path)


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

    # Rank 0 checks the folder and reads the checkpoint; every rank gets the verdict.
    payload: tuple[str | None, dict | None]
    if d.main:
        try:
            payload = (None, _prepare_run_dir(out, resume, force))
        except SepError as exc:
            payload = (str(exc), None)
    else:
        payload = (None, None)
    payload = _broadcast(payload, d)
    if payload[0] is not None:
        raise SepError(payload[0])
    ckpt = payload[1]

    if resume:
        assert ckpt is not None
        if config is not None:
            raise SepError("resume takes its settings from the checkpoint; do not pass a config")
        saved = dict(ckpt["config"])
        for key, value in overrides.items():
            if key in PATH_KEYS and isinstance(value, str):
                value = _abs_path(value)
            if key == "model" and isinstance(value, dict):
                changed = {k: v for k, v in value.items() if saved["model"].get(k) != v}
                if changed:
                    raise SepError(f"cannot change the model ({', '.join(changed)}) when resuming")
            elif key in RESUMABLE_KEYS:
                saved[key] = value
            elif saved.get(key) != value:
                raise SepError(
                    f"cannot change {key!r} when resuming (checkpoint has {saved.get(key)!r}); "
                    f"settings you may change: {', '.join(sorted(RESUMABLE_KEYS))}"
                )
        cfg = make_config(saved)
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

    # Model. With --init the file's config is the base, so fine-tuning needs no model settings.
    init_tensors = None
    if init is not None and ckpt is None:
        shipped = registry.shipped_models()
        if str(init) in shipped and not Path(init).exists():
            init = shipped[str(init)]["path"]
        meta, init_tensors = registry.read_checkpoint(init)
        if meta.get("family") != cfg.family:
            raise SepError(f"--init {init}: a {meta.get('family')!r} model, but this run trains {cfg.family!r}")
        cfg.model = {**json.loads(meta["config"]), **cfg.model}
    model = registry.build(cfg.family, cfg.model)
    cfg.model = dataclasses.asdict(model.config)  # every default spelled out in the checkpoint
    if init_tensors is not None:
        try:
            model.load_state_dict(init_tensors, strict=True)
        except RuntimeError as exc:
            raise SepError(f"--init {init}: weights do not fit this run's model config: {exc}") from None
        log.info("initialised from %s", init)
    model.to(dev)
    sample_rate, n_src = int(model.config.sample_rate), int(model.config.n_src)
    if cfg.speaker_counts is not None and not getattr(model, "accepts_silent_sources", False):
        raise SepError(
            f"speaker_counts needs a model whose loss takes silent references (dpcl); {cfg.family} does not"
        )

    teacher, teacher_sha = None, None
    if cfg.teacher is not None:
        teacher, teacher_sha = load_teacher(cfg.teacher, model, cfg.family, dev)
        if ckpt is not None and ckpt.get("teacher_sha256") not in (None, teacher_sha):
            raise SepError(f"teacher {cfg.teacher} changed since the run started (SHA-256 differs); "
                           "restore it to resume")
        log.info("distilling from %s (weight %g)", cfg.teacher, cfg.distill_weight)

    train_set, valid_set, valid_fixed = build_datasets(cfg, sample_rate, n_src)

    if ckpt is None and init is None and hasattr(model, "fit_normalization"):
        # Models with input statistics (deep clustering's feature mean/std) learn
        # them once from training mixtures; a fixed slice keeps it reproducible.
        n_fit = min(NORM_MIXTURES, len(train_set))
        train_set.set_epoch(0)
        frames = model.fit_normalization(train_set[i][0].to(dev) for i in range(n_fit))
        log.info("input normalisation fitted on %d mixtures (%d frames)", n_fit, frames)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.patience,
        threshold=0.0, threshold_mode="abs",  # "improved" means the same as for best.safetensors
    )
    use_amp = bool(cfg.amp) and dev.type == "cuda"
    amp_dtype = None
    valid_amp_dtype = None  # validation on CPU stays float32, so scores compare across a run
    if use_amp:
        amp_dtype = valid_amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif cfg.amp_cpu and dev.type == "cpu":
        from sepcli.engine import native_bfloat16

        if native_bfloat16():
            use_amp, amp_dtype = True, torch.bfloat16
        else:
            log.warning("amp_cpu: this CPU has no native bfloat16 products (AVX512-BF16/AMX); "
                        "training in float32")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    epoch, step_in_epoch, global_step = 0, 0, 0
    best, best_epoch, bad_epochs, elapsed = None, None, 0, 0.0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise SepError(f"{out / LAST}: checkpoint does not fit its own config: {exc}") from None
        epoch, step_in_epoch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        global_step = int(ckpt["global_step"])
        best = ckpt.get("best")
        best_epoch = ckpt.get("best_epoch")
        bad_epochs = int(ckpt.get("bad_epochs", 0))
        elapsed = float(ckpt.get("elapsed", 0.0))
        _set_rng_state(ckpt["rng"])
        if d.main:
            _trim_log(out / LOG, global_step, epoch)
        log.info("resuming %s at epoch %d, step %d (global step %d)", out, epoch, step_in_epoch, global_step)

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
    model.train()

    per_step = cfg.batch_size * d.world
    steps_per_epoch = len(train_set) // per_step
    if steps_per_epoch < 1:
        raise SepError(
            f"an epoch of {len(train_set)} mixtures is smaller than one step "
            f"({cfg.batch_size} per process x {d.world} process(es))"
        )
    step_seconds = cfg.segment * per_step  # audio seconds consumed by one step, all ranks
    loader_gen = torch.Generator()  # keeps DataLoader from drawing on the global RNG
    log_file = (out / LOG).open("a") if d.main else None
    display = _Progress(progress and d.main, steps_per_epoch)
    last_ckpt = time.monotonic()
    reason = "finished"
    bad_steps = 0

    def write_log(rec: dict) -> None:
        if log_file is not None:
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()

    def save_last() -> None:
        nonlocal last_ckpt
        last_ckpt = time.monotonic()
        if not d.main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "sep_version": __version__,
            "config": cfg.to_dict(),
            "recipe": recipe_text,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": _rng_state(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "best": best,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "elapsed": elapsed + (time.monotonic() - t_session),
            "world_size": d.world,
            "teacher_sha256": teacher_sha,
        }
        _atomic_write_bytes(out / LAST, lambda f: torch.save(state, f))

    def should_stop() -> str | None:
        if stop.flag:
            return "interrupted"
        if max_steps is not None and global_step >= max_steps:
            return "max_steps"
        if max_minutes is not None and time.monotonic() - t_call >= max_minutes * 60:
            return "max_minutes"
        return None

    def synced_stop() -> str | None:
        why = should_stop()
        if _any_rank(why is not None, d, dev):
            return why or "interrupted"
        return None

    t_session = time.monotonic()
    try:
        with _StopSignal() as stop:
            stopped = synced_stop()
            if cfg.early_stop and bad_epochs >= cfg.early_stop:
                reason, stopped = "early_stop", None  # resuming a run that had stopped early
            while reason == "finished" and stopped is None and epoch < cfg.max_epochs:
                train_set.set_epoch(epoch)
                indices = epoch_indices(len(train_set), epoch, cfg.seed, d.world, d.rank)
                indices = indices[: steps_per_epoch * cfg.batch_size][step_in_epoch * cfg.batch_size :]
                loader = torch.utils.data.DataLoader(
                    train_set, batch_size=cfg.batch_size, sampler=_ListSampler(indices),
                    num_workers=cfg.workers, drop_last=True, generator=loader_gen,
                    pin_memory=dev.type == "cuda",
                )
                display.epoch(epoch, step_in_epoch)
                win_loss, win_n, win_t = 0.0, 0, time.monotonic()
                for mix, ref in loader:
                    stopped = synced_stop()
                    if stopped:
                        break
                    mix = mix.to(dev, non_blocking=True)  # [B, T]
                    ref = ref.to(dev, non_blocking=True)  # [B, S, T]
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                        loss = wrapped(mix, ref)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    norm = nn.utils.clip_grad_norm_(
                        model.parameters(), cfg.clip if cfg.clip > 0 else float("inf")
                    )
                    if torch.isfinite(norm) or scaler.is_enabled():
                        scaler.step(optimizer)  # the scaler itself skips non-finite steps
                        bad_steps = 0
                    else:
                        # Identical on every rank: gradients are already all-reduced.
                        bad_steps += 1
                        log.warning("step %d: non-finite gradient, update skipped", global_step + 1)
                        if bad_steps >= MAX_BAD_STEPS:
                            raise SepError(
                                f"training diverged: {bad_steps} steps in a row with non-finite gradients; "
                                f"start a new run from {out / BEST} (--init) with a lower --lr"
                            )
                    scaler.update()
                    step_in_epoch += 1
                    global_step += 1
                    win_loss += float(loss.detach())
                    win_n += 1
                    if step_in_epoch % cfg.log_every == 0 or step_in_epoch == steps_per_epoch:
                        now = time.monotonic()
                        speed = step_seconds * win_n / max(now - win_t, 1e-9)
                        mean_loss = win_loss / win_n
                        lr = optimizer.param_groups[0]["lr"]
                        total = elapsed + (now - t_session)
                        eta = (steps_per_epoch - step_in_epoch) * step_seconds / speed
                        write_log({
                            "event": "train", "step": global_step, "epoch": epoch,
                            "step_in_epoch": step_in_epoch, "loss": mean_loss, "lr": lr,
                            "audio_sec_per_sec": speed, "elapsed": total,
                        })
                        display.step(
                            step_in_epoch, mean_loss, speed,
                            f"epoch {epoch} step {step_in_epoch}/{steps_per_epoch} loss {mean_loss:.4f} "
                            f"lr {lr:.2e} val {display.val} audio {speed:.1f} s/s "
                            f"elapsed {_hms(total)} epoch ETA {_hms(eta)}",
                        )
                        win_loss, win_n, win_t = 0.0, 0, now
                    else:
                        display.step(step_in_epoch)
                    if time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60:
                        save_last()
                if stopped:
                    break

                # End of epoch: validate (sharded over ranks), schedule, checkpoint.
                shard = list(range(d.rank, len(valid_set), d.world))
                total_db, count = validate(
                    model, valid_set, batch_size=cfg.valid_batch_size if valid_fixed else 1,
                    device=dev, amp_dtype=valid_amp_dtype, indices=shard,
                )
                if d.world > 1:
                    t = torch.tensor([total_db, float(count)], dtype=torch.float64, device=dev)
                    dist.all_reduce(t)
                    total_db, count = float(t[0]), int(t[1])
                score = total_db / max(count, 1)
                scheduler.step(score)
                improved = best is None or score > best
                if improved:
                    best, best_epoch, bad_epochs = score, epoch, 0
                    if d.main:
                        # force: this run's own best model, replaced as it improves.
                        registry.save_model(model, out / BEST, force=True, extra={
                            "val_si_snri": f"{score:.4f}", "epoch": str(epoch),
                            "step": str(global_step), "train_config": json.dumps(cfg.to_dict()),
                        })
                else:
                    bad_epochs += 1
                if cfg.keep_epochs and d.main:
                    registry.save_model(model, out / f"epoch{epoch}.safetensors", force=True, extra={
                        "val_si_snri": f"{score:.4f}", "epoch": str(epoch), "step": str(global_step),
                    })
                now = time.monotonic()
                write_log({
                    "event": "valid", "step": global_step, "epoch": epoch, "val_si_snri": score,
                    "best": best, "lr": optimizer.param_groups[0]["lr"],
                    "elapsed": elapsed + (now - t_session),
                })
                display.valid(score, f"epoch {epoch}: validation SI-SNRi {score:.2f} dB "
                                     f"(best {best:.2f} dB at epoch {best_epoch})")
                epoch += 1
                step_in_epoch = 0
                save_last()
                if cfg.early_stop and bad_epochs >= cfg.early_stop:
                    reason = "early_stop"
                    log.info("early stop: no improvement for %d epochs", bad_epochs)
                    break
                stopped = synced_stop()
            if stopped:
                reason = stopped
                save_last()
    finally:
        display.close()
        if log_file is not None:
            log_file.close()
    total_elapsed = elapsed + (time.monotonic() - t_session)
    return TrainResult(
        run_dir=out, reason=reason, epoch=epoch, step=global_step,
        best_si_snri=best, best_epoch=best_epoch,
        best_path=(out / BEST) if best is not None else None, elapsed=total_elapsed,
    )

