"""The training loop behind ``isnet train`` and ``isnet train-gt-encoder``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from isnet.build_in.ops import Normalize, Preprocessor, resolve_process_ops
from isnet.core import IsnetError, write_text_atomic
from isnet.eval import ecssd_pairs
from isnet.export.model import ISNet, ISNetGTEncoder
from isnet.export.weights import (init_from_onnx, load_folded_convolutions, load_gt_encoder, load_isnet_weights,
                                  read_checkpoint, read_checkpoint_arch, read_isnet_onnx, save_checkpoint)
from isnet.tools.train.checkpoints import check_resumable, read_training_state
from isnet.tools.train.config import (MIN_LR_RATIO, HISTORY, LAST_CHECKPOINT, MODEL_FILES, Augment, TrainingPrecision, Task,
                                      TrainConfig, TrainEvent, TrainResult)
from isnet.tools.train.data import (EpochSampler, LoadFailure, PairDataset, collate, data_digest, deploy_preprocessor,
                                    worker_init)
from isnet.tools.train.losses import gt_encoder_loss, isnet_loss
from isnet.tools.train.validation import validate


def input_affine(ours: Preprocessor, theirs_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel turning an input made by ``ours`` into one made by ``theirs_name``."""
    def normalize(pre: Preprocessor) -> Normalize:
        found = [op for op in pre.ops if isinstance(op, Normalize)]
        if len(found) != 1:
            raise IsnetError("--init-preprocess: both pre-processings need exactly one Normalize op")
        return found[0]

    theirs = Preprocessor.from_specs(resolve_process_ops(theirs_name, where="--init-preprocess"))
    a, b = normalize(ours), normalize(theirs)
    scale_a, mean_a, std_a = np.float64(a.scale), np.array(a.mean), np.array(a.std)
    scale_b, mean_b, std_b = np.float64(b.scale), np.array(b.mean), np.array(b.std)
    # pixel = (ours * std_a + mean_a) / scale_a, theirs = (pixel * scale_b - mean_b) / std_b
    ratio = scale_b / scale_a
    return std_a * ratio / std_b, (mean_a * ratio - mean_b) / std_b


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to the peak, then a cosine down to ``MIN_LR_RATIO`` of it at the last step."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_isnet(config: TrainConfig, progress: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train ISNet (deep supervision, plus feature synchronisation with ``config.gt_encoder``).

    Writes ``last.pth`` (resumable), ``history.json`` and, at the end, ``model.pth`` (weights with
    their architecture, loadable by ``isnet.export.weights.build_isnet`` and every ``isnet`` command)
    into ``config.output_dir``.
    """
    return _train(Task.ISNET, config, progress)


def train_gt_encoder(config: TrainConfig, progress: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train the GT encoder to reproduce masks (BCE on its six sides); only ``mask/`` is read.

    Writes ``last.pth``, ``history.json`` and ``gt-encoder.pth`` (for ``train_isnet``'s
    ``gt_encoder``) into ``config.output_dir``.
    """
    if config.gt_encoder is not None or config.init_weights is not None:
        raise IsnetError("the GT encoder trains from scratch: gt_encoder and init_weights do not apply")
    return _train(Task.GT_ENCODER, config, progress)


def _resolve_arch(config: TrainConfig, isnet_file) -> str:
    if config.init_weights is not None:
        if config.init_weights.suffix.lower() == ".onnx":
            if isnet_file is None:
                return config.arch or "isnet"
            stored = isnet_file[0].name
        else:
            stored = read_checkpoint_arch(config.init_weights).name
        if config.arch is not None and config.arch != stored:
            raise IsnetError(f"--arch {config.arch} does not match {config.init_weights}, which holds "
                             f"'{stored}' weights")
        return stored
    return config.arch or "isnet"


def _isnet_onnx(path: Path):
    """(arch, convolutions, side heads left out) of an ISNet ONNX file, None for another network's file."""
    try:
        return read_isnet_onnx(path)
    except IsnetError:
        return None


