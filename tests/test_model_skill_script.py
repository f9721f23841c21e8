"""scripts/model_skill.py: the held-out splits really are held out, and its spread/skill is the textbook one."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from conftest import script_module


@pytest.fixture(scope="module")
def skill():
    with script_module("model_skill") as module:
        yield module


@pytest.mark.parametrize("count, minutes", [(92, 5), (40, 5), (60, 10), (18, 10)])
def test_tail_is_the_last_quarter_after_a_gap_and_never_trained_on(skill, count, minutes):
    start = datetime(2020, 1, 1)
    files = [start + k * timedelta(minutes=minutes) for k in range(count)]
    head, tail = skill.split_files(files, minutes, "head"), skill.split_files(files, minutes, "tail")
    assert skill.split_files(files, minutes, "all") == files
    assert not set(head) & set(tail)
    assert head == files[: len(head)] and tail == files[-len(tail):]
    assert tail[0] - head[-1] > timedelta(minutes=skill.GAP_MINUTES)
    assert abs(len(tail) - skill.TAIL * count) <= 0.5


@pytest.mark.parametrize("split", ["events", "hours"])
def test_no_tested_frames_are_trained_on(skill, split):
    train, test, headline = skill.split_parts(split)
    trained = {(name, part) for name, part, _ in train}
    assert all(part == "head" for _, part in trained)
    for name, part, _ in test:
        # a source is tested whole only if never trained on, else only on its tail
        assert (part == "all" and all(n != name for n, _ in trained)) or part == "tail"
    assert set(headline) <= {group for _, _, group in test}
    if split == "events":
        assert skill.WINTER in headline and all(name != skill.WINTER for name, _ in trained)
    else:
        assert (skill.WINTER, "head") in trained and skill.WINTER_TAIL_GROUP in headline


def _pooled_ratio(skill, members_scale: float, fields: int = 40, seed: int = 3):
    """Truth and members drawn from N(mu, 1); members' deviations scaled by `members_scale`."""
    rng = np.random.default_rng(seed)
    pooled = skill.Pooled(lambda rate: rate)
    for _ in range(fields):
        mu = rng.gamma(2.0, 2.0, size=(16, 16)) + 5.0
        truth = (mu + rng.normal(size=mu.shape)).astype(np.float32)
        members = (mu + members_scale * rng.normal(size=(skill.MEMBERS, *mu.shape))).astype(np.float32)
        pooled.add(truth, mu.astype(np.float32), mu.astype(np.float32), members)
    return pooled.result()


def test_spread_skill_is_one_for_an_exchangeable_ensemble_and_tracks_its_scale(skill):
    reliable = _pooled_ratio(skill, 1.0)
    low, high = reliable["spread_skill_90pct_interval"]
    assert reliable["spread_skill"] == pytest.approx(1.0, abs=0.05)
    assert low < 1.0 < high and high - low < 0.2
    wide = _pooled_ratio(skill, 2.0)
    # members' variance 4, error of their mean 1 + 4/30: sqrt(31/30 * 4 / (34/30))
    assert wide["spread_skill"] == pytest.approx(2.0 * np.sqrt(31 / 34), rel=0.05)
    assert wide["spread_skill_90pct_interval"][0] > 1.5


def test_crps_skill_against_both_baselines_matches_a_brute_force_computation(skill):
    rng = np.random.default_rng(5)
    pooled = skill.Pooled(lambda rate: rate)
    truths, bilinears, ours, theirs = [], [], [], []
    for _ in range(6):
        truth = rng.gamma(1.5, 2.0, size=(12, 12)).astype(np.float32)
        bilinear = (truth * rng.lognormal(0, 0.5, truth.shape)).astype(np.float32)
        members = (truth * rng.lognormal(0, 0.4, (skill.MEMBERS, *truth.shape))).astype(np.float32)
        csgd = (bilinear * rng.lognormal(0, 0.8, (skill.MEMBERS, *truth.shape))).astype(np.float32)
        pooled.add(truth, bilinear, bilinear, members, csgd)
        truths.append(truth.ravel()), bilinears.append(bilinear.ravel())
        ours.append(members.reshape(skill.MEMBERS, -1)), theirs.append(csgd.reshape(skill.MEMBERS, -1))
    y, b = np.concatenate(truths).astype(float), np.concatenate(bilinears).astype(float)

    def crps(x):  # E|X - y| - E|X - X'| / 2 over every member pair
        x = np.concatenate(x, axis=1).astype(float)
        return (np.abs(x - y).mean(axis=0) - np.abs(x[:, None] - x[None]).mean(axis=(0, 1)) / 2).mean()

    result = pooled.result()
    assert result["crps_csgd"] == pytest.approx(crps(theirs), rel=1e-3)
    assert result["crpss_vs_bilinear"] == pytest.approx(1 - crps(ours) / np.abs(b - y).mean(), rel=1e-3)
    assert result["crpss_vs_csgd"] == pytest.approx(1 - crps(ours) / crps(theirs), rel=1e-3)
    assert result["crpss_vs_csgd"] > 0.1  # the sharper, unbiased ensemble beats the wide stand-in
