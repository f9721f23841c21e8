"""Inference: the `Downscaler` turns a `Conditioning` into an ensemble of 0.05° rain-rate fields.

member = regression mean + EDM sample of the residual. Any domain size works: the normalised inputs are padded
to whole tiles, cut into overlapping tiles, and every network call runs all patches of all members
as one batch (split into chunks of `max_batch` for memory), blended back before each sampler update.
Member i's noise comes from its own generator (`StackedRandomGenerator`), so it does not depend on the
ensemble size, and the sampler integrates over the checkpoint's own noise range (sigma_min, sigma_max).
Two optional input techniques act in `_prepare`, the one way inputs reach the networks (Hess et al. 2025):
quantile delta mapping of the precipitation channel onto the training input's quantiles stored in the
checkpoint (`model.input_qdm`, `nrt.model.qdm`), and noise injected into the normalised precipitation
condition of each member (`model.condition_noise_sigma`, `nrt.model.condition_noise`).
The tiles, network outputs, blended field and sampler state live in a `Workspace` reused across steps and
calls, so the sampler allocates nothing per step outside the network itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from pathlib import Path

import numpy as np
import torch

from nrt.config import ModelConfig
from nrt.errors import ConfigError, DataError
from nrt.model import allocator, checkpoint
from nrt.model.condition_noise import inject
from nrt.model.conditioning import Conditioning, raw_channels
from nrt.model.member_noise import StackedRandomGenerator
from nrt.model.patching import PatchGrid
from nrt.model.qdm import WetQuantiles, qdm
from nrt.model.sampler import SIGMA_MAX, SIGMA_MIN, SamplerSettings, edm_sample
from nrt.model.spec import ModelSpec, records_noise_range
from nrt.model.workspace import Workspace

log = logging.getLogger("nrt.model.inference")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def resolve(path_or_builtin: str | Path) -> Path:
    """`builtin:NAME` is a checkpoint shipped in the package (nrt/model/weights/NAME.*)."""
    text = str(path_or_builtin)
    if text.startswith("builtin:"):
        return WEIGHTS_DIR / text.removeprefix("builtin:")
    return Path(text).expanduser()


def input_qdm_for(meta: dict, name: str, reference: str) -> tuple[WetQuantiles, WetQuantiles | None]:
    """(training input quantiles of checkpoint `name`, reference climatology or None for "field") for
    `model.input_qdm`; each problem is one ConfigError naming the key."""
    try:
        target = WetQuantiles.from_dict(meta["input_quantiles"]["precip"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError("model.input_qdm", f"{name} records no training input quantiles (input_quantiles.precip)") from None
    if reference == "field":
        return target, None
    path = Path(reference).expanduser()
    try:
        climatology = WetQuantiles.from_dict(json.loads(path.read_text()))
    except OSError as exc:
        raise ConfigError("model.input_qdm_reference", f"{path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError("model.input_qdm_reference", f"{path}: not a quantile climatology ({exc})") from None
    if climatology.threshold != target.threshold:
        raise ConfigError("model.input_qdm_reference", f"{path}: wet threshold {climatology.threshold} differs from "
                          f"the checkpoint's {target.threshold} mm/h")
    return target, climatology


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device", "cuda requested but no CUDA device is available")
    return torch.device(name)


def bf16_native(device: torch.device) -> bool:
    """Whether `device` runs bf16 natively: CUDA, or a CPU with avx512_bf16 or amx_bf16. Elsewhere a CPU emulates
    bf16 and autocast would be slower than float32, so the networks stay in float32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def sampler_settings(model_cfg) -> SamplerSettings:
    """The sampler of a `model` config section (nrt.config.ModelConfig)."""
    return SamplerSettings(
        solver=model_cfg.solver, steps=model_cfg.sampler_steps, rho=model_cfg.sampler_rho,
        sigma_min=model_cfg.sampler_sigma_min, sigma_max=model_cfg.sampler_sigma_max, churn=model_cfg.churn,
        churn_sigma_min=model_cfg.churn_sigma_min, churn_noise=model_cfg.churn_noise,
        churn_sigma_max=math.inf if model_cfg.churn_sigma_max is None else model_cfg.churn_sigma_max,
        residual_scale=model_cfg.residual_scale, denoise_to_zero=model_cfg.sampler_denoise_to_zero,
        residual_scale_by_rate=tuple(tuple(pair) for pair in model_cfg.residual_scale_by_rate),
    )