def _prepare_output(config: TrainConfig) -> None:
    out = config.output_dir
    if out.exists() and not out.is_dir():
        raise IsnetError(f"output folder {out} is a file")
    if config.resume is None and (out / LAST_CHECKPOINT).exists():
        raise IsnetError(f"{out} already holds a training run ({LAST_CHECKPOINT}); pass --resume to continue it, "
                         "or choose another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IsnetError(f"cannot create output folder {out} ({exc.strerror or exc})") from None


def _train(task: Task, config: TrainConfig, progress: Callable[[TrainEvent], None] | None) -> TrainResult:
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _train_loop(task, config, progress)
    finally:
        torch.set_num_threads(threads)


def _train_loop(task: Task, config: TrainConfig, progress: Callable[[TrainEvent], None] | None) -> TrainResult:
    started = time.perf_counter()
    report = progress or (lambda event: None)
    pairs = ecssd_pairs(config.data_dir, "training")
    val_pairs = ecssd_pairs(config.val_dir, "validation") if config.val_dir is not None else []
    if len(pairs) < config.batch_size:
        raise IsnetError(f"{config.data_dir} has {len(pairs)} pairs, fewer than one batch of {config.batch_size}; "
                         "lower --batch or add pictures")
    digest = data_digest(pairs)
    if config.init_weights is not None and not config.init_weights.is_file():
        raise IsnetError(f"initial weights not found: {config.init_weights} (pass an official or isnet .pth, "
                         "or an ONNX model: an ISNet file loads whole, another network's matching convolutions)")
    isnet_file = _isnet_onnx(config.init_weights) if config.init_weights is not None \
        and config.init_weights.suffix.lower() == ".onnx" and task is Task.ISNET else None
    arch = _resolve_arch(config, isnet_file) if task is Task.ISNET else (config.arch or "isnet")
    encoder = load_gt_encoder(config.gt_encoder, arch) if config.gt_encoder is not None else None
    if encoder is not None:
        encoder.requires_grad_(False).to(memory_format=torch.channels_last)
    resumed = read_training_state(config.resume, task) if config.resume is not None else None
    _prepare_output(config)

    torch.manual_seed(config.seed)
    model = ISNet(arch) if task is Task.ISNET else ISNetGTEncoder(arch)
    init_note = None
    if isnet_file is not None:
        # An ISNet file: its convolutions hold the folded BatchNorm; the BatchNorm layers are identities and
        # stay on those statistics, so training starts from exactly the file's network.
        model.freeze_batch_norm()
    if config.init_weights is not None and resumed is None:
        if isnet_file is not None:
            affine = input_affine(deploy_preprocessor(config.train_size), config.init_preprocess) \
                if config.init_preprocess else None
            load_folded_convolutions(model, isnet_file[1], input_affine=affine)
            init_note = (f"loaded the {len(isnet_file[1])} convolutions of {config.init_weights.name} exactly "
                         "(BatchNorm folded into them: the BatchNorm layers are identities, frozen; their scale "
                         "and shift train)" + (f"; {', '.join(isnet_file[2])} not in the file, trained from "
                                               "scratch" if isnet_file[2] else ""))
        elif config.init_weights.suffix.lower() == ".onnx":
            probe = deploy_preprocessor(config.train_size)
            images = torch.from_numpy(np.stack([probe.load(image)[0] for _, image, _ in pairs[:16]]))
            affine = input_affine(probe, config.init_preprocess) if config.init_preprocess else None
            copied, total = init_from_onnx(model, config.init_weights, images, input_affine=affine)
            if not copied:
                raise IsnetError(f"{config.init_weights}: none of its convolutions has the shape of one of "
                                 f"ISNet '{arch}'; nothing to start from")
            init_note = f"copied {copied} of {total} convolutions from {config.init_weights.name}"
        else:
            state, _ = read_checkpoint(config.init_weights)
            load_isnet_weights(model, state, source=str(config.init_weights))
    model.to(memory_format=torch.channels_last).train()
    steps_per_epoch = len(pairs) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    warmup = min(config.warmup_steps, total_steps // 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup))

    step, history, loss_sum, loss_count, train_seconds = 0, [], 0.0, 0, 0.0
    if resumed is not None:
        state, train_state = resumed
        check_resumable(config, train_state["config"], digest, train_state["data_digest"], config.resume)
        model.load_state_dict(state)
        optimizer.load_state_dict(train_state["optimizer"])
        scheduler.load_state_dict(train_state["scheduler"])
        torch.set_rng_state(train_state["torch_rng"])
        step = int(train_state["step"])
        history = list(train_state["history"])
        loss_sum, loss_count = float(train_state["loss_sum"]), int(train_state["loss_count"])
        train_seconds = float(train_state["train_seconds"])

    def save_last(epoch_done: int) -> Path:
        train_state = {
            "config": config.to_dict(), "data_digest": digest, "step": step, "epoch": epoch_done,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "history": history, "loss_sum": loss_sum,
            "loss_count": loss_count, "train_seconds": train_seconds + time.perf_counter() - started,
        }
        return save_checkpoint(config.output_dir / LAST_CHECKPOINT, model, kind=task.value, train_state=train_state)

    dataset = PairDataset(pairs, config.train_size, config.seed, config.scale_min, config.flip,
                          masks_only=task is Task.GT_ENCODER, teacher_dir=config.teacher_maps,
                          heavy=config.augment is Augment.HEAVY)
    sampler = EpochSampler(len(pairs), config.batch_size, config.seed)
    loader_options = {}
    if config.workers:
        # Spawned, not forked: a forked worker inherits OpenCV's and OpenMP's thread pools in a
        # broken state (a worker calling cv2.setNumThreads deadlocked). Persistent, so the
        # start-up cost (importing torch) is paid once per run, not per epoch.
        loader_options = dict(multiprocessing_context="spawn", persistent_workers=True, prefetch_factor=4,
                              worker_init_fn=worker_init)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                         num_workers=config.workers, collate_fn=collate, **loader_options)
    bf16 = config.precision is TrainingPrecision.BF16
    report(TrainEvent("start", step, total_steps, step // steps_per_epoch + 1, config.epochs, note=init_note))
    for epoch in range(step // steps_per_epoch, config.epochs):
        sampler.set_epoch(epoch, skip_batches=step - epoch * steps_per_epoch)
        for batch in loader:
            if isinstance(batch, LoadFailure):
                raise IsnetError(batch.message)
            mask = batch["mask"].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if task is Task.ISNET:
                    image = batch["image"].contiguous(memory_format=torch.channels_last)
                    teacher = batch.get("teacher")
                    if teacher is not None:
                        teacher = teacher.contiguous(memory_format=torch.channels_last)
                    loss, parts = isnet_loss(model, image, mask, encoder, config.feature_weight, teacher,
                                             config.teacher_weight)
                else:
                    loss, parts = gt_encoder_loss(model, mask)
            if not torch.isfinite(loss):
                raise IsnetError(f"training diverged at step {step + 1} (loss {loss.item()}); "
                                 "start again with a lower learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            loss_sum, loss_count = loss_sum + value, loss_count + 1
            report(TrainEvent("step", step, total_steps, epoch + 1, config.epochs, loss=value,
                              lr=optimizer.param_groups[0]["lr"], parts=parts))
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step % steps_per_epoch:
                save_last(epoch)
        val_started = time.perf_counter()
        metrics = validate(model, val_pairs, config.val_size, task) if val_pairs else None
        entry = {"epoch": epoch + 1, "step": step, "loss": loss_sum / max(1, loss_count),
                 "lr": optimizer.param_groups[0]["lr"],
                 "seconds": round(train_seconds + time.perf_counter() - started, 2)}
        if metrics is not None:
            entry["val"] = metrics
            entry["val_seconds"] = round(time.perf_counter() - val_started, 2)
        history.append(entry)
        loss_sum, loss_count = 0.0, 0
        save_last(epoch + 1)
        write_text_atomic(config.output_dir / HISTORY, json.dumps(
            {"task": task.value, "arch": arch, "config": config.to_dict(), "pairs": len(pairs),
             "val_pairs": len(val_pairs), "history": history}, indent=2) + "\n")
        report(TrainEvent("epoch", step, total_steps, epoch + 1, config.epochs, loss=entry["loss"],
                          lr=entry["lr"], metrics=metrics, seconds=entry["seconds"]))

    total_seconds = train_seconds + time.perf_counter() - started
    model_path = save_checkpoint(
        config.output_dir / MODEL_FILES[task.value], model, half=config.fp16_weights, kind=task.value,
        training={"config": config.to_dict(), "pairs": len(pairs), "steps": step,
                  "seconds": round(total_seconds, 1), "history": history})
    return TrainResult(task=task, arch=arch, model_path=model_path, last_path=config.output_dir / LAST_CHECKPOINT,
                       history=tuple(history), steps=step, seconds=time.perf_counter() - started,
                       train_seconds=total_seconds)
