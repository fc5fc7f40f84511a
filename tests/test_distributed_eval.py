"""`vla-ros eval` sharded over Ray actors: a two-node cluster on loopback gives the single-process results,
and a worker killed mid-evaluation loses no episode."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from vla_ros.distributed.episodes import EpisodeOutcome, EpisodeRunner, episode_seed, summarise
from vla_ros.paths import share_path
from vla_ros.policy.evaluate import SPLITS

CHECKPOINT = str(share_path("models", "policy"))
EPISODES = 6


def test_episode_seeds_are_stable_and_distinct_per_split_and_index():
    assert episode_seed(1, "train", 0) == episode_seed(1, "train", 0)
    seeds = {episode_seed(s, split, k) for s in (1, 2) for split in ("train", "corrupted") for k in range(50)}
    assert len(seeds) == 200
    with pytest.raises(ValueError):
        episode_seed(1, "train", -1)


def test_summary_refuses_a_missing_or_repeated_episode():
    outcome = EpisodeOutcome(0, True, False, 10)
    assert summarise([outcome, EpisodeOutcome(1, False, True, 50, "absent_object")], 2).by_corruption == {
        "absent_object": (0, 1, 1)}
    with pytest.raises(RuntimeError, match="missing \\[1\\]"):
        summarise([outcome], 2)
    with pytest.raises(RuntimeError, match="repeated \\[0\\]"):
        summarise([outcome, outcome], 2)


@pytest.fixture(scope="module")
def single_process():
    """The reference: every episode of each split run in this process, one after another."""
    runner = EpisodeRunner(CHECKPOINT)
    try:
        yield {split: summarise(runner.run(split, SPLITS[split], list(range(EPISODES)), seed=1), EPISODES).report()
               for split in ("train", "heldout_words", "corrupted")}
    finally:
        runner.close()


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each on this machine (loopback only, like every test here)."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_eval_sharded_over_two_nodes_matches_the_single_process_run(cluster, single_process, tmp_path):
    from vla_ros.cli import main

    report_path = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", CHECKPOINT, "--workers", "2", "--ray-address", cluster.address,
                 "--episodes", str(EPISODES), "--splits", "train", "heldout_words", "corrupted", "--ablations",
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["workers"] == 2 and report["seeding"] == "per_episode"
    for split, expected in single_process.items():
        assert report["splits"][f"reach/{split}"] == json.loads(json.dumps(expected)), split
    assert report["splits"]["reach/corrupted"]["refusal_rate"] > 0  # the refusal rule ran on the workers too


@pytest.mark.slow
def test_a_worker_killed_mid_evaluation_has_its_episodes_rerun_and_counted_once(cluster, single_process):
    import ray

    from vla_ros.distributed.sharded_eval import ShardedEvaluator

    killed = []

    def kill_the_other_worker(evaluator, actor, outcomes):
        if not killed:  # after the first finished chunk, the other worker is mid-chunk: kill its process
            other = next(a for a in evaluator.actors if a is not actor)
            killed.append(pids[other])
            os.kill(pids[other], signal.SIGKILL)

    ray.init(address=cluster.address)
    try:
        with ShardedEvaluator(CHECKPOINT, workers=2, chunk_size=1, on_chunk=kill_the_other_worker) as evaluator:
            pids = dict(zip(evaluator.actors, ray.get([a.pid.remote() for a in evaluator.actors])))
            nodes = set(ray.get([a.node_id.remote() for a in evaluator.actors]))
            result = evaluator.run_split("heldout_words", SPLITS["heldout_words"], EPISODES, seed=1)
            assert evaluator.lost_workers == 1 and evaluator.rerun_episodes == 1
    finally:
        ray.shutdown()
    assert killed and len(nodes) == 2  # one worker per node
    assert result.episodes == EPISODES  # summarise() checked each index was counted exactly once
    assert json.loads(json.dumps(result.report())) == json.loads(json.dumps(single_process["heldout_words"]))


def test_eval_without_ray_runs_in_process_and_asks_for_the_extra_for_workers(monkeypatch, capsys):
    from vla_ros.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as without the extra
    assert main(["eval", "--workers", "2", "--episodes", "1", "--splits", "train", "--ablations"]) == 2
    assert "requirements/ray.txt" in capsys.readouterr().err
