"""Issue 15 item 5: quantile delta mapping of the input and noise injection into the condition, and their switches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from model_helpers import GRID, coarsen, rain_field, tiny_config_text, train_tiny
from nrt import config, downscale
from nrt.errors import ConfigError, DataError
from nrt.model import checkpoint
from nrt.model.condition_noise import condition_seed, inject
from nrt.model.conditioning import Conditioning, raw_channels
from nrt.model.dataset import read_training_set
from nrt.model.inference import WEIGHTS_DIR, Downscaler
from nrt.model.qdm import WetQuantiles, qdm, wet_quantiles
from nrt.model.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE, SCALE = 0.7, {"target": 2.0, "reference": 1.0, "current": 1.5}
TAUS = np.array([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98])


def _gamma(rng, scale, size):
    return rng.gamma(SHAPE, scale, size=size)


def _current_field(rng):
    """Gamma rain with a dry third and a few no-data cells."""
    field = _gamma(rng, SCALE["current"], (300, 300))
    field[rng.random(field.shape) < 0.3] = 0.0
    field[:3, :5] = np.nan
    return field


def test_qdm_maps_quantiles_to_target_times_the_relative_change():
    """Against the analytic gamma quantiles: F_t^-1(tau) * F_c^-1(tau) / F_r^-1(tau) = gamma(k, 2 * 1.5 / 1)."""
    rng = np.random.default_rng(1)
    target = wet_quantiles(_gamma(rng, SCALE["target"], 400_000), threshold=1e-6)
    reference = wet_quantiles(_gamma(rng, SCALE["reference"], 400_000), threshold=1e-6)
    field = _current_field(rng)
    out = qdm(field, target, reference)
    wet = np.isfinite(field) & (field >= 1e-6)
    expected = stats.gamma.ppf(TAUS, SHAPE, scale=SCALE["target"] * SCALE["current"] / SCALE["reference"])
    np.testing.assert_allclose(np.quantile(out[wet], TAUS), expected, rtol=0.04)
    # without the mapping the field keeps its own quantiles, 2x smaller: the test can tell
    assert np.all(np.quantile(field[wet], TAUS) < 0.6 * expected)


def test_qdm_without_a_reference_is_plain_quantile_mapping_and_onto_its_own_climate_is_the_identity():
    rng = np.random.default_rng(2)
    target = wet_quantiles(_gamma(rng, SCALE["target"], 400_000), threshold=1e-6)
    field = _current_field(rng)
    wet = np.isfinite(field) & (field >= 1e-6)
    mapped = qdm(field, target)
    np.testing.assert_allclose(np.quantile(mapped[wet], TAUS), stats.gamma.ppf(TAUS, SHAPE, scale=SCALE["target"]), rtol=0.04)
    same = qdm(field, target, target)
    np.testing.assert_allclose(same[wet], field[wet], rtol=1e-6)


def test_qdm_keeps_dry_cells_dry_no_data_missing_and_the_order_of_wet_cells():
    rng = np.random.default_rng(3)
    target = wet_quantiles(rng.gamma(20.0, 0.1, 50_000))  # threshold 0.1 mm/h; narrow
    reference = wet_quantiles(rng.lognormal(0.0, 2.0, 50_000))  # heavy-tailed: x / F_r^-1 falls in the tail
    field = _current_field(rng).astype(np.float32)
    field[5, :10] = 0.05  # drizzle below the threshold is dry
    out = qdm(field, target, reference)
    dry = np.isfinite(field) & (field < 0.1)
    assert np.array_equal(out[dry], field[dry]) and np.all(np.isnan(out[np.isnan(field)]))
    wet = np.isfinite(field) & ~dry
    assert out[wet].min() >= 0.1
    order = np.argsort(field[wet], kind="stable")
    assert np.all(np.diff(out[wet][order]) >= 0)
    x = np.sort(field[wet]).astype(np.float64)
    tau = (np.arange(x.size) + 0.5) / x.size
    assert np.any(np.diff(target.quantile(tau) * x / reference.quantile(tau)) < 0)  # the order needed keeping
    assert out.dtype == np.float32 and out.shape == field.shape


def test_wet_quantiles_round_trip_and_refuse_nonsense():
    q = wet_quantiles(np.array([0, 0, 0.5, 1, 2, 4, np.nan]))
    assert q.wet_fraction == pytest.approx(4 / 6) and q.cells == 6
    assert WetQuantiles.from_dict(json.loads(json.dumps(q.to_dict()))) == q
    with pytest.raises(ValueError, match="no value reaches"):
        wet_quantiles(np.zeros(10))
    with pytest.raises(ValueError, match="non-decreasing"):
        WetQuantiles(0.1, 0.5, (0.2, 0.8), (3.0, 1.0), 10)


def test_zero_condition_noise_is_the_identity_and_noise_is_reproducible_per_member():
    z = torch.randn(4, 3, 40, 50, generator=torch.Generator().manual_seed(0))
    assert inject(z, 0.0, seed=9) is z
    noisy = inject(z, 0.5, seed=9)
    assert torch.equal(noisy, inject(z, 0.5, seed=9))
    assert torch.equal(noisy[:, 1:], z[:, 1:])  # only the precipitation channel
    assert torch.equal(inject(z[:2], 0.5, seed=9), noisy[:2])  # member i's noise depends on (seed, i) only
    assert not torch.equal(inject(z, 0.5, seed=10), noisy)
    added = (noisy - z)[:, 0]
    assert float(added.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(added.std()) == pytest.approx(0.5, rel=0.03)
    flat = added.reshape(4, -1).numpy()
    assert np.abs(np.corrcoef(flat)[np.triu_indices(4, 1)]).max() < 0.05  # members independent
    generator = torch.Generator().manual_seed(condition_seed(9, 3))  # the documented stream
    torch.testing.assert_close(added[3], 0.5 * torch.randn(40, 50, generator=generator))
    with pytest.raises(ValueError):
        inject(z, -0.1, seed=9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    return train_tiny(tmp_path_factory.mktemp("trained"), (10, 10))


def test_training_records_the_training_inputs_precipitation_quantiles(trained):
    _, dataset, path = trained
    recorded = checkpoint.load(path).meta["input_quantiles"]
    precip = read_training_set(dataset).channels[:, 0]
    wet = precip[precip >= 0.1]
    q = WetQuantiles.from_dict(recorded["precip"])
    assert q.wet_fraction == pytest.approx(wet.size / precip.size)
    np.testing.assert_allclose(q.quantile(np.array([0.25, 0.5, 0.9])), np.quantile(wet, [0.25, 0.5, 0.9]), rtol=1e-6)
    assert dataset.name in recorded["source"]


def _cond(seed=4):
    rng = np.random.default_rng(seed)
    return Conditioning(coarsen(rain_field(rng, GRID.shape))[None], GRID, lead=1)


def _spy(ds, name, seen):
    original = getattr(ds, name)

    def recording(x, *args):
        seen.append(x.detach().clone())
        return original(x, *args)

    setattr(ds, name, recording)


def test_config_switches_reach_the_networks_inputs_through_the_service_path(trained, tmp_path):
    """model.input_qdm and model.condition_noise_sigma, loaded by nrt.downscale.load_models and run by its
    diffusion method: the regression network sees normalise(qdm(raw)) + sigma * member i's noise."""
    cfg, _, path = trained
    reference = tmp_path / "climate.json"
    reference.write_text(json.dumps(wet_quantiles(np.random.default_rng(0).gamma(0.8, 0.8, 20_000)).to_dict()))
    options = cfg.model.model_copy(update={"checkpoint": str(path), "patch_size": 48, "input_qdm": True,
                                           "input_qdm_reference": str(reference), "condition_noise_sigma": 0.3,
                                           "sampler_steps": 2})
    models = downscale.load_models(options)
    ds = models.diffusion
    seen = []
    _spy(ds, "regression_call", seen)  # one tile covers the 32 x 48 domain: the tile is the input
    cond = _cond()
    settings = downscale.downscale_settings(cfg.model_copy(update={"model": options.model_copy(update={"members": 3})}))
    downscale.diffusion([cond], models, settings, seed=11)
    raw = raw_channels(cond, ds.spec.channels)
    target = WetQuantiles.from_dict(checkpoint.load(path).meta["input_quantiles"]["precip"])
    raw[:, 0] = qdm(raw[:, 0], target, WetQuantiles.from_dict(json.loads(reference.read_text())))
    clean = ds.spec.normalize_inputs(torch.from_numpy(raw))[0]
    tiles = seen[0]
    assert tiles.shape[0] == 3  # one input per member
    for member in range(3):
        noise = torch.randn(GRID.shape, generator=torch.Generator().manual_seed(condition_seed(11, member)))
        torch.testing.assert_close(tiles[member, 0], clean[0] + 0.3 * noise, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tiles[member, 1:], clean[1:])
    unmapped = ds.spec.normalize_inputs(torch.from_numpy(raw_channels(cond, ds.spec.channels)))[0, 0]
    assert (unmapped - clean[0]).abs().max() > 0.1  # the mapping changed the input

    plain = downscale.load_models(options.model_copy(update={"input_qdm": False, "condition_noise_sigma": 0.0})).diffusion
    seen_plain = []
    _spy(plain, "regression_call", seen_plain)
    plain.sample(cond, members=3, seed=11, steps=2)
    assert seen_plain[0].shape[0] == 1
    torch.testing.assert_close(seen_plain[0][0, 0], unmapped)


