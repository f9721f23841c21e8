"""Checkpoints (round trip, refusal of tampered or mismatched files) and the Downscaler contract."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from model_helpers import GRID, coarsen, rain_field, train_tiny
from nrt import config
from nrt.errors import ConfigError, DataError
from nrt.grids import LatLonGrid
from nrt.model import checkpoint
from nrt.model.conditioning import Conditioning
from nrt.model.inference import WEIGHTS_DIR, Downscaler, bf16_native, resolve, sampler_settings
from nrt.model.sampler import edm_sample


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    cfg, _, output = train_tiny(tmp_path_factory.mktemp("trained"), (30, 30))
    return cfg, output


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_checkpoint_round_trip_records_the_file_hash(tmp_path):
    tensors = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    meta = {"model": {"x": [1, 2]}, "provenance": {"created": "2025-01-01T00:00:00Z"}}
    digest = checkpoint.save(tmp_path / "m.safetensors", tensors, meta)
    weights = tmp_path / "m.safetensors"
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["sha256"] == digest and sidecar["model"] == {"x": [1, 2]}
    for name in ("m", "m.json", "m.safetensors"):
        loaded = checkpoint.load(tmp_path / name)
        assert loaded.meta == meta and loaded.sha256 == digest
        torch.testing.assert_close(loaded.tensors["a.weight"], tensors["a.weight"])
        assert torch.equal(loaded.tensors["b"], tensors["b"])
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_tampered_weights_are_refused_with_one_line(tmp_path):
    checkpoint.save(tmp_path / "m", {"w": torch.ones(100)}, {"model": {}})
    weights = tmp_path / "m.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0x40
    weights.write_bytes(bytes(raw))
    with pytest.raises(DataError) as exc:
        checkpoint.load(weights)
    assert "sha256" in _one_line(exc) and "m.safetensors" in str(exc.value)


def test_a_sidecar_from_another_checkpoint_is_refused(tmp_path):
    checkpoint.save(tmp_path / "a", {"w": torch.ones(4)}, {"model": {"size": 1}})
    checkpoint.save(tmp_path / "b", {"w": torch.zeros(4)}, {"model": {"size": 2}})
    (tmp_path / "a.json").write_bytes((tmp_path / "b.json").read_bytes())
    with pytest.raises(DataError) as exc:
        checkpoint.load(tmp_path / "a")
    assert "differs" in _one_line(exc)
    # a sidecar edited to describe another model but keeping the right hash
    described = json.loads((tmp_path / "b.json").read_text())
    described["model"] = {"size": 3}
    (tmp_path / "b.json").write_text(json.dumps(described))
    with pytest.raises(DataError) as exc:
        checkpoint.load(tmp_path / "b")
    assert "different model" in _one_line(exc)


def test_pickles_are_never_loaded(tmp_path):
    for name in ("m.pt", "m.pth", "m.ckpt"):
        with pytest.raises(DataError) as exc:
            checkpoint.load(tmp_path / name)
        assert "pickle" in _one_line(exc)
    # a pickle disguised as safetensors, with a sidecar that even has its hash
    disguised = tmp_path / "evil.safetensors"
    torch.save({"w": torch.ones(3)}, disguised)
    digest = hashlib.sha256(disguised.read_bytes()).hexdigest()
    (tmp_path / "evil.json").write_text(json.dumps({"sha256": digest, "weights": disguised.name}))
    with pytest.raises(DataError) as exc:
        checkpoint.load(disguised)
    assert "safetensors" in _one_line(exc)


def test_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError) as exc:
        checkpoint.load(tmp_path / "absent")
    assert "sidecar is missing" in _one_line(exc)
    with pytest.raises(DataError):
        Downscaler.load("builtin:no-such-model", "cpu")
    assert resolve("builtin:demo") == WEIGHTS_DIR / "demo"


def test_weights_that_do_not_fit_the_config_are_refused(trained, tmp_path):
    cfg, path = trained
    ckpt = checkpoint.load(path)
    meta = json.loads(json.dumps(ckpt.meta))
    meta["model"]["diffusion"]["model_channels"] = 16
    checkpoint.save(tmp_path / "bad", ckpt.tensors, meta)
    with pytest.raises(DataError) as exc:
        Downscaler.load(tmp_path / "bad", "cpu", cfg.model)
    assert "do not fit" in _one_line(exc)


def _conditioning(seed=0, shape=(32, 48), members=1, lead=1):
    rng = np.random.default_rng(seed)
    grid = LatLonGrid(0.05, GRID.lat0, GRID.lon0, *shape)
    coarse = np.stack([coarsen(rain_field(rng, shape)) for _ in range(members)])
    return Conditioning(coarse, grid, lead=lead)


def test_downscaler_samples_members_reproducibly(trained):
    cfg, path = trained
    ds = Downscaler.load(path, "cpu", cfg.model)
    cond = _conditioning()
    out = ds.sample(cond, members=4, seed=11, steps=6)
    assert out.shape == (4, 32, 48) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= 0
    assert np.array_equal(out, ds.sample(cond, members=4, seed=11, steps=6))
    assert not np.array_equal(out, ds.sample(cond, members=4, seed=12, steps=6))
    assert out.std(axis=0).mean() > 0  # members differ
    euler = ds.sample(cond, members=2, seed=11, steps=6, solver="euler")
    assert euler.shape == (2, 32, 48)
    mean = ds.regression_mean(cond)
    assert mean.shape == (1, 32, 48) and mean.min() >= 0


def test_downscaler_handles_any_domain_size_and_missing_input(trained):
    cfg, path = trained
    ds = Downscaler.load(path, "cpu", cfg.model)
    for shape in ((10, 14), (34, 50), (16, 80)):  # smaller than a patch, not a multiple of it, one patch row
        out = ds.sample(_conditioning(shape=shape), members=2, seed=0, steps=3)
        assert out.shape == (2, *shape) and np.all(np.isfinite(out))
    cond = _conditioning()
    cond.precip[0, 5, 7] = np.nan
    out = ds.sample(cond, members=2, seed=0, steps=3)
    missing = np.isnan(out[0])
    assert missing[10:12, 14:16].all()  # the coarse cell's own 2x2 fine cells
    assert missing.sum() <= 16 and np.isnan(out[1]).sum() == missing.sum()


def test_member_i_follows_nowcast_member_i(trained):
    cfg, path = trained
    ds = Downscaler.load(path, "cpu", cfg.model)
    cond = _conditioning(members=2)
    cond.precip[0] = 0.0  # member 0 of the nowcast is dry
    cond.precip[1] = np.maximum(cond.precip[1], 5.0)  # member 1 is wet everywhere
    out = ds.sample(cond, members=4, seed=3, steps=6)
    assert out[[0, 2]].mean() < out[[1, 3]].mean()


def test_patch_options_are_checked(trained):
    cfg, path = trained
    for update in ({"patch_size": 17}, {"patch_overlap": 16}, {"patch_overlap": 3}):
        with pytest.raises(ConfigError):
            Downscaler.load(path, "cpu", cfg.model.model_copy(update=update))


def test_the_shipped_demo_checkpoint_loads_verifies_and_samples_the_demo_domain():
    from nrt.grids import target_grid

    cfg = config.load(None)
    ds = Downscaler.load(cfg.model.checkpoint, "cpu", cfg.model)
    assert cfg.model.checkpoint == "builtin:demo"
    assert ds.sha256 == json.loads((WEIGHTS_DIR / "demo.json").read_text())["sha256"]
    assert ds.config["provenance"]["config_file"].endswith("train-demo.toml")
    names = ds.spec.channels.names()
    assert names[:2] == ["precip", "precip_random_error"] and "dem_mean" in names and "geosfp_TQV" in names
    grid = target_grid(cfg.domain.box())
    rng = np.random.default_rng(5)
    coarse = np.stack([coarsen(rain_field(rng, grid.shape))])
    out = ds.sample(Conditioning(coarse, grid, lead=3), members=2, seed=0, steps=2)  # GEOS-FP, DEM absent: degraded
    assert out.shape == (2, 66, 132) and np.all(np.isfinite(out)) and out.min() >= 0


def _demo_downscaler(**update):
    cfg = config.load(None)
    return Downscaler.load(cfg.model.checkpoint, "cpu", cfg.model.model_copy(update={"patch_size": 32, "patch_overlap": 8, **update}))


def _reference_conditioning():
    grid = LatLonGrid(0.05, 41.025, -95.975, 36, 60)
    rng = np.random.default_rng(5)
    return Conditioning(np.stack([coarsen(rain_field(rng, grid.shape)) for _ in range(2)]), grid, lead=3)


@pytest.mark.parametrize("solver,steps,channels_last", [("heun", 6, False), ("euler", 4, False), ("heun", 6, True)])
def test_sampling_reproduces_the_recorded_reference_on_the_demo_checkpoint(solver, steps, channels_last):
    """tests/data/demo_sample_reference.npz: the in-place, float64 sampler's output on the shipped demo checkpoint
    (6 tiles of 24 x 32, 2 nowcast members, 3 ensemble members). That sampler matched the implementation before it
    (commit e77b349: float32 state, fresh tensors each step) to rtol 5e-4 on the checkpoint of the time; the
    reference was re-recorded when the checkpoint was retrained on real rain. channels_last must not change it.
    The reference is EDM's plain schedule over the checkpoint's whole noise range, unscaled, in float32, whatever
    the config's default sampler and precision are."""
    ds = _demo_downscaler(channels_last=channels_last, bf16=False, sampler_sigma_min=None, sampler_sigma_max=None, sampler_rho=7.0,
                          residual_scale=1.0, residual_scale_by_rate=[], churn=0.0, sampler_denoise_to_zero=True)
    reference = np.load(WEIGHTS_DIR.parents[2] / "tests" / "data" / "demo_sample_reference.npz")[solver]
    out = ds.sample(_reference_conditioning(), members=3, seed=7, steps=steps, solver=solver)
    np.testing.assert_allclose(out, reference, rtol=5e-4, atol=5e-5)
    assert out.std(axis=0).mean() > 100 * 5e-5  # the tolerance is far below the ensemble spread


