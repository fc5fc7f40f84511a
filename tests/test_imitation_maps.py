"""Imitation's fit: a region_map fusion's maps computed once per fit give the fit that computes them per batch;
the learning rate is constant or cosine-annealed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from policy_fixtures import make_policy_checkpoint

from vla_ros.policy import imitation


def _network(tmp_path, **network):
    from vla_ros.policy.policy import Policy

    checkpoint = make_policy_checkpoint(tmp_path, task="mixed", fusion="region_map", reference_frame=True,
                                        peak_window=1.5, map_weights=False, **network)
    return Policy.load(checkpoint).network


def _demonstrations(network, n: int = 40) -> imitation.Demonstrations:
    rng = np.random.default_rng(0)
    obs = {k: rng.standard_normal((n, *space.shape)).astype(np.float16)
           for k, space in network.observation_space.spaces.items()}
    actions = network.action_space.shape[0]
    return imitation.Demonstrations(obs=obs, expert_actions=rng.uniform(-1, 1, (n, actions)).astype(np.float32),
                                    target_xy=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                                    returns=rng.standard_normal(n).astype(np.float32), successes=1, episodes=2,
                                    reference_xy=rng.uniform(-1, 1, (n, 2)).astype(np.float32))


@pytest.mark.parametrize("network", [dict(object_locator=True, skill_reader=True, fusion_proprio=True),
                                     dict(reference_prior=True, current_estimate=True)],
                         ids=["locator", "prior"])
def test_a_fit_on_maps_computed_once_is_the_fit_on_maps_computed_per_batch(tmp_path, monkeypatch, network):
    net = _network(tmp_path, **network)
    data = _demonstrations(net)
    assert net.features_extractor.fixed_maps
    maps = imitation.region_maps(net, data, batch_size=16)  # in three batches
    assert maps.current.shape == (len(data), net.features_extractor.fusion.num_patches)
    assert (maps.located is not None) == bool(network.get("object_locator"))
    once, per_batch = copy.deepcopy(net), copy.deepcopy(net)
    losses_once = imitation.fit(once, data, epochs=2, batch_size=8, lr=1e-3, seed=0)
    monkeypatch.setattr(imitation, "region_maps", lambda *args, **kwargs: None)
    losses_per_batch = imitation.fit(per_batch, data, epochs=2, batch_size=8, lr=1e-3, seed=0)
    assert losses_once == pytest.approx(losses_per_batch, rel=1e-4, abs=1e-7)
    for (name, a), b in zip(once.named_parameters(), per_batch.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert any(not torch.equal(a, b) for a, b in zip(once.parameters(), net.parameters()))  # it did train


def test_maps_are_computed_per_batch_while_the_object_locator_trains(tmp_path):
    net = _network(tmp_path, object_locator=True)
    fusion = net.features_extractor.fusion
    fusion.object_locator.requires_grad_(True)
    assert fusion.object_locator_trains and not net.features_extractor.fixed_maps
    assert imitation.region_maps(net, _demonstrations(net, 4)) is None
    fusion.object_locator.requires_grad_(False)
    assert net.features_extractor.fixed_maps


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_fits_learning_rate_is_constant_or_annealed_to_zero_over_its_steps(tmp_path, monkeypatch, schedule):
    net = _network(tmp_path, object_locator=True, skill_reader=True, fusion_proprio=True)
    data = _demonstrations(net)
    rates = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    imitation.fit(net, data, epochs=3, batch_size=8, lr=1e-3, seed=0, lr_schedule=schedule)
    assert len(rates) == 3 * 5 and rates[0] == 1e-3  # 40 samples in batches of 8, three epochs
    if schedule == "constant":
        assert set(rates) == {1e-3}
    else:
        assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 0.02 * 1e-3
        assert rates[7] == pytest.approx(0.5e-3 * (1 + np.cos(np.pi * 7 / 15)))


def test_the_default_schedule_is_the_constant_one_and_an_unknown_one_is_refused(tmp_path):
    net = _network(tmp_path)
    data = _demonstrations(net)
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    imitation.fit(a, data, epochs=1, batch_size=8, lr=1e-3, seed=0)
    imitation.fit(b, data, epochs=1, batch_size=8, lr=1e-3, seed=0, lr_schedule="constant")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        imitation.fit(net, data, epochs=1, batch_size=8, lr=1e-3, seed=0, lr_schedule="linear")