class Downscaler:
    def __init__(self, spec: ModelSpec, tensors: dict[str, torch.Tensor], *, meta: dict, sha256: str, name: str,
                 device: torch.device, patch_size: int = 64, patch_overlap: int = 8, max_batch: int = 256,
                 bf16: bool = True, channels_last: bool = False, compile: bool = False,
                 sampler: SamplerSettings = SamplerSettings(),
                 input_qdm: tuple[WetQuantiles, WetQuantiles | None] | None = None, condition_noise: float = 0.0):
        self.spec, self.config, self.sha256, self.name, self.device = spec, meta, sha256, name, device
        if condition_noise < 0:
            raise ConfigError("model.condition_noise_sigma", f"{condition_noise} must not be negative")
        self.input_qdm, self.condition_noise = input_qdm, condition_noise
        down = max(spec.regression.downsampling, spec.diffusion.downsampling)
        if patch_size % down:
            raise ConfigError("model.patch_size", f"{patch_size} is not a multiple of the network's downsampling {down}")
        if not 4 <= patch_overlap < patch_size:
            raise ConfigError("model.patch_overlap", f"{patch_overlap} must be at least 4 and less than the patch size")
        self.patch_size, self.patch_overlap, self.max_batch, self.sampler = patch_size, patch_overlap, max_batch, sampler
        self.tile_multiple = down
        self.autocast = bf16 and bf16_native(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.regression, self.diffusion = spec.build()
        for net, prefix in ((self.regression, "regression."), (self.diffusion, "diffusion.")):
            state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
                raise DataError(name, f"weights do not fit the model config ({first})") from None
            net.to(device=device, memory_format=self.memory_format).eval().requires_grad_(False)
        self.regression_call = torch.compile(self.regression) if compile else self.regression
        self.diffusion_call = torch.compile(self.diffusion) if compile else self.diffusion
        self.workspace = Workspace()
        if device.type == "cpu":
            allocator.retain_freed_memory()  # activations above glibc's mmap ceiling would page-fault in every call
        self._sampling = threading.Lock()  # the workspace serves one sample at a time

    @classmethod
    def load(cls, path_or_builtin: str | Path, device: str | torch.device = "auto", model_cfg=None) -> Downscaler:
        """Load a verified checkpoint; `model_cfg` (nrt.config.ModelConfig) supplies the runtime options
        (without one: the network's defaults and the config's default sampler)."""
        path = resolve(path_or_builtin)
        ckpt = checkpoint.load(path, "cpu")
        try:
            spec = ModelSpec.from_dict(ckpt.meta["model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(ckpt.path, f"model description is incomplete or inconsistent ({exc})") from None
        if not records_noise_range(ckpt.meta["model"]):
            log.warning("%s records no sigma_min/sigma_max (an older checkpoint); using the training defaults %g and %g",
                        ckpt.path, SIGMA_MIN, SIGMA_MAX)
        device = pick_device(device) if isinstance(device, str) else device
        options = {"sampler": sampler_settings(ModelConfig())}
        if model_cfg is not None:
            options = {
                "patch_size": model_cfg.patch_size, "patch_overlap": model_cfg.patch_overlap,
                "max_batch": model_cfg.max_batch, "bf16": model_cfg.bf16, "sampler": sampler_settings(model_cfg),
                "channels_last": model_cfg.channels_last, "compile": model_cfg.compile,
                "condition_noise": model_cfg.condition_noise_sigma,
            }
            if model_cfg.input_qdm:
                options["input_qdm"] = input_qdm_for(ckpt.meta, str(ckpt.path), model_cfg.input_qdm_reference)
        downscaler = cls(spec, ckpt.tensors, meta=ckpt.meta, sha256=ckpt.sha256, name=str(ckpt.path), device=device, **options)
        log.info("loaded %s (sha256 %s) on %s; sampler %s", ckpt.path, ckpt.sha256[:12], device, downscaler.sampler.describe())
        return downscaler

    def _amp(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()

    def run_batched(self, fn, *tensors: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """fn(*tensors) over the leading (tile) axis in chunks of `max_batch`, under bf16 autocast where the
        device runs bf16 natively (`bf16_native`) and `model.bf16` is on.

        The float32 result is written into `out` when given (else into a new tensor).
        """
        for start in range(0, tensors[0].shape[0], self.max_batch):
            part = [t[start : start + self.max_batch] for t in tensors]
            part = [p.contiguous(memory_format=self.memory_format) if p.dim() == 4 else p for p in part]
            with self._amp():
                result = fn(*part)
            if out is None:
                out = result.new_empty((tensors[0].shape[0], *result.shape[1:]), dtype=torch.float32)
            out[start : start + self.max_batch].copy_(result)
        return out

    def model_inputs(self, cond: Conditioning) -> np.ndarray:
        """(member of `cond.precip`, C, lat, lon) physical channels, the precipitation quantile-delta-mapped
        when `model.input_qdm` is on."""
        raw = raw_channels(cond, self.spec.channels)
        if self.input_qdm is not None:
            raw[:, 0] = qdm(raw[:, 0], *self.input_qdm)
        return raw

    def _prepare(self, cond: Conditioning, members: int | None = None, seed: int = 0):
        """Padded normalised inputs, their PatchGrid and the missing cells. With `members` and condition noise
        configured, one row per ensemble member, each with its own noise on the precipitation channel."""
        raw = self.model_inputs(cond)
        missing = np.isnan(raw[:, 0])
        z = self.spec.normalize_inputs(torch.from_numpy(raw)).to(self.device)
        if members is not None and self.condition_noise > 0:
            rows = np.arange(members) % z.shape[0]
            z = inject(z[torch.from_numpy(rows).to(self.device)], self.condition_noise, seed)
            missing = missing[rows]
        grid = PatchGrid(*z.shape[-2:], self.patch_size, self.patch_overlap, self.tile_multiple)
        return grid.pad(z), grid, missing

    def _mean(self, z: torch.Tensor, grid: PatchGrid, lead: int) -> torch.Tensor:
        tiles = grid.extract(z)
        leads = torch.full((tiles.shape[0],), lead, device=self.device, dtype=torch.long)
        return grid.blend(self.run_batched(self.regression_call, tiles, leads))

    @torch.no_grad()
    def regression_mean(self, cond: Conditioning) -> np.ndarray:
        """The regression UNet's mean, (member of `cond.precip`, lat, lon) mm/h."""
        z, grid, missing = self._prepare(cond)
        rate = grid.crop(self.spec.denormalize_target(self._mean(z, grid, cond.lead)))[:, 0].cpu().numpy()
        return np.where(missing, np.nan, rate).astype(np.float32)

    @torch.no_grad()
    def sample(self, cond: Conditioning, members: int = 30, seed: int = 0, steps: int | None = None,
               solver: str | None = None) -> np.ndarray:
        """(member, lat, lon) float32 mm/h; member i is driven by coarse member i mod the number given.

        The sampler is `self.sampler` (the config's), with `steps` and `solver` replaced where given.

        Member i's noise depends only on (seed, i): the first 10 members of a 30-member ensemble are the
        10 members of a 10-member one (to float tolerance: the network batches differ).
        """
        with self._sampling:
            z, grid, missing = self._prepare(cond, members, seed)
            mean = self._mean(z, grid, cond.lead)
            source = torch.arange(members, device=self.device) % z.shape[0]
            ws, tile_count = self.workspace, members * len(grid)
            condition = grid.extract(torch.cat([z, mean], dim=1)[source],
                                     out=ws.get("condition", (tile_count, z.shape[1] + 1, *grid.tile), device=self.device,
                                                memory_format=self.memory_format))
            leads = torch.full((tile_count,), cond.lead, device=self.device, dtype=torch.long)
            tiles = ws.get("tiles", (tile_count, 1, *grid.tile), device=self.device)
            sigmas = ws.get("sigmas", (tile_count,), device=self.device)
            outputs = ws.get("outputs", (tile_count, 1, *grid.tile), device=self.device)
            denoised = ws.get("denoised", (members, 1, *grid.shape), device=self.device)

            def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
                grid.extract(x, out=tiles)  # the float64 state, rounded to float32 for the network
                sigmas.fill_(sigma)
                return grid.blend(self.run_batched(self.diffusion_call, tiles, sigmas, condition, leads, out=outputs), out=denoised)

            noise = StackedRandomGenerator(self.device, seed, members)
            latents = noise.randn((members, 1, *grid.shape), out=ws.get("latents", (members, 1, *grid.shape), device=self.device))
            settings = self.sampler.overridden(steps, solver)
            sigma_min, sigma_max = settings.noise_range(self.spec.sigma_min, self.spec.sigma_max)
            residual = edm_sample(denoise, latents, steps=settings.steps, solver=settings.solver,
                                  sigma_min=sigma_min, sigma_max=sigma_max, rho=settings.rho, churn=settings.churn,
                                  churn_sigma_min=settings.churn_sigma_min, churn_sigma_max=settings.churn_sigma_max,
                                  churn_noise=settings.churn_noise, randn_like=noise.randn_like, workspace=ws,
                                  denoise_to_zero=settings.denoise_to_zero)
            if settings.residual_scale_by_rate:  # per nowcast member's mean, then spread to its ensemble members
                mean_rate = self.spec.denormalize_target(mean).cpu().numpy()
                residual.mul_(torch.from_numpy(settings.residual_scales(mean_rate)).to(residual)[source])
            elif settings.residual_scale != 1:
                residual.mul_(settings.residual_scale)
            rate = grid.crop(self.spec.denormalize_target(mean[source] + residual.float()))[:, 0].cpu().numpy()
            return np.where(missing[source.cpu().numpy()], np.nan, rate).astype(np.float32)