def test_member_i_does_not_depend_on_the_ensemble_size():
    ds = _demo_downscaler(max_batch=64)  # batches of other sizes, split differently: equal to float tolerance only
    cond = _reference_conditioning()
    ten = ds.sample(cond, members=10, seed=21)  # the default sampler
    thirty = ds.sample(cond, members=30, seed=21)
    np.testing.assert_allclose(thirty[:10], ten, rtol=1e-4, atol=1e-6)
    assert np.abs(thirty[10:20] - ten).max() > 1e-3  # later members are new draws, not repeats
    assert np.abs(ds.sample(cond, members=10, seed=22) - ten).max() > 1e-3
    churned = _demo_downscaler(max_batch=64, churn=2.0)  # churn noise comes from the members' generators too
    np.testing.assert_allclose(churned.sample(cond, members=30, seed=21)[:10], churned.sample(cond, members=10, seed=21),
                               rtol=1e-4, atol=1e-6)


def test_the_noise_range_comes_from_the_checkpoint(trained, tmp_path, monkeypatch, caplog):
    cfg, path = trained
    ckpt = checkpoint.load(path)
    assert (ckpt.meta["model"]["sigma_min"], ckpt.meta["model"]["sigma_max"]) == (cfg.train.sigma_min, cfg.train.sigma_max)
    meta = json.loads(json.dumps(ckpt.meta))
    meta["model"].update(sigma_min=0.01, sigma_max=80.0)
    checkpoint.save(tmp_path / "narrow.safetensors", ckpt.tensors, meta)
    seen = []

    def spy(*args, **kwargs):
        seen.append((kwargs["sigma_min"], kwargs["sigma_max"]))
        return edm_sample(*args, **kwargs)

    monkeypatch.setattr("nrt.model.inference.edm_sample", spy)
    full_range = cfg.model.model_copy(update={"sampler_sigma_min": None, "sampler_sigma_max": None})
    Downscaler.load(tmp_path / "narrow.safetensors", "cpu", full_range).sample(_conditioning(), members=2, steps=2)
    Downscaler.load(path, "cpu", full_range).sample(_conditioning(), members=2, steps=2)
    assert seen == [(0.01, 80.0), (cfg.train.sigma_min, cfg.train.sigma_max)]
    # the sampler's own levels apply within the checkpoint's range, never beyond it
    capped = cfg.model.model_copy(update={"sampler_sigma_min": 0.001, "sampler_sigma_max": 20.0})
    Downscaler.load(tmp_path / "narrow.safetensors", "cpu", capped).sample(_conditioning(), members=2, steps=2)
    assert seen[-1] == (0.01, 20.0)
    # the shipped demo records the range it was trained with (the training defaults) and loads without a warning
    with caplog.at_level("WARNING", logger="nrt.model.inference"):
        demo = Downscaler.load("builtin:demo", "cpu")
    assert caplog.text == ""
    assert (demo.spec.sigma_min, demo.spec.sigma_max) == (config.TrainConfig().sigma_min, config.TrainConfig().sigma_max)
    # a checkpoint from before the range was recorded falls back to the training defaults, and says so
    older = json.loads(json.dumps(ckpt.meta))
    del older["model"]["sigma_min"], older["model"]["sigma_max"]
    checkpoint.save(tmp_path / "older.safetensors", ckpt.tensors, older)
    with caplog.at_level("WARNING", logger="nrt.model.inference"):
        fallback = Downscaler.load(tmp_path / "older.safetensors", "cpu")
    assert "records no sigma_min/sigma_max" in caplog.text and "using the training defaults 0.002 and 800" in caplog.text
    assert (fallback.spec.sigma_min, fallback.spec.sigma_max) == (config.TrainConfig().sigma_min, config.TrainConfig().sigma_max)
    bad = json.loads(json.dumps(ckpt.meta))
    bad["model"].update(sigma_min=5.0, sigma_max=1.0)
    checkpoint.save(tmp_path / "bad.safetensors", ckpt.tensors, bad)
    with pytest.raises(DataError, match="sigma_min < sigma_max"):
        Downscaler.load(tmp_path / "bad.safetensors", "cpu", cfg.model)


