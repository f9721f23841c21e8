"""Model building blocks checked against independent computations: EDM coefficients, sampler, patching, losses."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torch.nn import functional as F

from nrt.model.loss import EDMLoss, regression_loss
from nrt.model.member_noise import StackedRandomGenerator, member_seed
from nrt.model.networks import GroupNorm, NetworkSpec, SongUNet, parameter_count, upsample_nearest2x
from nrt.model.normalize import ChannelStats
from nrt.model.patching import PatchGrid, PatchSampler, axis_starts, pad_to, tile_length
from nrt.model.precond import EDMPrecond, edm_coefficients
from nrt.model.sampler import SamplerSettings, edm_sample, evaluations, sigma_steps
from nrt.model.transforms import PrecipTransform
from nrt.model.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def test_edm_coefficients_match_karras_table_1():
    sigma_d = 0.5
    for sigma in (0.002, 0.1, 0.5, 1.0, 7.3, 800.0):
        c_skip, c_out, c_in, c_noise = (float(v) for v in edm_coefficients(torch.tensor(sigma, dtype=torch.float64)))
        assert c_skip == pytest.approx(0.25 / (sigma * sigma + 0.25), rel=1e-12)
        assert c_out == pytest.approx(sigma * 0.5 / math.sqrt(sigma * sigma + 0.25), rel=1e-12)
        assert c_in == pytest.approx(1 / math.sqrt(sigma * sigma + sigma_d**2), rel=1e-12)
        assert c_noise == pytest.approx(math.log(sigma) / 4, rel=1e-12, abs=1e-15)
        # F's effective target (y - c_skip (y + σn)) / c_out has unit variance for y ~ N(0, σ_d²) (EDM eq. 8)
        target_var = ((1 - c_skip) ** 2 * sigma_d**2 + c_skip**2 * sigma**2) / c_out**2
        assert target_var == pytest.approx(1.0, rel=1e-9)
        assert c_in**2 * (sigma**2 + sigma_d**2) == pytest.approx(1.0)  # unit-variance network input


class _Recorder(torch.nn.Module):
    """A raw network F that remembers its input and returns a fixed field."""

    def forward(self, x, noise_labels, lead):
        self.seen = (x.clone(), noise_labels.clone(), lead.clone())
        return torch.full_like(x[:, :1], 0.3)


def test_precond_scales_only_the_noisy_input_and_combines_skip_and_output():
    net = _Recorder()
    precond = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(3, 1, 8, 8)
    condition = torch.randn(3, 4, 8, 8) * 5
    sigma = torch.tensor([0.01, 1.0, 80.0])
    lead = torch.tensor([0, 3, 8])
    out = precond(x, sigma, condition, lead)
    seen_x, seen_noise, seen_lead = net.seen
    s = sigma.double().reshape(-1, 1, 1, 1)
    c_in = (1 / torch.sqrt(s**2 + 0.25)).float()
    torch.testing.assert_close(seen_x[:, :1], c_in * x)
    torch.testing.assert_close(seen_x[:, 1:], condition)  # condition passes unchanged at every noise level
    torch.testing.assert_close(seen_noise, (sigma.log() / 4).float())
    assert seen_lead.tolist() == [0, 3, 8]
    expected = (0.25 / (s**2 + 0.25)).float() * x + (s * 0.5 / torch.sqrt(s**2 + 0.25)).float() * 0.3
    torch.testing.assert_close(out, expected)


def test_sigma_schedule_endpoints_and_rho_spacing():
    sig = sigma_steps(18)
    assert len(sig) == 19 and sig[-1] == 0
    assert float(sig[0]) == pytest.approx(800.0) and float(sig[-2]) == pytest.approx(0.002)
    steps = np.diff(sig[:-1].numpy() ** (1 / 7))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)  # uniform in sigma^(1/rho)


def _gaussian_denoiser(mu, s):
    """Exact D(x; σ) = E[y | y + σn = x] for y ~ N(mu, s²)."""
    return lambda x, sigma: mu + s**2 / (s**2 + sigma**2) * (x - mu)


def test_sampler_transports_noise_onto_a_known_gaussian():
    mu, s = 1.5, 0.7
    z = torch.randn(20000, generator=torch.Generator().manual_seed(1))
    # the probability-flow ODE's exact map for a Gaussian: x0 = mu + s/sqrt(s²+σmax²)(σmax z - mu)
    exact = mu + s / math.sqrt(s**2 + 800**2) * (800 * z - mu)
    errors = {}
    for solver, steps in (("heun", 32), ("heun", 64), ("heun", 128), ("euler", 128)):
        x = edm_sample(_gaussian_denoiser(mu, s), z, steps=steps, solver=solver)
        errors[solver, steps] = float((x - exact).abs().max())
    assert errors["heun", 128] < 0.01
    assert errors["heun", 64] / errors["heun", 128] > 3  # second order: halving the step quarters the error
    assert errors["euler", 128] > 5 * errors["heun", 128]
    x = edm_sample(_gaussian_denoiser(mu, s), z, steps=18)  # the default schedule: close, but not converged
    assert float(x.mean()) == pytest.approx(mu, abs=0.03)
    assert float(x.std()) == pytest.approx(s, rel=0.15)


def test_churn_keeps_the_gaussian_and_is_reproducible_with_member_generators():
    mu, s = -0.4, 0.5
    z = torch.randn(4, 5000, generator=torch.Generator().manual_seed(2))

    def run(churn=30.0):
        noise = StackedRandomGenerator("cpu", 9, members=4)
        return edm_sample(_gaussian_denoiser(mu, s), z, steps=64, churn=churn, randn_like=noise.randn_like)

    runs = [run() for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1])
    assert float(runs[0].mean()) == pytest.approx(mu, abs=0.02)
    assert float(runs[0].std()) == pytest.approx(s, rel=0.05)
    assert not torch.allclose(runs[0], run(churn=0.0))


def _reference_edm_sample(denoise, latents, steps, solver):
    """Karras et al. Algorithm 2 without churn, written out of place in float64 (as edm's sampler)."""
    t = sigma_steps(steps).tolist()
    x = latents.double() * t[0]
    for t_cur, t_next in zip(t[:-1], t[1:]):
        d = (x - denoise(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d
        if solver == "heun" and t_next > 0:
            x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * (x_next - denoise(x_next, t_next)) / t_next)
        x = x_next
    return x


def _reference_dpm2m(denoise, latents, steps, sigma_min, sigma_max, rho, stop_at_sigma_min=False):
    """k-diffusion's `sample_dpmpp_2m` in EDM's σ-parametrisation, written out of place in float64 (to σ_min and
    no further with `stop_at_sigma_min`)."""
    t = sigma_steps(steps, sigma_min, sigma_max, rho).tolist()
    x, old = latents.double() * t[0], None
    for i in range(steps - 1 if stop_at_sigma_min else steps):
        denoised = denoise(x, t[i]).double()
        if old is None or t[i + 1] == 0:
            x = denoised if t[i + 1] == 0 else (t[i + 1] / t[i]) * x - math.expm1(-math.log(t[i] / t[i + 1])) * denoised
        else:
            h, h_last = math.log(t[i] / t[i + 1]), math.log(t[i - 1] / t[i])
            r = h_last / h
            corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (t[i + 1] / t[i]) * x - math.expm1(-h) * corrected
        old = denoised
    return x


def test_dpm2m_matches_k_diffusion_out_of_place_and_is_second_order():
    latents = torch.randn(2, 1, 12, 16, generator=torch.Generator().manual_seed(6))
    target = torch.randn(2, 1, 12, 16, generator=torch.Generator().manual_seed(7))

    def denoise(x, sigma):
        return (0.25 / (sigma**2 + 0.25) * torch.tanh(x) + target * sigma / (sigma + 1)).float()

    workspace = Workspace()
    out = edm_sample(denoise, latents, steps=6, solver="dpm2m", sigma_min=0.01, sigma_max=20.0, rho=5.0, workspace=workspace)
    torch.testing.assert_close(out, _reference_dpm2m(denoise, latents, 6, 0.01, 20.0, 5.0), rtol=1e-12, atol=1e-12)
    assert workspace.nbytes() == 4 * latents.numel() * 8
    # on a Gaussian, whose flow map is known, halving the step quarters the error, and it beats Euler by far
    mu, s, sigma_max = 0.3, 0.5, 80.0
    z = torch.randn(20000, generator=torch.Generator().manual_seed(8))
    exact = mu + s / math.sqrt(s**2 + sigma_max**2) * (sigma_max * z - mu)
    error = {(solver, n): float((edm_sample(_gaussian_denoiser(mu, s), z, steps=n, solver=solver, sigma_max=sigma_max)
                                  - exact).abs().max()) for solver in ("dpm2m", "euler") for n in (32, 64)}
    assert 3 < error["dpm2m", 32] / error["dpm2m", 64] < 5
    assert error["euler", 64] > 5 * error["dpm2m", 64]


@pytest.mark.parametrize("solver,steps,to_zero,calls", [
    ("heun", 18, True, 35), ("heun", 1, True, 1), ("euler", 4, True, 4), ("dpm2m", 4, True, 4),
    ("heun", 18, False, 34), ("euler", 4, False, 3), ("dpm2m", 4, False, 3), ("euler", 1, False, 1),
])
def test_network_evaluations_are_counted_as_the_sampler_makes_them(solver, steps, to_zero, calls):
    made = []

    def denoise(x, sigma):
        made.append(sigma)
        return 0.25 / (sigma**2 + 0.25) * x

    edm_sample(denoise, torch.randn(3, 5), steps=steps, solver=solver, churn=2.0, randn_like=torch.randn_like,
               denoise_to_zero=to_zero)
    settings = SamplerSettings(solver=solver, steps=steps, denoise_to_zero=to_zero)
    assert len(made) == calls == evaluations(steps, solver, to_zero) == settings.evaluations
    if not to_zero and steps > 1 and solver != "heun":  # (Heun's last correction is at σ_min)
        assert min(made) > 0.002  # the evaluation at σ_min is the one left out


def test_stopping_at_sigma_min_leaves_out_only_a_near_identity_evaluation():
    """Without denoise_to_zero the sampler returns the state at σ_min (k-diffusion's update, out of place, stopped
    there); on a Gaussian the skipped step D(x; σ_min) - x = -σ_min²/(s² + σ_min²)(x - mu) is all that differs."""
    latents = torch.randn(2, 1, 12, 16, generator=torch.Generator().manual_seed(11))
    mu, s = 0.2, 0.5
    denoise = _gaussian_denoiser(mu, s)
    options = {"steps": 4, "solver": "dpm2m", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
    stopped = edm_sample(denoise, latents, denoise_to_zero=False, **options)
    torch.testing.assert_close(stopped, _reference_dpm2m(denoise, latents, 4, 0.002, 80.0, 7.0, stop_at_sigma_min=True),
                               rtol=1e-12, atol=1e-12)
    full = edm_sample(denoise, latents, **options)
    torch.testing.assert_close(full - stopped, -0.002**2 / (s**2 + 0.002**2) * (stopped - mu), rtol=1e-9, atol=1e-15)
    assert float((full - stopped).abs().max()) > 0


@pytest.mark.parametrize("s", [0.3, 0.5, 1.0])
def test_the_default_few_step_sampler_keeps_a_gaussians_variance(s):
    """With the exact posterior mean of Gaussian data as the network, the default sampler's ODE part (residual
    scale 1) reproduces the analytic variance s² σ_max² / (s² + σ_max²) of the flow map within 15 %, where Euler
    with as many evaluations collapses towards the mean."""
    from nrt import config
    from nrt.model.inference import sampler_settings

    settings = sampler_settings(config.ModelConfig())
    sigma_min, sigma_max = settings.noise_range(0.002, 800.0)
    z = torch.randn(50000, generator=torch.Generator().manual_seed(3))
    exact_std = s * sigma_max / math.sqrt(s**2 + sigma_max**2)
    options = {"sigma_min": sigma_min, "sigma_max": sigma_max, "rho": settings.rho, "steps": settings.steps,
               "denoise_to_zero": settings.denoise_to_zero}
    few = edm_sample(_gaussian_denoiser(0.0, s), z, solver=settings.solver, **options)
    euler = edm_sample(_gaussian_denoiser(0.0, s), z, solver="euler", **options)
    assert settings.evaluations <= 4
    assert float(few.std()) == pytest.approx(exact_std, rel=0.15)
    assert float(euler.std()) < 0.6 * exact_std


def test_settings_keep_the_noise_range_within_the_checkpoints():
    assert SamplerSettings().noise_range(0.002, 800.0) == (0.002, 800.0)
    assert SamplerSettings(sigma_min=0.02, sigma_max=10.0).noise_range(0.002, 800.0) == (0.02, 10.0)
    assert SamplerSettings(sigma_min=0.0001, sigma_max=1000.0).noise_range(0.002, 80.0) == (0.002, 80.0)
    with pytest.raises(ValueError, match="noise range is empty"):
        SamplerSettings(sigma_min=100.0).noise_range(0.002, 80.0)
    with pytest.raises(ValueError, match="unknown solver"):
        evaluations(4, "dpm3")
    assert SamplerSettings().describe() == "heun 18 steps (35 network evaluations)"
    assert SamplerSettings(solver="dpm2m", steps=4, residual_scale=1.18).describe() == \
        "dpm2m 4 steps (4 network evaluations), residual x 1.18"
    assert SamplerSettings(solver="dpm2m", steps=4, denoise_to_zero=False).describe() == \
        "dpm2m 4 steps (3 network evaluations), stops at sigma_min"
    with pytest.raises(ValueError, match="at least one step"):
        evaluations(0, "dpm2m")


def test_a_runs_steps_and_solver_override_only_those_settings():
    configured = SamplerSettings(solver="dpm2m", steps=4, sigma_max=80.0, residual_scale=1.18, denoise_to_zero=False)
    assert configured.overridden() == configured
    heun = configured.overridden(steps=18, solver="heun")
    assert (heun.solver, heun.steps, heun.sigma_max, heun.residual_scale) == ("heun", 18, 80.0, 1.18)
    assert heun.evaluations == 34 and configured.overridden(solver="euler").evaluations == 3


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_in_place_sampler_matches_the_out_of_place_algorithm_and_reuses_its_buffers(solver):
    latents = torch.randn(3, 1, 20, 30, generator=torch.Generator().manual_seed(4))
    target = torch.randn(3, 1, 20, 30, generator=torch.Generator().manual_seed(5))
    seen = []

    def denoise(x, sigma):  # nonlinear in x, returns float32 as the network does
        seen.append((x.data_ptr(), x.dtype))
        return (0.25 / (sigma**2 + 0.25) * torch.tanh(x) + target * sigma / (sigma + 1)).float()

    workspace = Workspace()
    first = edm_sample(denoise, latents, steps=7, solver=solver, workspace=workspace)
    assert first.dtype == torch.float64
    torch.testing.assert_close(first, _reference_edm_sample(denoise, latents, 7, solver), rtol=1e-12, atol=1e-12)
    seen.clear()
    kept = workspace.nbytes()
    edm_sample(denoise, latents, steps=7, solver=solver, workspace=workspace)
    assert workspace.nbytes() == kept == 4 * latents.numel() * 8  # four float64 state buffers, allocated once
    assert {dtype for _, dtype in seen} == {torch.float64}
    assert len({pointer for pointer, _ in seen}) == 2  # the state alternates between two buffers


def test_member_noise_does_not_depend_on_the_ensemble_size():
    small = StackedRandomGenerator("cpu", 123, members=10).randn((10, 1, 8, 9))
    large = StackedRandomGenerator("cpu", 123, members=30).randn((30, 1, 8, 9))
    assert torch.equal(small, large[:10])
    assert not torch.equal(large[0], large[1])
    other = StackedRandomGenerator("cpu", 124, members=10).randn((10, 1, 8, 9))
    assert not torch.equal(small[0], other[0])
    assert member_seed(123, 4) != member_seed(124, 4) and member_seed(123, 4) != member_seed(123, 5)
    out = torch.empty(10, 1, 8, 9)
    assert StackedRandomGenerator("cpu", 123, members=10).randn(out.shape, out=out) is out and torch.equal(out, small)
    with pytest.raises(ValueError, match="3 rows requested from 10"):
        StackedRandomGenerator("cpu", 123, members=10).randn((3, 4))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 32, 20, 28), (1, 1, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_nearest_upsample_by_broadcast_is_bit_identical_to_interpolate(shape, channels_last):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, theirs = upsample_nearest2x(x), F.interpolate(x, scale_factor=2, mode="nearest")
    assert torch.equal(ours, theirs)
    assert ours.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("dtype,cells", [(torch.bfloat16, (10, 14)), (torch.bfloat16, (40, 56)), (torch.float32, (10, 14))])
def test_group_norm_keeps_values_and_the_channels_last_layout(dtype, cells):
    """Small bf16 channels_last maps are normalised in the contiguous layout (a speed matter, docs/benchmarks.md);
    every path keeps float32 GroupNorm's values within the dtype's rounding, and the channels_last layout that the
    next convolution expects."""
    norm = GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(generator=torch.Generator().manual_seed(1))
        norm.bias.normal_(generator=torch.Generator().manual_seed(2))
    x = (torch.randn(6, 16, *cells, generator=torch.Generator().manual_seed(3)) + 0.7).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = norm(x)
        reference = F.group_norm(x.float().contiguous(), 4, norm.weight, norm.bias, 1e-6)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    tolerance = {"rtol": 1e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out.float(), reference, **tolerance)


def test_extract_and_blend_into_given_buffers_equal_the_allocating_calls():
    grid = PatchGrid(40, 90, 32, 8)
    x = torch.randn(3, 2, 40, 90, dtype=torch.float64)
    tiles = torch.empty(3 * len(grid), 2, *grid.tile)  # float32: the copy rounds the float64 state
    assert grid.extract(x, out=tiles) is tiles
    torch.testing.assert_close(tiles, grid.extract(x).float(), rtol=0, atol=0)
    blended = torch.full((3, 2, 40, 90), float("nan"))  # stale contents must not leak into the blend
    assert grid.blend(tiles * 2, out=blended) is blended
    torch.testing.assert_close(blended, grid.blend(tiles * 2))
    torch.testing.assert_close(blended, 2 * x.float())


@pytest.mark.parametrize("length,patch,overlap", [(66, 64, 8), (132, 64, 8), (1160, 64, 8), (100, 32, 4), (64, 64, 8), (65, 32, 31)])
def test_axis_starts_cover_with_at_least_the_requested_overlap(length, patch, overlap):
    starts = axis_starts(length, patch, overlap)
    assert starts[0] == 0 and starts[-1] + patch == length
    assert all(a + patch - b >= overlap for a, b in zip(starts, starts[1:]))


def test_blending_every_step_equals_full_domain_sampling_for_a_pointwise_denoiser():
    gen = torch.Generator().manual_seed(3)
    height, width = 70, 133
    cond = torch.randn(2, 1, height, width, generator=gen)
    latents = torch.randn(2, 1, height, width, generator=gen)

    def denoise_full(x, sigma, condition=cond):  # translation-equivariant and local: y = a(σ) x + b(σ) cond
        return 0.25 / (sigma**2 + 0.25) * x + 0.5 * condition * sigma / (sigma + 1)

    grid = PatchGrid(height, width, 32, 6)
    cond_tiles = grid.extract(cond)

    def denoise_patched(x, sigma):
        return grid.blend(denoise_full(grid.extract(x), sigma, cond_tiles))

    full = edm_sample(denoise_full, latents, steps=12)
    patched = edm_sample(denoise_patched, latents, steps=12)
    torch.testing.assert_close(patched, full, rtol=1e-5, atol=1e-5)
    assert grid.shape == (height, width) and len(grid) == 3 * 5 and max(grid.tile) <= 32


def test_blend_of_extract_is_identity_and_weights_taper_in_overlaps():
    x = torch.randn(3, 2, 40, 90)
    grid = PatchGrid(40, 90, 32, 8)
    torch.testing.assert_close(grid.blend(grid.extract(x)), x)
    # a seam-free blend: a patch's weight falls towards its interior edges
    window = grid._window[0]
    assert window[0, 0] == 1 and window[-1, -1] < 0.2 and window[4, 4] == 1


@pytest.mark.parametrize("length,expected", [(66, 40), (132, 56), (520, 64), (1160, 64), (64, 64), (10, 16), (65, 40)])
def test_tiles_shrink_to_the_fewest_that_cover_an_axis(length, expected):
    tile = tile_length(length, 64, 8, multiple=8 if length != 520 and length != 1160 else 16)
    assert tile == expected and tile <= 64
    if length > tile:
        starts = axis_starts(length, tile, 8)
        assert len(starts) == math.ceil((length - 8) / (64 - 8))  # no more tiles than 64-cell ones would need


def test_a_domain_smaller_than_a_tile_is_padded_then_cropped():
    grid = PatchGrid(10, 14, 32, 4, multiple=8)
    assert grid.shape == (16, 16) and grid.tile == (16, 16) and len(grid) == 1
    x = torch.randn(2, 3, 10, 14)
    padded = grid.pad(x)
    assert padded.shape == (2, 3, 16, 16) and torch.equal(padded[..., 15, 15], x[..., 9, 13])
    torch.testing.assert_close(grid.crop(grid.blend(grid.extract(padded))), x)


def test_pad_to_replicates_edges():
    x = torch.arange(6.0).reshape(1, 2, 3)
    out = pad_to(x, 4, 5)
    assert out.shape == (1, 4, 5)
    assert out[0, 3, 4] == 5 and out[0, 0, 4] == 2 and out[0, 3, 0] == 3


def test_patch_sampler_draws_only_where_the_mask_covers_enough():
    masks = np.zeros((3, 40, 50), dtype=bool)
    masks[1, 5:30, 10:40] = True  # a swath-like block in sample 1 only
    sampler = PatchSampler(masks, 16, 0.9)
    rng = np.random.default_rng(0)
    for sample, r, c in sampler.draw(rng, 200):
        assert sample == 1
        assert masks[sample, r : r + 16, c : c + 16].mean() >= 0.9
    with pytest.raises(ValueError, match="coverage"):
        PatchSampler(np.zeros((2, 40, 50), dtype=bool), 16, 0.1)


def test_masked_losses_ignore_cells_outside_the_mask():
    gen = torch.Generator().manual_seed(4)
    pred, target = torch.randn(4, 1, 16, 16, generator=gen), torch.randn(4, 1, 16, 16, generator=gen)
    mask = torch.rand(4, 1, 16, 16, generator=gen) > 0.5
    expected = float(((pred - target)[mask] ** 2).mean())
    assert float(regression_loss(pred, target, mask)) == pytest.approx(expected, rel=1e-6)
    polluted = torch.where(mask, target, torch.full_like(target, float("nan")))
    assert float(regression_loss(pred, polluted, mask)) == pytest.approx(expected, rel=1e-6)

    loss = EDMLoss(p_mean=0.0, p_std=1.2, sigma_data=0.5)
    sigma = torch.tensor([0.1, 0.5, 3.0])
    np.testing.assert_allclose(loss.weight(sigma).numpy(), ((sigma**2 + 0.25) / (sigma * 0.5) ** 2).numpy())

    def perfect(x, s, c, lead):  # a denoiser that knows the clean residual
        return target

    assert float(loss(perfect, polluted, None, None, mask, generator=gen)) == 0.0

    class Scaled:
        """D = c_skip x + c_out·k: then the weighted loss has a closed form per sigma."""

        def __call__(self, x, s, c, lead):
            self.sigma = s
            return torch.zeros_like(x)

    zero = Scaled()
    value = float(loss(zero, polluted, None, None, mask, generator=torch.Generator().manual_seed(5)))
    w = loss.weight(zero.sigma).reshape(-1, 1, 1, 1)
    manual = float((w * torch.where(mask, target, 0) ** 2)[mask.expand_as(target)].mean())
    assert value == pytest.approx(manual, rel=1e-5)


def test_training_sigma_is_lognormal_with_p_mean_and_p_std():
    loss = EDMLoss(p_mean=0.0, p_std=1.2)
    seen = []

    def record(x, s, c, lead):
        seen.append(s)
        return x

    residual = torch.zeros(50000, 1, 1, 1)
    loss(record, residual, None, None, torch.ones_like(residual, dtype=torch.bool), generator=torch.Generator().manual_seed(6))
    log_sigma = seen[0].log()
    assert float(log_sigma.mean()) == pytest.approx(0.0, abs=0.03)
    assert float(log_sigma.std()) == pytest.approx(1.2, rel=0.02)


def test_precip_transforms_invert_and_clip():
    rates = np.array([0.0, 0.05, 0.3, 1.0, 7.5, 120.0], dtype=np.float32)
    for kind in ("log1p", "power"):
        t = PrecipTransform(kind=kind, epsilon=0.5, power=0.4)
        np.testing.assert_allclose(t.inverse(t.forward(rates)), rates, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(t.inverse(t.forward(torch.from_numpy(rates))), torch.from_numpy(rates), rtol=1e-5, atol=1e-6)
        assert t.inverse(np.array([-0.3]))[0] == 0.0
        assert np.isnan(t.forward(np.array([np.nan]))[0])
    np.testing.assert_allclose(PrecipTransform("log1p", 2.0).forward(np.array([6.0])), [math.log(4.0)])


def test_channel_stats_match_numpy_over_valid_masked_cells():
    rng = np.random.default_rng(7)
    arrays = [rng.normal([[[3.0]], [[-1.0]]], [[[2.0]], [[0.5]]], size=(2, 20, 30)) for _ in range(4)]
    arrays[1][0, :5] = np.nan
    masks = [rng.random((20, 30)) > 0.3 for _ in range(4)]
    stats = ChannelStats.fit(["a", "b"], arrays, masks)
    for c in range(2):
        values = np.concatenate([a[c][m] for a, m in zip(arrays, masks)])
        values = values[np.isfinite(values)]
        assert stats.mean[c] == pytest.approx(values.mean(), rel=1e-10)
        assert stats.std[c] == pytest.approx(values.std(), rel=1e-8)
    z = stats.apply(arrays[1].astype(np.float32))
    assert np.all(z[0, :5] == 0)  # missing becomes the mean
    np.testing.assert_allclose(stats.invert(z)[1], arrays[1][1], rtol=1e-5, atol=1e-5)
    again = ChannelStats.from_dict(stats.to_dict())
    assert again.names == stats.names and np.array_equal(again.mean, stats.mean) and np.array_equal(again.std, stats.std)
    constant = ChannelStats.fit(["c"], [np.ones((1, 4, 4))])
    assert constant.std[0] == 1.0


def test_network_sizes_demo_and_production():
    demo = SongUNet(NetworkSpec(in_channels=17, model_channels=32, channel_mult=(1, 2, 2), num_blocks=1))
    assert 0.8e6 < parameter_count(demo) < 1.6e6
    with torch.device("meta"):  # count the production network without allocating 320 MB
        production = SongUNet(NetworkSpec(in_channels=19, model_channels=128, channel_mult=(1, 2, 2, 2, 2), num_blocks=4))
    assert 75e6 < parameter_count(production) < 85e6
    has = {type(m).__name__ for m in production.modules()}
    assert {"GroupNorm", "Attention", "UNetBlock", "NoiseEmbedding", "Embedding"} <= has
    attention_channels = {m.proj.in_channels for m in production.modules() if type(m).__name__ == "Attention"}
    assert attention_channels == {256}  # only at the coarsest level (mult 2 x 128)


def test_network_uses_noise_level_and_lead():
    torch.manual_seed(0)
    net = SongUNet(NetworkSpec(in_channels=3, model_channels=16, channel_mult=(1, 2), num_blocks=1))
    for p in net.parameters():  # leave the zero-initialised identity start so outputs depend on everything
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 16, 24)
    base = net(x, torch.zeros(2), torch.tensor([0, 0]))
    assert base.shape == (2, 1, 16, 24)
    assert not torch.allclose(base, net(x, torch.ones(2), torch.tensor([0, 0])))
    assert not torch.allclose(base, net(x, torch.zeros(2), torch.tensor([5, 5])))
    # batch independence: sample 0 does not see sample 1
    torch.testing.assert_close(net(x[:1], torch.zeros(1), torch.tensor([0]))[0], base[0], rtol=1e-4, atol=1e-5)


FAULTS_OF_REPEATED_CALLS = """
import resource, sys, threading, torch
from nrt.model import allocator
if sys.argv[1] == "retain":
    assert allocator.retain_freed_memory()
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(8, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(32, 8, 3, padding=1))
x = torch.randn(64, 8, 96, 96)  # 72 MiB activations: above a thread arena's 64 MiB heaps, like the demo's widest
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.no_grad():
        net(x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
counts = []  # the calls run in a thread, as the worker runs its jobs
job = threading.Thread(target=lambda: counts.extend(faults() for _ in range(8)))
job.start()
job.join()
print(*counts)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_activations_are_reused_instead_of_paged_in_again():
    # A fresh interpreter each: the settings are per process, and earlier tests' heap would hide the effect.
    def faults(mode: str) -> list[int]:
        run = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_CALLS, mode], capture_output=True, text=True,
                             check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        return [int(v) for v in run.stdout.split()]

    retained, default = faults("retain"), faults("default")
    assert retained[0] > 5000  # the first call pages its activations in: the measurement can see faults
    # Once the heap has reached its high-water mark (one or two calls), later calls reuse the freed blocks,
    assert statistics.median(retained[2:]) < 1000
    # where glibc's default unmaps them on free and pages them in again at every call.
    assert statistics.median(default[2:]) > 5000


def test_the_residual_scale_by_rate_interpolates_in_log_one_plus_rate_and_holds_beyond_its_ends():
    settings = SamplerSettings(residual_scale=1.1, residual_scale_by_rate=((0.1, 2.0), (3.0, 1.2), (30.0, 1.0)))
    rates = np.array([0.0, 0.1, 1.0, 3.0, 10.0, 30.0, 500.0])
    expected = np.array([2.0, 2.0, 2.0 - 0.8 * (math.log(2.0) - math.log(1.1)) / (math.log(4.0) - math.log(1.1)), 1.2,
                         1.2 - 0.2 * (math.log(11.0) - math.log(4.0)) / (math.log(31.0) - math.log(4.0)), 1.0, 1.0])
    np.testing.assert_allclose(settings.residual_scales(rates), 1.1 * expected, rtol=1e-12)
    assert SamplerSettings(residual_scale=1.18).residual_scales(rates) == 1.18  # no pairs: the one scale
    assert settings.describe().endswith("residual x 1.1, by rate 0.1:2 3:1.2 30:1")
