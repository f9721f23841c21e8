"""A compact SongUNet / DDPM++ style UNet (after NVlabs/edm `training/networks.py`, as CorrDiff uses it).

Residual blocks of GroupNorm -> SiLU -> conv, modulated by an embedding of the noise level (sinusoidal) plus
the lead time (a learned table: 0 = IMERG itself, 1..8 = nowcast half-hours); self-attention at the coarsest
level; skip connections between encoder and decoder. The same class serves as the regression UNet (fed a
constant noise label) and as the EDM denoiser's raw network F. Sizes come from `NetworkSpec`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class NetworkSpec:
    in_channels: int
    out_channels: int = 1
    model_channels: int = 32
    channel_mult: tuple[int, ...] = field(default=(1, 2, 2))
    num_blocks: int = 1
    attention: bool = True
    attention_head_channels: int = 64
    emb_mult: int = 4
    dropout: float = 0.0
    max_lead: int = 8

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if self.in_channels < 1 or self.out_channels < 1 or self.model_channels < 4 or not self.channel_mult:
            raise ValueError(f"invalid network size {self}")

    @property
    def downsampling(self) -> int:
        """Patch sides must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channel_mult"] = list(self.channel_mult)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> NetworkSpec:
        return cls(**data)


def _groups(channels: int) -> int:
    """Up to 32 groups of at least 4 channels (edm's rule), reduced until the groups divide the channels."""
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """F.interpolate(x, scale_factor=2, mode="nearest"), bit for bit, and the faster way for x's layout.

    On the CPU, PyTorch's NCHW nearest kernel computes a source index per output cell: a broadcast copy takes
    0.45x its time. Its channels_last kernel is the faster of the two there (docs/benchmarks.md).
    """
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return F.interpolate(x, scale_factor=2, mode="nearest")
    b, c, h, w = x.shape
    # .contiguous(): with a side of 1, reshape can return a stride-0 view of the broadcast instead of a copy
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w).contiguous()


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that normalises small reduced-precision channels_last maps in the contiguous layout.

    Below 1024 cells a map (`feature_map_threshold` in PyTorch's CPU kernel) the channels_last kernel works
    per (sample, group) and, for bf16 with this network's 4-channel groups, cannot vectorise: 3-4x the time
    of converting to NCHW, normalising there and converting back (docs/benchmarks.md, "third round"). The two
    kernels compute the same statistics in float32; float32 maps keep the native path, which is as fast.
    """

    SMALL_MAP_CELLS = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 4
                and x.shape[-2] * x.shape[-1] < self.SMALL_MAP_CELLS
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar (the EDM noise label c_noise), as in the Transformer/DDPM++."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        self.channels, self.max_positions = channels, max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(self.channels // 2, dtype=torch.float32, device=x.device) / (self.channels // 2)
        freqs = (1 / self.max_positions) ** freqs
        angles = x.float().outer(freqs)
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class Attention(nn.Module):
    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = GroupNorm(_groups(channels), channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNetBlock(nn.Module):
    """Residual block with optional resampling, an additive embedding (DDPM++'s non-adaptive scale) and optional attention."""

    def __init__(self, cin, cout, emb_channels, *, up=False, down=False, attention=False, head_channels=64, dropout=0.0):
        super().__init__()
        self.out_channels, self.up, self.down = cout, up, down
        self.norm0 = GroupNorm(_groups(cin), cin, eps=1e-6)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_channels, cout)
        self.norm1 = GroupNorm(_groups(cout), cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)  # each block starts as the identity, as in edm's init_zero
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.attention = Attention(cout, head_channels) if attention else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return upsample_nearest2x(x)
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        skip = self._resample(x)
        x = self.conv0(self._resample(F.silu(self.norm0(x))))
        x = F.silu(self.norm1(x + self.affine(emb).unsqueeze(-1).unsqueeze(-1)))
        x = self.conv1(self.dropout(x))
        x = (x + (self.skip(skip) if self.skip is not None else skip)) * math.sqrt(0.5)
        if self.attention is not None:
            x = (x + self.attention(x)) * math.sqrt(0.5)
        return x


class SongUNet(nn.Module):
    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        ch, emb_ch = spec.model_channels, spec.model_channels * spec.emb_mult
        kw = {"head_channels": spec.attention_head_channels, "dropout": spec.dropout}
        self.map_noise = NoiseEmbedding(ch)
        self.map_lead = nn.Embedding(spec.max_lead + 1, ch)
        self.map_layer0 = nn.Linear(ch, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)

        last = len(spec.channel_mult) - 1
        self.conv_in = nn.Conv2d(spec.in_channels, ch, 3, padding=1)
        self.enc = nn.ModuleList()
        skips, cout = [ch], ch
        for level, mult in enumerate(spec.channel_mult):
            if level > 0:
                self.enc.append(UNetBlock(cout, cout, emb_ch, down=True, **kw))
                skips.append(cout)
            for _ in range(spec.num_blocks):
                cin, cout = cout, ch * mult
                self.enc.append(UNetBlock(cin, cout, emb_ch, attention=spec.attention and level == last, **kw))
                skips.append(cout)

        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(spec.channel_mult))):
            if level == last:
                self.dec.append(UNetBlock(cout, cout, emb_ch, attention=spec.attention, **kw))
                self.dec.append(UNetBlock(cout, cout, emb_ch, **kw))
            else:
                self.dec.append(UNetBlock(cout, cout, emb_ch, up=True, **kw))
            for _ in range(spec.num_blocks + 1):
                cin, cout = cout + skips.pop(), ch * mult
                block = UNetBlock(cin, cout, emb_ch, attention=spec.attention and level == last, **kw)
                block.takes_skip = True
                self.dec.append(block)
        self.norm_out = GroupNorm(_groups(cout), cout, eps=1e-6)
        self.conv_out = nn.Conv2d(cout, spec.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, lead: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) with H, W multiples of `spec.downsampling`; noise_labels (B,); lead (B,) int."""
        emb = self.map_noise(noise_labels) + self.map_lead(lead.long().clamp(0, self.spec.max_lead))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        x = self.conv_in(x)
        skips = [x]
        for block in self.enc:
            x = block(x, emb)
            skips.append(x)
        for block in self.dec:
            if getattr(block, "takes_skip", False):
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.conv_out(F.silu(self.norm_out(x)))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