def test_the_default_sampler_makes_at_most_four_network_evaluations_per_sample():
    model_cfg = config.ModelConfig(device="cpu", patch_size=32, patch_overlap=8, max_batch=10**6)  # one call per evaluation
    ds = Downscaler.load("builtin:demo", "cpu", model_cfg)
    calls = []
    network = ds.diffusion_call

    def counting(*args):
        calls.append(args[1][0].item())  # the noise level of this call
        return network(*args)

    ds.diffusion_call = counting
    ds.sample(_reference_conditioning(), members=3, seed=7)
    assert len(calls) == ds.sampler.evaluations == sampler_settings(config.ModelConfig()).evaluations <= 4
    assert calls == sorted(calls, reverse=True)  # from high noise to low, each level once


def test_residual_scale_multiplies_the_sampled_residual_in_model_space():
    cond = _reference_conditioning()
    plain = _demo_downscaler(residual_scale=1.0, residual_scale_by_rate=[])
    scaled = _demo_downscaler(residual_scale=1.5, residual_scale_by_rate=[])
    one, wide = (ds.sample(cond, members=3, seed=4, steps=3, solver="dpm2m") for ds in (plain, scaled))
    mean = plain.regression_mean(cond)[np.arange(3) % 2]
    to_z = plain.spec.normalize_target
    kept = (one > 0) & (wide > 0) & (mean > 0)  # away from the clip at 0 mm/h, where z is not recoverable
    assert kept.mean() > 0.3
    np.testing.assert_allclose((to_z(wide) - to_z(mean))[kept], 1.5 * (to_z(one) - to_z(mean))[kept], rtol=1e-3, atol=2e-3)


