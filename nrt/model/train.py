"""Training (CorrDiff): the regression UNet first, then the EDM diffusion model on the regression residual.

Adam with a linear warm-up, gradient clipping, an EMA of the weights (exported), bf16 autocast on GPU only.
Each step's randomness (patches, σ, noise) derives from (seed, phase, step), and the state file (weights, EMA,
Adam moments, step counters) is rewritten atomically every `checkpoint_every` steps, so a run killed at any
moment resumes from its last state and continues exactly as if never interrupted.

Multi-GPU / multi-node: launch with `torchrun`; each rank takes its slice of every global batch and
DistributedDataParallel averages the gradients (NCCL on GPU, gloo on CPU). Rank 0 writes all files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from nrt import __version__
from nrt.errors import ConfigError, DataError
from nrt.io import sha256_file
from nrt.model import checkpoint
from nrt.model.conditioning import PRECIP_CHANNELS
from nrt.model.dataset import TrainingSet, read_training_set
from nrt.model.inference import pick_device
from nrt.model.loss import EDMLoss, regression_loss
from nrt.model.networks import NetworkSpec
from nrt.model.normalize import ChannelStats
from nrt.model.patching import PatchSampler
from nrt.model.qdm import training_input_quantiles
from nrt.model.spec import ModelSpec
from nrt.model.transforms import PrecipTransform

log = logging.getLogger("nrt.model.train")

PHASES = ("regression", "diffusion")
STATE_NAME = "state.safetensors"
# Keys of [train] that may change between a run and its resumption (they do not alter the optimisation).
_RESUMABLE_KEYS = {"regression_steps", "diffusion_steps", "checkpoint_every", "log_every", "dataset", "output", "run_dir", "start", "end"}
# The sampler's noise range is recorded in the checkpoint but plays no part in training: a run resumes across it.
_SAMPLER_KEYS = {"sigma_min", "sigma_max"}


@dataclass
class TrainResult:
    output: Path | None  # None on ranks other than 0
    sha256: str | None
    steps: dict[str, int]
    losses: dict[str, float]  # mean loss of the last logging window per phase
    history: list  # [phase, step, mean loss of the window ending there]


def network_spec(net_cfg, in_channels: int) -> NetworkSpec:
    return NetworkSpec(
        in_channels=in_channels,
        model_channels=net_cfg.model_channels,
        channel_mult=tuple(net_cfg.channel_mult),
        num_blocks=net_cfg.num_blocks,
        attention=net_cfg.attention,
        dropout=net_cfg.dropout,
    )


def fit_spec(tcfg, data: TrainingSet) -> ModelSpec:
    """Model description with normalisation statistics measured on the training set."""
    transform = PrecipTransform(tcfg.precip_transform, tcfg.precip_epsilon_mmh, tcfg.precip_power)
    names = data.channel_set.names()
    precip_rows = [i for i, n in enumerate(names) if n in PRECIP_CHANNELS]

    def transformed(sample: np.ndarray) -> np.ndarray:
        out = sample.astype(np.float64)
        out[precip_rows] = transform.forward(out[precip_rows])
        return out

    input_stats = ChannelStats.fit(names, (transformed(s) for s in data.channels))
    target_stats = ChannelStats.fit(["precip"], (transform.forward(t)[None] for t in data.truth), data.mask)
    return ModelSpec(
        channels=data.channel_set,
        transform=transform,
        input_stats=input_stats,
        target_stats=target_stats,
        regression=network_spec(tcfg.regression, len(names)),
        diffusion=network_spec(tcfg.diffusion, len(names) + 2),
        sigma_data=tcfg.sigma_data,
        sigma_min=tcfg.sigma_min,
        sigma_max=tcfg.sigma_max,
    )


def _fingerprint(tcfg, spec: ModelSpec, dataset_sha: str) -> str:
    settings = {k: v for k, v in tcfg.model_dump(mode="json").items() if k not in _RESUMABLE_KEYS | _SAMPLER_KEYS}
    model = {k: v for k, v in spec.to_dict().items() if k not in _SAMPLER_KEYS}
    text = json.dumps({"train": settings, "model": model, "dataset": dataset_sha}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class _Phase:
    """One network with its EMA and optimiser; `net` may be wrapped in DDP, `module` never is."""

    def __init__(self, name: str, module: torch.nn.Module, tcfg, device: torch.device, distributed: bool):
        self.name, self.module = name, module.to(device)
        self.ema = AveragedModel(self.module, multi_avg_fn=get_ema_multi_avg_fn(tcfg.ema_decay), use_buffers=True)
        self.opt = torch.optim.Adam(self.module.parameters(), lr=tcfg.learning_rate)
        self.net = DistributedDataParallel(self.module) if distributed else self.module
        self.step = 0

    def tensors(self) -> tuple[dict[str, torch.Tensor], list]:
        out = {f"{self.name}.net.{k}": v for k, v in self.module.state_dict().items()}
        out.update({f"{self.name}.ema.{k}": v for k, v in self.ema.state_dict().items()})
        state = self.opt.state_dict()
        for index, entries in state["state"].items():
            out.update({f"{self.name}.opt.{index}.{k}": v for k, v in entries.items()})
        return out, state["param_groups"]

    def restore(self, tensors: dict[str, torch.Tensor], groups: list, step: int) -> None:
        def part(prefix):
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

        self.module.load_state_dict(part(f"{self.name}.net."))
        self.ema.load_state_dict(part(f"{self.name}.ema."))
        entries: dict[int, dict] = {}
        for key, value in part(f"{self.name}.opt.").items():
            index, name = key.split(".", 1)
            entries.setdefault(int(index), {})[name] = value
        self.opt.load_state_dict({"state": entries, "param_groups": groups})
        self.step = step


def _init_distributed(device_name: str) -> tuple[int, int, torch.device, bool]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if world > 1:
        rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device(device_name)
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        return rank, world, device, True
    return 0, 1, pick_device(device_name), False


def _step_streams(seed: int, phase: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    seq = np.random.SeedSequence([seed, phase, step])
    rng = np.random.default_rng(seq)
    return rng, torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))


def drop_groups(x: torch.Tensor, spec: ModelSpec, probability: float, rng: np.random.Generator) -> torch.Tensor:
    """Hide each optional input group of each example with `probability`, in place, exactly as an absent input
    looks after normalisation: its channels at 0 (the training mean) and its availability channel at the
    z-score of 0. So no single auxiliary channel can carry the answer (issue 15)."""
    if probability <= 0 or not spec.channels.masks:
        return x
    names = list(spec.input_stats.names)
    for group, members in spec.channels.groups().items():
        hide = torch.from_numpy(rng.random(x.shape[0]) < probability).to(x.device)
        if not bool(hide.any()):
            continue
        flag = names.index(f"has_{group}")
        absent = float((0.0 - spec.input_stats.mean[flag]) / spec.input_stats.std[flag])
        first, last = names.index(members[0]), names.index(members[-1])  # a group's channels are contiguous
        x[hide, first : last + 1] = 0.0
        x[hide, flag] = absent
    return x


def _batch(inputs, target, mask, leads, origins, patch):
    idx = [(s, slice(r, r + patch), slice(c, c + patch)) for s, r, c in origins]
    x = torch.stack([inputs[s, :, rows, cols] for s, rows, cols in idx])
    y = torch.stack([target[s, :, rows, cols] for s, rows, cols in idx])
    m = torch.stack([mask[s, :, rows, cols] for s, rows, cols in idx])
    return x, y, m, leads[[s for s, _, _ in origins]]


def train(cfg, dataset: str | Path, output: str | Path, run_dir: str | Path, *, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train both models on the training set at `dataset`; write the EMA weights to `output` (rank 0)."""
    tcfg = cfg.train
    dataset, output, run_dir = Path(dataset), Path(output), Path(run_dir)
    rank, world, device, distributed = _init_distributed(cfg.model.device)
    if tcfg.batch_size % world:
        raise ConfigError("train.batch_size", f"{tcfg.batch_size} is not divisible by the {world} ranks")
    data = read_training_set(dataset)
    spec = fit_spec(tcfg, data)
    down = max(spec.regression.downsampling, spec.diffusion.downsampling)
    if tcfg.patch_size % down:
        raise ConfigError("train.patch_size", f"{tcfg.patch_size} is not a multiple of the networks' downsampling {down}")
    dataset_sha = sha256_file(dataset)
    fingerprint = _fingerprint(tcfg, spec, dataset_sha)
    try:
        sampler = PatchSampler(data.mask, tcfg.patch_size, tcfg.min_mask_coverage)
    except ValueError as exc:
        raise ConfigError("train.patch_size", f"{dataset}: {exc}") from None

    inputs = spec.normalize_inputs(torch.from_numpy(data.channels)).to(device)
    target = spec.normalize_target(torch.from_numpy(data.truth)[:, None]).to(device)
    mask = torch.from_numpy(data.mask)[:, None].to(device)
    leads = torch.from_numpy(data.lead).to(device)
    dataset_provenance = data.provenance
    try:
        input_quantiles = training_input_quantiles(data.channels[:, 0], dataset.name, dataset_sha)
    except ValueError as exc:  # a set without rain: nothing to learn, say so before training
        raise DataError(dataset, f"precipitation input: {exc}") from None
    del data

    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    regression, diffusion = spec.build()
    phases = {
        "regression": _Phase("regression", regression, tcfg, device, distributed),
        "diffusion": _Phase("diffusion", diffusion, tcfg, device, distributed),
    }
    totals = {"regression": tcfg.regression_steps, "diffusion": tcfg.diffusion_steps}
    losses: dict[str, float] = {}
    history: list = []
    state_path = run_dir / STATE_NAME
    if resume and state_path.is_file():
        tensors, meta = checkpoint.read_weights(state_path)
        if meta.get("fingerprint") != fingerprint:
            raise ConfigError(str(state_path), "holds a run with other settings or data; use a new run directory or --fresh")
        for name, phase in phases.items():
            phase.restore(tensors, meta["param_groups"][name], meta["steps"][name])
        losses, history = meta.get("losses", {}), meta.get("history", [])
        if phases["diffusion"].step > 0 and phases["regression"].step < totals["regression"]:
            raise ConfigError("train.regression_steps", f"{state_path} already trains the diffusion model on a regression "
                              f"model of {phases['regression'].step} steps; extend only diffusion_steps, or start --fresh")
        if rank == 0:
            log.info("resuming %s at regression step %d, diffusion step %d", state_path, phases["regression"].step, phases["diffusion"].step)

    def save_state() -> None:
        if rank != 0:
            return
        tensors, groups = {}, {}
        for name, phase in phases.items():
            tensors_part, groups[name] = phase.tensors()
            tensors.update(tensors_part)
        meta = {
            "kind": "train-state",
            "fingerprint": fingerprint,
            "steps": {name: phase.step for name, phase in phases.items()},
            "param_groups": groups,
            "losses": losses,
            "history": history,
        }
        checkpoint.write_weights(state_path, tensors, meta)

    amp = device.type == "cuda" and tcfg.bf16
    edm_loss = EDMLoss(tcfg.p_mean, tcfg.p_std, tcfg.sigma_data)
    share = tcfg.batch_size // world
    mine = slice(rank * share, (rank + 1) * share)
    for phase_index, name in enumerate(PHASES):
        phase = phases[name]
        if phase.step >= totals[name]:
            continue
        phase.module.train()
        mean_model = phases["regression"].ema.module.eval() if name == "diffusion" else None
        bar = tqdm(total=totals[name], initial=phase.step, desc=name, unit="step", disable=not progress or rank != 0, dynamic_ncols=True)
        running, started = [], time.monotonic()
        while phase.step < totals[name]:
            rng, gen = _step_streams(tcfg.seed, phase_index, phase.step)
            origins = sampler.draw(rng, tcfg.batch_size)[mine]
            x, y, m, lead = _batch(inputs, target, mask, leads, origins, tcfg.patch_size)
            x = drop_groups(x, spec, tcfg.drop_probability, rng)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                if name == "regression":
                    loss = regression_loss(phase.net(x, lead), y, m)
                else:
                    with torch.no_grad():
                        mean = mean_model(x, lead).float()
                    sigma, noise = edm_loss.draw(tcfg.batch_size, (1, tcfg.patch_size, tcfg.patch_size), gen)
                    loss = edm_loss(phase.net, (y - mean), torch.cat([x, mean], dim=1), lead, m,
                                    sigma=sigma[mine].to(device), noise=noise[mine].to(device))
            phase.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(phase.module.parameters(), tcfg.grad_clip)
            for group in phase.opt.param_groups:
                group["lr"] = tcfg.learning_rate * min(1.0, (phase.step + 1) / max(1, tcfg.warmup_steps))
            phase.opt.step()
            phase.ema.update_parameters(phase.module)
            phase.step += 1
            running.append(float(loss.detach()))
            bar.update(1)
            if phase.step % tcfg.log_every == 0 or phase.step == totals[name]:
                losses[name] = float(np.mean(running))
                history.append([name, phase.step, losses[name]])
                bar.set_postfix(loss=f"{losses[name]:.4f}")
                if rank == 0:
                    log.info("%s step %d/%d loss %.4f (%.2f s/step)", name, phase.step, totals[name], losses[name],
                             (time.monotonic() - started) / len(running))
                running, started = [], time.monotonic()
            if phase.step % tcfg.checkpoint_every == 0 or phase.step == totals[name]:
                save_state()
        bar.close()

    if distributed:
        _check_replicas_agree(phases)
    result = TrainResult(None, None, {n: p.step for n, p in phases.items()}, losses, history)
    if rank == 0:
        tensors = {f"regression.{k}": v for k, v in phases["regression"].ema.module.state_dict().items()}
        tensors.update({f"diffusion.{k}": v for k, v in phases["diffusion"].ema.module.state_dict().items()})
        meta = {
            "name": output.name.removesuffix(".safetensors"),
            "model": spec.to_dict(),
            "channels": spec.channels.describe(),
            "input_quantiles": input_quantiles,
            "training_data": {k: dataset_provenance[k] for k in ("built_from", "sources", "events", "hours", "held_out",
                                                                  "twin_examples", "twin_hours", "twin_fraction")
                              if k in dataset_provenance},
            "training": {
                "patch_size": tcfg.patch_size,
                "batch_size": tcfg.batch_size,
                "steps": result.steps,
                "final_losses": losses,
                "settings": tcfg.model_dump(mode="json", exclude={"dataset", "output", "run_dir"}),
            },
            "provenance": {
                "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "nrt_version": __version__,
                "torch_version": torch.__version__,
                "config_file": cfg.source_file,
                "dataset": dataset.name,
                "dataset_sha256": dataset_sha,
                "dataset_provenance": dataset_provenance,
                "world_size": world,
                "device": device.type,
            },
        }
        result.sha256 = checkpoint.save(output, tensors, meta)
        result.output = checkpoint.paths_for(output)[0]
        log.info("wrote %s (sha256 %s)", result.output, result.sha256)
    if distributed:
        dist.barrier()
    return result


def _check_replicas_agree(phases: dict[str, _Phase]) -> None:
    """DDP keeps replicas identical; a mismatch means a broken setup, so fail loudly rather than export one."""
    digest = torch.tensor([float(sum(p.double().sum() for p in phase.module.parameters())) for phase in phases.values()], dtype=torch.float64)
    gathered = [torch.zeros_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, digest)
    if any(not torch.allclose(g, gathered[0], rtol=1e-9, atol=0) for g in gathered):
        raise RuntimeError(f"DDP replicas diverged: parameter sums {[g.tolist() for g in gathered]}")
