"""The downscaling registry (`nrt.downscale`): methods by name, loading with the CSGD fallback, and the csgd method."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from nrt import config, downscale
from nrt.degradation import Fallback
from nrt.errors import ConfigError, DataError
from nrt.grids import Domain, imerg_grid, target_grid
from nrt.io import sha256_file
from nrt.model.conditioning import Conditioning
from nrt.model.inference import WEIGHTS_DIR

GRID = target_grid(Domain(-94.0, 41.0, -92.4, 42.2))


def test_registry_picks_methods_by_name_and_rejects_others_naming_the_key():
    assert downscale.get_method("diffusion") is downscale.diffusion
    assert downscale.get_method("csgd") is downscale.csgd
    with pytest.raises(ConfigError) as bad:
        downscale.get_method("bilinear")
    assert str(bad.value) == "model.method: unknown downscaling method 'bilinear' (known: csgd, diffusion)"
    with pytest.raises(ConfigError) as bad:
        config.from_dict({"model": {"method": "gan"}}, "nrt.toml")
    assert "\n" not in str(bad.value) and str(bad.value).startswith("nrt.toml: model.method:")


def model_options(tmp_path, **update):
    return config.ModelConfig(device="cpu", members=6, sampler_steps=2, solver="euler", **update)


def settings(members: int) -> downscale.DownscaleSettings:
    return downscale.downscale_settings(config.from_dict({"model": {"method": "csgd", "members": members}}))


def copy_demo(tmp_path):
    for suffix in (".json", ".safetensors"):
        shutil.copy(WEIGHTS_DIR / f"demo{suffix}", tmp_path / f"model{suffix}")
    return tmp_path / "model.safetensors"


def missing(path):
    path.unlink()


def bad_json(path):
    path.with_suffix(".json").write_text("{not json")


def bad_safetensors(path):
    """Garbage weights whose sha256 the sidecar agrees with, so the safetensors reader itself must refuse them."""
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + bytes(64))
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "sha256": sha256_file(path)}))


@pytest.mark.skipif(not (WEIGHTS_DIR / "demo.safetensors").is_file(), reason="the demo checkpoint is not shipped")
@pytest.mark.parametrize("damage", [missing, bad_json, bad_safetensors])
def test_an_unloadable_checkpoint_leaves_the_csgd_fallback_or_raises_when_it_is_off(tmp_path, damage):
    weights = copy_demo(tmp_path)
    damage(weights)
    models = downscale.load_models(model_options(tmp_path, checkpoint=str(weights)))
    assert models.diffusion is None and models.csgd is not None
    assert models.unavailable == Fallback.CHECKPOINT_UNLOADABLE and str(tmp_path) in models.error
    assert models.sha256 == models.csgd_sha256 and len(models.sha256) == 64
    assert downscale.choose(models) == ("csgd", Fallback.CHECKPOINT_UNLOADABLE)
    with pytest.raises(DataError):
        downscale.load_models(model_options(tmp_path, checkpoint=str(weights), fallback=False))


@pytest.mark.skipif(not (WEIGHTS_DIR / "demo.safetensors").is_file(), reason="the demo checkpoint is not shipped")
def test_a_loaded_model_runs_unless_a_caller_distrusts_it():
    models = downscale.load_models(model_options(None))
    assert models.unavailable is None and models.diffusion is not None
    assert downscale.choose(models) == ("diffusion", None)
    assert downscale.choose(models, "inputs_out_of_range") == ("csgd", "inputs_out_of_range")
    without = downscale.Models("diffusion", diffusion=models.diffusion)  # model.fallback off: nothing to fall back to
    assert downscale.choose(without, "inputs_out_of_range") == ("diffusion", None)


def test_a_bad_csgd_parameter_file_is_a_one_line_error_naming_it(tmp_path):
    path = tmp_path / "csgd.json"
    path.write_text("[1, 2")
    for method in ("csgd", "diffusion"):
        with pytest.raises(DataError) as bad:
            downscale.load_models(model_options(tmp_path, method=method, csgd_params=str(path)))
        assert str(path) in str(bad.value) and "\n" not in str(bad.value)


def coarse_members(rates: list[float]) -> np.ndarray:
    """(member, lat, lon) at 0.1° over GRID: member k rains `rates[k]` mm/h everywhere."""
    shape = imerg_grid(GRID.domain).shape
    return np.stack([np.full(shape, r, np.float32) for r in rates])


def test_csgd_member_i_follows_nowcast_member_i_and_lead_zero_is_shared():
    models = downscale.load_models(config.ModelConfig(method="csgd"))
    assert models.method == "csgd" and models.diffusion is None
    lead0 = Conditioning(precip=coarse_members([4.0]), grid=GRID, lead=0)
    lead1 = Conditioning(precip=coarse_members([0.0, 8.0]), grid=GRID, lead=1)  # a dry and a wet nowcast member
    done = []
    out = downscale.csgd([lead0, lead1], models, settings(members=6), seed=3, callback=done.append)
    assert out.shape == (6, 2, *GRID.shape) and out.dtype == np.float32 and done == [0, 1]
    means = out[:, 1].mean(axis=(1, 2))
    assert np.all(means[1::2] > 4 * means[0::2] + 1.0)  # odd members follow the wet member, even the dry one
    assert out[:, 0].mean() > 1.5 and (out[:, 0] > 0).mean() > 0.6  # all members draw around IMERG's 4 mm/h at lead 0
    again = downscale.csgd([lead0, lead1], models, settings(members=6), seed=3)
    np.testing.assert_array_equal(out, again)


def test_csgd_keeps_missing_input_missing():
    models = downscale.load_models(config.ModelConfig(method="csgd"))
    precip = coarse_members([2.0])
    precip[0, :3] = np.nan
    out = downscale.csgd([Conditioning(precip=precip, grid=GRID)], models, settings(members=4), seed=0)
    assert np.isnan(out[:, 0, :5]).all() and np.isfinite(out[:, 0, 8:]).all()


def test_a_model_that_failed_to_load_plans_the_flagged_csgd_fallback_and_each_cycle_draws_its_own_seed():
    models = downscale.load_models(config.ModelConfig(method="csgd"))
    unloadable = downscale.Models("diffusion", csgd=models.csgd, csgd_sha256=models.csgd_sha256,
                                  unavailable=Fallback.CHECKPOINT_UNLOADABLE)
    plan = downscale.plan_downscale(settings(4), unloadable, [])
    assert plan == downscale.DownscalePlan("csgd", Fallback.CHECKPOINT_UNLOADABLE, None,
                                           ("downscale_fallback:checkpoint_unloadable",), models.csgd_sha256)
    assert downscale.plan_downscale(settings(4), models, []).degraded == ()

    inputs = [Conditioning(precip=coarse_members([2.0]), grid=GRID)]
    cycle_time = datetime(2026, 6, 1, 12, 30, tzinfo=timezone.utc)
    out = downscale.downscale(settings(4), unloadable, plan, inputs, cycle_time)
    seed = settings(4).seed + int(cycle_time.timestamp()) // 1800 * 97
    np.testing.assert_array_equal(out, downscale.csgd(inputs, models, settings(4), seed=seed))
    later = downscale.downscale(settings(4), unloadable, plan, inputs, cycle_time + timedelta(minutes=30))
    np.testing.assert_array_equal(later, downscale.csgd(inputs, models, settings(4), seed=seed + 97))