def test_a_residual_scale_by_rate_multiplies_each_cells_residual_by_the_factor_of_its_regression_mean():
    cond = _reference_conditioning()
    plain = _demo_downscaler(residual_scale=1.0, residual_scale_by_rate=[])
    by_rate = _demo_downscaler(residual_scale=1.2, residual_scale_by_rate=[(0.5, 2.0), (5.0, 1.0)])
    one, varied = (ds.sample(cond, members=3, seed=4, steps=3, solver="dpm2m") for ds in (plain, by_rate))
    mean = plain.regression_mean(cond)[np.arange(3) % 2]
    factor = 1.2 * np.interp(np.log1p(mean), np.log1p([0.5, 5.0]), [2.0, 1.0])  # np.interp: constant beyond the ends
    to_z = plain.spec.normalize_target
    kept = (one > 0) & (varied > 0) & (mean > 0)
    assert kept.mean() > 0.3 and factor[kept].min() < 1.3 and factor[kept].max() > 2.3  # both ends are exercised
    np.testing.assert_allclose((to_z(varied) - to_z(mean))[kept], (factor * (to_z(one) - to_z(mean)))[kept],
                               rtol=2e-3, atol=3e-3)


@pytest.mark.parametrize("capabilities,native", [({"avx512_bf16": True, "amx_bf16": False}, True),
                                                 ({"avx512_bf16": False, "amx_bf16": True}, True),
                                                 ({"avx512_bf16": False, "amx_bf16": False}, False), ({}, False)])
def test_bf16_autocast_runs_on_the_cpu_only_where_the_cpu_has_bf16(monkeypatch, capabilities, native):
    """Without avx512_bf16 or amx_bf16 a CPU emulates bf16, slower than float32: the networks stay in float32 there."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert bf16_native(torch.device("cpu")) is native
    cond = _reference_conditioning()
    float32 = _demo_downscaler(bf16=False).sample(cond, members=3, seed=7)
    default = _demo_downscaler()
    assert default.autocast is native
    out = default.sample(cond, members=3, seed=7)
    if native:  # bf16 rounding shows, far below the ensemble spread
        assert 1e-4 < np.abs(out - float32).max() < 0.1 * float32.std(axis=0).max()
    else:
        np.testing.assert_array_equal(out, float32)
