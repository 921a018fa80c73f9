"""config_diff: the keys on which runs' configs disagree, flattened and sorted (pure)."""

from __future__ import annotations

from tuimon.run.config_diff import ABSENT, MAX_KEYS, config_diff, flatten, run_config


def test_only_differing_keys_sorted_with_each_runs_value():
    a = {"optimizer": {"name": "Adam", "lr": 0.01}, "train": {"max_steps": 40, "seed": 0}}
    b = {"optimizer": {"name": "Adam", "lr": 0.001}, "train": {"max_steps": 40, "seed": 1}}
    rows = config_diff([("a", a), ("b", b)])
    assert [r.key for r in rows] == ["optimizer.lr", "train.seed"]
    assert rows[0].values == ("0.01", "0.001")
    assert all(r.differs for r in rows)


def test_a_key_one_run_lacks_is_a_difference_shown_as_absent():
    rows = config_diff([("a", {"x": 1, "y": None}), ("b", {"x": 1}), ("c", {"x": 1})])
    assert [(r.key, r.values) for r in rows] == [("y", ("null", ABSENT, ABSENT))]


def test_every_key_keeps_identical_ones_marked_as_not_differing():
    rows = config_diff([("a", {"x": 1, "y": [1, 2]}), ("b", {"x": 2, "y": [1, 2]})], every_key=True)
    assert [(r.key, r.differs) for r in rows] == [("x", True), ("y", False)]
    assert rows[1].values == ("[1, 2]", "[1, 2]")


def test_identical_configs_have_no_differences_and_no_configs_no_rows():
    config = {"model": {"hidden": [256, 128]}, "flag": True}
    assert config_diff([("a", config), ("b", dict(config))]) == []
    assert config_diff([]) == []


def test_a_run_without_a_config_is_described_by_its_start_facts():
    start = {
        "type": "start",
        "config": None,
        "pid": 1,
        "optimizer": {"class": "SGD", "lrs": [0.1]},
        "precision": "bf16",
    }
    assert run_config(start) == {"optimizer": {"class": "SGD", "lrs": [0.1]}, "precision": "bf16"}
    assert run_config({"config": {"lr": 1}, "precision": "32"}) == {"lr": 1}
    assert run_config(None) == {}


def test_a_deep_or_huge_config_is_bounded():
    deep: dict = {}
    node = deep
    for _ in range(1000):
        node["k"] = {}
        node = node["k"]
    node["leaf"] = 1
    assert len(flatten(deep)) == 1  # cut at the depth bound, kept as one value
    huge = {f"k{i}": i for i in range(MAX_KEYS * 2)}
    assert len(flatten(huge)) == MAX_KEYS
