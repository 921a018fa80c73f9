"""Config loading: every problem names its key, its line (or `--set`) and what was meant."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tuimon.errors import ConfigError
from tuimon.training.build_checks import load_run_config

from conftest import run_tuimon

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

# A small valid config; the tests below change one line of it at a time.
BASE = """\
name: base
model:
  name: mlp
  hidden: [16]
data:
  name: synthetic
  synthetic: {num_samples: 64, channels: 1, image_size: 8, num_classes: 2}
optimizer:
  name: SGD
  lr: 0.1
  momentum: 0.9
scheduler:
  name: CosineAnnealingLR
  T_max: 10
loss:
  name: CrossEntropyLoss
train:
  epochs: 1
  batch_size: 8
monitor:
  rules:
    stall:
      enabled: false
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once in the base config"
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """1-based number of the one line of `text` that contains `needle`."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, overrides: Sequence[str] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides)
    assert info.value.problems, "a ConfigError must carry at least one problem"
    return info.value.problems


def only_problem(path: Path, overrides: Sequence[str] = ()) -> str:
    problems = problems_of(path, overrides)
    assert len(problems) == 1, problems
    return problems[0]


def test_base_config_loads(tmp_path: Path) -> None:
    config = load_run_config(write(tmp_path, BASE))
    assert config.name == "base"
    assert config.optimizer.name == "SGD"
    assert config.optimizer.lr == 0.1
    assert config.optimizer.kwargs == {"momentum": 0.9}
    assert config.scheduler is not None and config.scheduler.kwargs == {"T_max": 10}
    assert config.train.epochs == 1
    assert config.train.batch_size == 8
    assert config.monitor.rules["stall"].enabled is False


# --- unknown keys and names ---------------------------------------------------------------

UNKNOWN = {
    "top-level": ("optimizer:", "optimiser:", "optimiser", "optimizer"),
    "closed-section": ("  epochs: 1", "  epochs: 1\n  epocs: 2", "train.epocs", "epochs"),
    "optimizer-kwarg": ("  momentum: 0.9", "  momentun: 0.9", "optimizer.momentun", "momentum"),
    "scheduler-kwarg": ("  T_max: 10", "  T_maxx: 10", "scheduler.T_maxx", "T_max"),
    "model-option": ("  hidden: [16]", "  hiden: [16]", "model.hiden", "hidden"),
    "optimizer-name": ("  name: SGD", "  name: Adamm", "optimizer.name", "Adam"),
    "model-name": ("  name: mlp\n  hidden: [16]", "  name: vgg16bn", "model.name", "vgg16_bn"),
    "loss-name": (
        "  name: CrossEntropyLoss",
        "  name: CrossEntropy",
        "loss.name",
        "CrossEntropyLoss",
    ),
    "data-name": ("  name: synthetic", "  name: cifar", "data.name", "cifar10"),
    "rule-id": ("    stall:", "    stal:", "monitor.rules.stal", "stall"),
}


@pytest.mark.parametrize(("old", "new", "key", "meant"), UNKNOWN.values(), ids=UNKNOWN.keys())
def test_unknown_key_or_name_names_line_key_and_closest(
    tmp_path: Path, old: str, new: str, key: str, meant: str
) -> None:
    text = edit(old, new)
    bad_line = new.splitlines()[-1]
    line = line_of(text, bad_line)
    column = len(bad_line) - len(bad_line.lstrip()) + 1
    path = write(tmp_path, text)

    problem = only_problem(path)

    assert problem.startswith(f"{path}:{line}:{column}: {key}: unknown"), problem
    assert f"(did you mean {meant}?)" in problem, problem


@pytest.mark.parametrize(
    ("old", "new", "key", "valid"),
    [
        ("optimizer:", "optimiser:", "optimiser", "name, model, data, optimizer, scheduler"),
        ("  epochs: 1", "  epochs: 1\n  epocs: 2", "train.epocs", "epochs, max_steps, batch_size"),
        ("  momentum: 0.9", "  momentun: 0.9", "optimizer.momentun", "lr, momentum, dampening"),
        ("    stall:", "    stal:", "monitor.rules.stal", "nan_loss, nan_grad, divergence"),
    ],
    ids=["top-level", "closed-section", "optimizer-kwarg", "rule-id"],
)
def test_unknown_key_lists_valid_keys(
    tmp_path: Path, old: str, new: str, key: str, valid: str
) -> None:
    problem = only_problem(write(tmp_path, edit(old, new)))
    assert f"{key}: unknown key" in problem
    assert f"valid keys: {valid}" in problem, problem


def test_unknown_key_without_close_match_has_no_suggestion(tmp_path: Path) -> None:
    text = edit("  epochs: 1", "  epochs: 1\n  zzzzzz: 2")
    problem = only_problem(write(tmp_path, text))
    assert f":{line_of(text, 'zzzzzz')}:3: train.zzzzzz: unknown key; valid keys:" in problem
    assert "did you mean" not in problem


def test_parameter_tuimon_sets_itself_is_rejected(tmp_path: Path) -> None:
    text = edit("  momentum: 0.9", "  params: []")
    problem = only_problem(write(tmp_path, text))
    assert f":{line_of(text, 'params')}:3: optimizer.params: is set by tuimon" in problem


# --- wrong types and values ---------------------------------------------------------------

BAD_VALUES = {
    "int-not-a-number": ("batch_size: 8", "batch_size: abc", "train.batch_size", "integer"),
    "int-zero": ("batch_size: 8", "batch_size: 0", "train.batch_size", "greater than 0"),
    "lr-negative": ("lr: 0.1", "lr: -1", "optimizer.lr", "greater than 0"),
    "device": ("  batch_size: 8", "  batch_size: 8\n  device: gpu", "train.device", "cuda:N"),
    "fraction": (
        "  name: synthetic",
        "  name: synthetic\n  val_split: 1.5",
        "data.val_split",
        "less than 1",
    ),
    "torch-kwarg-type": ("momentum: 0.9", "momentum: fast", "optimizer.momentum", "a number"),
    "torch-rejects-value": ("momentum: 0.9", "momentum: -1", "optimizer.momentum", "momentum"),
    "rule-enabled": ("enabled: false", "enabled: maybe", "monitor.rules.stall.enabled", "boolean"),
    "model-option": ("hidden: [16]", "hidden: [0]", "model.hidden", "at least one unit"),
}


@pytest.mark.parametrize(
    ("old", "new", "key", "allowed"), BAD_VALUES.values(), ids=BAD_VALUES.keys()
)
def test_bad_value_names_line_key_and_what_is_allowed(
    tmp_path: Path, old: str, new: str, key: str, allowed: str
) -> None:
    text = edit(old, new)
    bad_line = new.splitlines()[-1].strip()
    path = write(tmp_path, text)

    problem = only_problem(path)

    assert problem.startswith(f"{path}:{line_of(text, bad_line)}:"), problem
    assert f": {key}: " in problem, problem
    assert allowed in problem, problem
    value = bad_line.split(": ", 1)[1]
    assert value.strip("[]") in problem, "the message shows the bad value"


def test_torch_value_error_is_caught_at_load_time(tmp_path: Path) -> None:
    path = write(tmp_path, edit("momentum: 0.9", "momentum: -1"))
    problem = only_problem(path)
    assert "SGD rejected it" in problem
    assert "Traceback" not in problem


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    text = edit("  epochs: 1", "  epocs: 1\n  max_steps: 5")
    text = edit("  name: synthetic", "  name: synthetic\n  val_split: 1.5", text)
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 2, problems
    assert any(p.startswith(f"{path}:{line_of(text, 'epocs')}:3: train.epocs:") for p in problems)
    assert any(
        p.startswith(f"{path}:{line_of(text, 'val_split')}:3: data.val_split:") for p in problems
    )


def test_train_without_length_says_what_to_set(tmp_path: Path) -> None:
    text = edit("  epochs: 1\n", "")
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.startswith(f"{path}:{line_of(text, 'train:')}:1: train: "), problem
    assert "epochs or max_steps" in problem


def test_max_steps_alone_is_enough(tmp_path: Path) -> None:
    config = load_run_config(write(tmp_path, edit("  epochs: 1", "  max_steps: 5")))
    assert config.train.epochs is None
    assert config.train.max_steps == 5


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    text = edit("  epochs: 1\n  batch_size: 8\n", "").replace("train:\n", "train: 5\n")
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.startswith(f"{path}:{line_of(text, 'train: 5')}:1: train: "), problem
    assert "5" in problem


# --- reading the file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "what"),
    [
        ("model:\n  name: mlp\n   hidden: [16]\n", 3, 10, "mapping values are not allowed"),
        ("model:\n  name: mlp\n  hidden: [16\ndata: {}\n", 4, 5, "expected ',' or ']'"),
    ],
    ids=["bad-indent", "unclosed-list"],
)
def test_yaml_syntax_error_gives_line_and_column(
    tmp_path: Path, text: str, line: int, column: int, what: str
) -> None:
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.startswith(f"{path}:{line}:{column}: YAML syntax error"), problem
    assert what in problem


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = edit("  batch_size: 8", "  batch_size: 8\n  epochs: 3")
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.startswith(f"{path}:{line_of(text, 'epochs: 3')}:3: train.epochs: duplicate key")
    assert f"first given at line {line_of(text, 'epochs: 1')}" in problem


def test_duplicate_top_level_section(tmp_path: Path) -> None:
    text = BASE + "model:\n  name: mlp\n"
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.startswith(f"{path}:{len(text.splitlines()) - 1}:1: model: duplicate key")
    assert f"first given at line {line_of(BASE, 'model:')}" in problem


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert only_problem(path) == f"{path}: config file not found"


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    assert "is a directory" in only_problem(tmp_path)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- model\n- data\n", "list"), ("just words\n", "str")],
    ids=["list", "scalar"],
)
def test_config_that_is_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.startswith(f"{path}: ")
    assert f"must be a mapping of sections, not a {kind}" in problem


def test_empty_config_names_the_required_sections(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, ""))
    missing = {p.split(": ")[1] for p in problems if "missing required key" in p}
    assert missing == {"model", "data", "train"}, problems


@pytest.mark.parametrize(
    ("written", "value"),
    [("3e-4", 3e-4), ("1E-3", 1e-3), ("+2e-2", 2e-2), ("5.e-3", 5e-3), ("0.05", 0.05)],
)
def test_exponent_without_dot_is_a_float(tmp_path: Path, written: str, value: float) -> None:
    text = edit("lr: 0.1", f"lr: {written}")
    text = edit("momentum: 0.9", f"momentum: 0.9\n  weight_decay: {written}", text)
    config = load_run_config(write(tmp_path, text))
    assert isinstance(config.optimizer.lr, float)
    assert config.optimizer.lr == pytest.approx(value)
    weight_decay = config.optimizer.kwargs["weight_decay"]
    assert isinstance(weight_decay, float), f"{written} was read as {weight_decay!r}"
    assert weight_decay == pytest.approx(value)


def test_quoted_exponent_stays_a_string_and_is_rejected_for_torch(tmp_path: Path) -> None:
    text = edit("momentum: 0.9", "momentum: '9e-1'")
    problem = only_problem(write(tmp_path, text))
    assert "optimizer.momentum: expected a number, got '9e-1'" in problem


# --- --set overrides ----------------------------------------------------------------------


def test_overrides_are_typed_yaml_scalars(tmp_path: Path) -> None:
    config = load_run_config(
        write(tmp_path, BASE),
        ["optimizer.lr=3e-4", "train.epochs=2", "data.augment.hflip=true", "name=over"],
    )
    assert config.optimizer.lr == 0.0003 and type(config.optimizer.lr) is float
    assert config.train.epochs == 2 and type(config.train.epochs) is int
    assert config.data.augment.hflip is True
    assert config.name == "over"
    # Untouched keys keep the file's values.
    assert config.train.batch_size == 8
    assert config.optimizer.kwargs == {"momentum": 0.9}


def test_override_reaches_torch_kwargs_and_new_sections(tmp_path: Path) -> None:
    config = load_run_config(
        write(tmp_path, BASE),
        [
            "optimizer.nesterov=true",
            "scheduler.eta_min=1e-5",
            "monitor.rules.divergence.enabled=no",
        ],
    )
    assert config.optimizer.kwargs == {"momentum": 0.9, "nesterov": True}
    assert config.scheduler is not None
    assert config.scheduler.kwargs["eta_min"] == pytest.approx(1e-5)
    assert config.monitor.rules["divergence"].enabled is False


def test_later_override_wins(tmp_path: Path) -> None:
    config = load_run_config(write(tmp_path, BASE), ["train.epochs=2", "train.epochs=7"])
    assert config.train.epochs == 7


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.batch_size=abc", "train.batch_size", "integer"),
        ("train.batch_size=0", "train.batch_size", "greater than 0"),
        ("optimizer.lr=-1", "optimizer.lr", "greater than 0"),
        ("train.epocs=3", "train.epocs", "unknown key (did you mean epochs?)"),
        ("optimizer.momentun=0.5", "optimizer.momentun", "unknown key (did you mean momentum?)"),
        ("optimizer.name=Adamm", "optimizer.name", "(did you mean Adam?)"),
        ("optimizer.momentum=-1", "optimizer.momentum", "Invalid momentum value"),
        ("monitor.rules.stal.enabled=false", "monitor.rules.stal", "(did you mean stall?)"),
    ],
)
def test_override_is_validated_and_names_the_set(
    tmp_path: Path, override: str, key: str, expected: str
) -> None:
    problem = only_problem(write(tmp_path, BASE), [override])
    assert problem.startswith(f"--set {override}: {key}: "), problem
    assert expected in problem, problem


def test_override_error_inside_overridden_section_names_the_set(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, BASE), ["data.augment={hflip: maybe}"])
    assert problem.startswith("--set data.augment={hflip: maybe}: data.augment.hflip: "), problem


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("foo", "expected KEY.PATH=VALUE"),
        ("=1", "expected KEY.PATH=VALUE"),
        ("train..epochs=1", "empty key segment"),
        ("train.epochs.x=1", "train.epochs is 1, not a section"),
        ("optimizer.lr=[1", "value is not valid YAML"),
    ],
)
def test_malformed_override_is_an_error(tmp_path: Path, override: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, BASE), [override])
    assert problem.startswith(f"--set {override}: "), problem
    assert expected in problem, problem


# --- shipped configs and the command line ------------------------------------------------


def test_configs_are_shipped() -> None:
    assert {p.name for p in SHIPPED_CONFIGS} >= {"mlp.yaml", "vgg.yaml", "cnn_mnist.yaml"}


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=[p.name for p in SHIPPED_CONFIGS])
def test_shipped_config_loads(path: Path) -> None:
    config = load_run_config(path)
    assert config.name
    assert config.train.epochs or config.train.max_steps
    # Exponents such as `lr: 1e-3` in the shipped files must be numbers.
    assert isinstance(config.optimizer.lr, float)
    for value in config.optimizer.kwargs.values():
        assert not isinstance(value, str), config.optimizer.kwargs


def test_vgg_config_values() -> None:
    config = load_run_config(REPO / "configs" / "vgg.yaml")
    assert config.model.name == "vgg16_bn"
    assert config.optimizer.kwargs["weight_decay"] == pytest.approx(5e-4)
    assert config.scheduler is not None and config.scheduler.warmup_steps == 200


def test_cli_bad_config_exits_2_with_located_message(tmp_path: Path) -> None:
    text = edit("  momentum: 0.9", "  momentun: 0.9")
    write(tmp_path, text, "bad.yaml")

    result = run_tuimon("bad.yaml", "--headless", cwd=tmp_path)

    assert result.returncode == 2, result
    line = line_of(text, "momentun")
    assert f"bad.yaml:{line}:3: optimizer.momentun: unknown key (did you mean momentum?)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists(), "a bad config must not start a run"


def test_cli_bad_override_exits_2(tmp_path: Path) -> None:
    write(tmp_path, BASE, "ok.yaml")
    result = run_tuimon("ok.yaml", "--headless", "--set", "train.epocs=3", cwd=tmp_path)
    assert result.returncode == 2, result
    assert "--set train.epocs=3: train.epocs: unknown key (did you mean epochs?)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_problems_in_different_sections_are_reported_together_in_file_order(tmp_path):
    text = BASE.replace("  batch_size: 8", "  batch_size: 0").replace(
        "  momentum: 0.9", "  momentun: 0.9"
    )
    path = tmp_path / "both.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_run_config(path)
    problems = caught.value.problems
    assert len(problems) == 2
    assert "optimizer.momentun: unknown key (did you mean momentum?)" in problems[0]
    assert "train.batch_size: must be greater than 0" in problems[1]


# --- bounds that keep a config from destroying the run (issue 8, item 12) ---------------
# tests/test_config_hostile.py runs the malformed files through the command line.


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    """Aliases are bounded, not forbidden: sharing a value is ordinary YAML."""
    text = edit("  lr: 0.1", "  lr: &lr 0.1")
    text = edit("  T_max: 10", "  T_max: 10\n  eta_min: *lr", text)
    text = edit("  epochs: 1\n  batch_size: 8", "  <<: &length {epochs: 1, batch_size: 8}", text)
    text = edit("  rules:", "  snapshot_every: *lr\n  rules:", text)

    problem = only_problem(write(tmp_path, text))
    # The alias reaches monitor.snapshot_every (an integer): located there.
    assert f":{line_of(text, 'snapshot_every')}:3: monitor.snapshot_every:" in problem

    config = load_run_config(write(tmp_path, edit("  snapshot_every: *lr\n", "", text)))
    assert config.scheduler is not None and config.scheduler.kwargs["eta_min"] == 0.1
    assert config.train.epochs == 1 and config.train.batch_size == 8


def test_lr_limits_are_the_runtime_lr_limits() -> None:
    from tuimon.config.schema import MonitorConfig
    from tuimon.monitor.lr_control import LrLimits

    assert LrLimits.of(MonitorConfig()) == LrLimits()


@pytest.mark.parametrize(
    ("lr", "limit", "problem"),
    [
        ("1e-13", "", "optimizer.lr: must be within [1e-12, 100]"),
        ("101", "", "optimizer.lr: must be within [1e-12, 100]"),
        ("500", "  lr_max: 1000\n", None),
        ("1e-13", "  lr_min: 1e-15\n", None),
    ],
)
def test_optimizer_lr_within_the_monitor_lr_limits(
    tmp_path: Path, lr: str, limit: str, problem: str | None
) -> None:
    text = edit("  lr: 0.1", f"  lr: {lr}")
    path = write(tmp_path, edit("monitor:\n", f"monitor:\n{limit}", text))
    if problem is None:
        assert load_run_config(path).optimizer.lr == float(lr)
    else:
        assert problem in only_problem(path)


def test_quoted_values_are_cut_short(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, edit("  name: SGD", "  name: " + "B" * 50_000)))
    assert len(problem) < 400, len(problem)
    assert "… (49802 more characters)" in problem