def test_noise_changes_members_but_member_i_stays_reproducible(trained):
    cfg, _, path = trained
    options = cfg.model.model_copy(update={"checkpoint": str(path), "condition_noise_sigma": 0.5})
    noisy, plain = Downscaler.load(path, "cpu", options), Downscaler.load(path, "cpu", cfg.model)
    cond = _cond()
    five = noisy.sample(cond, members=5, seed=3, steps=2)
    np.testing.assert_allclose(noisy.sample(cond, members=3, seed=3, steps=2), five[:3], rtol=1e-4, atol=1e-6)
    assert np.abs(five - plain.sample(cond, members=5, seed=3, steps=2)).max() > 1e-3


def _one_line(caught) -> str:
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_bad_switch_settings_are_one_line_errors_naming_the_key(trained, tmp_path):
    cfg, _, path = trained
    with pytest.raises(ConfigError) as caught:
        config.from_dict({"model": {"condition_noise_sigma": -0.1}}, "x.toml")
    assert "model.condition_noise_sigma" in _one_line(caught)
    with pytest.raises(ConfigError) as caught:
        config.from_dict({"model": {"input_qdm": "sometimes"}}, "x.toml")
    assert "model.input_qdm" in _one_line(caught)
    on = cfg.model.model_copy(update={"input_qdm": True, "input_qdm_reference": str(tmp_path / "absent.json")})
    with pytest.raises(ConfigError) as caught:
        Downscaler.load(path, "cpu", on)
    assert _one_line(caught).startswith("model.input_qdm_reference: ") and "absent.json" in str(caught.value)
    (tmp_path / "bad.json").write_text(json.dumps({"threshold": 0.1}))
    with pytest.raises(ConfigError, match="model.input_qdm_reference: .*not a quantile climatology"):
        Downscaler.load(path, "cpu", on.model_copy(update={"input_qdm_reference": str(tmp_path / "bad.json")}))
    ckpt = checkpoint.load(path)
    bare = {k: v for k, v in ckpt.meta.items() if k != "input_quantiles"}
    checkpoint.save(tmp_path / "bare.safetensors", ckpt.tensors, bare)
    with pytest.raises(ConfigError) as caught:
        Downscaler.load(tmp_path / "bare.safetensors", "cpu", on.model_copy(update={"input_qdm_reference": "field"}))
    assert _one_line(caught).startswith("model.input_qdm: ") and "records no training input quantiles" in str(caught.value)
    Downscaler.load(tmp_path / "bare.safetensors", "cpu", cfg.model)  # off: not needed


