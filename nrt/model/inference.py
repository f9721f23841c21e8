"""Inference: the `Downscaler` turns a `Conditioning` into an ensemble of 0.05° rain-rate fields.

member = regression mean + EDM sample of the residual. Any domain size works: the normalised inputs are padded
to whole tiles, cut into overlapping tiles, and every network call runs all patches of all members
as one batch (split into chunks of `max_batch` for memory), blended back before each sampler update.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch

from nrt.errors import ConfigError, DataError
from nrt.model import checkpoint
from nrt.model.conditioning import Conditioning, raw_channels
from nrt.model.patching import PatchGrid
from nrt.model.sampler import edm_sample
from nrt.model.spec import ModelSpec

log = logging.getLogger("nrt.model.inference")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def resolve(path_or_builtin: str | Path) -> Path:
    """`builtin:NAME` is a checkpoint shipped in the package (nrt/model/weights/NAME.*)."""
    text = str(path_or_builtin)
    if text.startswith("builtin:"):
        return WEIGHTS_DIR / text.removeprefix("builtin:")
    return Path(text).expanduser()


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device", "cuda requested but no CUDA device is available")
    return torch.device(name)


class Downscaler:
    def __init__(self, spec: ModelSpec, tensors: dict[str, torch.Tensor], *, meta: dict, sha256: str, name: str,
                 device: torch.device, patch_size: int = 64, patch_overlap: int = 8, max_batch: int = 256,
                 bf16: bool = True, channels_last: bool = False, compile: bool = False, churn: float = 0.0):
        self.spec, self.config, self.sha256, self.name, self.device = spec, meta, sha256, name, device
        down = max(spec.regression.downsampling, spec.diffusion.downsampling)
        if patch_size % down:
            raise ConfigError("model.patch_size", f"{patch_size} is not a multiple of the network's downsampling {down}")
        if not 4 <= patch_overlap < patch_size:
            raise ConfigError("model.patch_overlap", f"{patch_overlap} must be at least 4 and less than the patch size")
        self.patch_size, self.patch_overlap, self.max_batch, self.churn = patch_size, patch_overlap, max_batch, churn
        self.tile_multiple = down
        self.autocast = device.type == "cuda" and bf16
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

    @classmethod
    def load(cls, path_or_builtin: str | Path, device: str | torch.device = "auto", model_cfg=None) -> Downscaler:
        """Load a verified checkpoint; `model_cfg` (nrt.config.ModelConfig) supplies the runtime options."""
        path = resolve(path_or_builtin)
        ckpt = checkpoint.load(path, "cpu")
        try:
            spec = ModelSpec.from_dict(ckpt.meta["model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(ckpt.path, f"model description is incomplete or inconsistent ({exc})") from None
        device = pick_device(device) if isinstance(device, str) else device
        options = {}
        if model_cfg is not None:
            options = {
                "patch_size": model_cfg.patch_size, "patch_overlap": model_cfg.patch_overlap,
                "max_batch": model_cfg.max_batch, "bf16": model_cfg.bf16, "churn": model_cfg.churn,
                "channels_last": model_cfg.channels_last, "compile": model_cfg.compile,
            }
        downscaler = cls(spec, ckpt.tensors, meta=ckpt.meta, sha256=ckpt.sha256, name=str(ckpt.path), device=device, **options)
        log.info("loaded %s (sha256 %s) on %s", ckpt.path, ckpt.sha256[:12], device)
        return downscaler

    def _amp(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()

    def run_batched(self, fn, *tensors: torch.Tensor) -> torch.Tensor:
        """fn(*tensors) over the leading (tile) axis in chunks of `max_batch`, under bf16 autocast on CUDA."""
        outputs = []
        for start in range(0, tensors[0].shape[0], self.max_batch):
            part = [t[start : start + self.max_batch] for t in tensors]
            part = [p.contiguous(memory_format=self.memory_format) if p.dim() == 4 else p for p in part]
            with self._amp():
                outputs.append(fn(*part).float())
        return torch.cat(outputs)

    def _prepare(self, cond: Conditioning):
        raw = raw_channels(cond, self.spec.channels)
        missing = np.isnan(raw[:, 0])
        z = self.spec.normalize_inputs(torch.from_numpy(raw)).to(self.device)
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
    def sample(self, cond: Conditioning, members: int = 30, seed: int = 0, steps: int = 18, solver: str = "heun") -> np.ndarray:
        """(member, lat, lon) float32 mm/h; member i is driven by coarse member i mod the number given."""
        z, grid, missing = self._prepare(cond)
        mean = self._mean(z, grid, cond.lead)
        source = torch.arange(members, device=self.device) % z.shape[0]
        condition = grid.extract(torch.cat([z, mean], dim=1)[source])
        leads = torch.full((condition.shape[0],), cond.lead, device=self.device, dtype=torch.long)

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            tiles = grid.extract(x)
            sigmas = torch.full((tiles.shape[0],), sigma, device=self.device)
            return grid.blend(self.run_batched(self.diffusion_call, tiles, sigmas, condition, leads))

        generator = torch.Generator(self.device).manual_seed(int(seed))
        latents = torch.randn((members, 1, *z.shape[-2:]), device=self.device, generator=generator)
        residual = edm_sample(denoise, latents, steps=steps, solver=solver, churn=self.churn, generator=generator)
        rate = grid.crop(self.spec.denormalize_target(mean[source] + residual))[:, 0].cpu().numpy()
        return np.where(missing[source.cpu().numpy()], np.nan, rate).astype(np.float32)