def test_a_sidecar_may_add_input_quantiles_but_nothing_else(trained, tmp_path):
    _, _, path = trained
    ckpt = checkpoint.load(path)
    bare = {k: v for k, v in ckpt.meta.items() if k != "input_quantiles"}
    checkpoint.save(tmp_path / "m.safetensors", ckpt.tensors, bare)
    sidecar = tmp_path / "m.json"
    described = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**described, "input_quantiles": ckpt.meta["input_quantiles"]}))
    assert checkpoint.load(sidecar).meta["input_quantiles"] == ckpt.meta["input_quantiles"]
    sidecar.write_text(json.dumps({**described, "notes": "added later"}))
    with pytest.raises(DataError, match="different model"):
        checkpoint.load(sidecar)
    changed = json.loads((path.with_suffix(".json")).read_text())
    changed["input_quantiles"]["precip"]["wet_fraction"] = 0.5  # the header holds them: they must agree
    (tmp_path / "c.json").write_text(json.dumps(changed))
    (tmp_path / "c.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(DataError, match="different model"):
        checkpoint.load(tmp_path / "c.safetensors")


def test_the_shipped_checkpoint_records_its_training_input_quantiles_and_runs_with_qdm():
    meta = json.loads((WEIGHTS_DIR / "demo.json").read_text())
    q = WetQuantiles.from_dict(meta["input_quantiles"]["precip"])
    assert 0.05 < q.wet_fraction < 0.6 and q.quantile(np.array([0.5]))[0] > q.threshold
    assert "train-demo.toml" in meta["input_quantiles"]["source"]
    cfg = config.load(None)
    ds = Downscaler.load(cfg.model.checkpoint, "cpu", cfg.model.model_copy(update={"input_qdm": True, "patch_size": 32}))
    out = ds.sample(_cond(), members=2, seed=0, steps=2, solver="euler")
    assert out.shape == (2, *GRID.shape) and np.all(np.isfinite(out))


@pytest.fixture(scope="module")
def skill():
    from conftest import script_module

    with script_module("model_skill") as module:
        yield module


def test_skill_report_band_power_ratios_and_rank_summary(skill):
    """Members twice the truth have 4x its power in every band; an input of half has 1/4. The rank summary of
    members that all lie below the truth puts everything in the highest bin."""
    rng = np.random.default_rng(8)
    pooled = skill.Pooled(lambda rate: rate)
    for _ in range(3):
        truth = rain_field(rng, (64, 64)) + 0.2
        truth[:4, :6] = np.nan  # no-data cells are left out of every field alike
        members = np.stack([2 * np.nan_to_num(truth)] * skill.MEMBERS) * rng.uniform(0.99, 1.01, (skill.MEMBERS, 1, 1))
        members[:, :4, :6] = np.nan
        pooled.add(truth, 0.5 * truth, truth, members.astype(np.float32))
    result = pooled.result()
    bands = result["psd_ratio_to_truth"]
    assert list(bands) == ["10-20 km", "20-40 km", "40-80 km"]
    for ratio in bands.values():
        assert ratio["members"] == pytest.approx(4.0, rel=0.03) and ratio["input"] == pytest.approx(0.25, rel=1e-6)
    low = skill.Pooled(lambda rate: rate)
    low.add(truth, truth, truth, (members / 4).astype(np.float32))
    summary = low.result()["rank_histogram_summary"]
    assert summary["highest_bin_x_uniform"] == pytest.approx(skill.MEMBERS + 1) and summary["lowest_bin_x_uniform"] == 0


def test_a_training_set_without_rain_is_one_line_naming_it(tmp_path):
    from nrt.model.conditioning import ChannelSet
    from nrt.model.dataset import Sample, write_training_set

    channels = ChannelSet(position=True)
    dry = np.zeros(GRID.shape, np.float32)
    samples = [Sample(raw_channels(Conditioning(coarsen(dry)[None], GRID), channels)[0], dry, np.ones(GRID.shape, bool), 0)
               for _ in range(4)]
    dataset = write_training_set(tmp_path / "dry.safetensors", samples, channels, {"kind": "dry"})
    conf = tmp_path / "train.toml"
    conf.write_text(tiny_config_text(tmp_path / "work", dataset, steps=(2, 2)))
    with pytest.raises(DataError) as caught:
        train(config.load(conf), dataset, tmp_path / "m.safetensors", tmp_path / "run", progress=False)
    assert _one_line(caught).startswith(str(dataset)) and "no value reaches 0.1 mm/h" in str(caught.value)
