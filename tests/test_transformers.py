"""The Hugging Face adapter on a real `transformers.Trainer`: CPU, tiny models built from
configs (no downloads), random token ids, commands through the real control socket."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub

from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from tuimon.control.client import ControlClient
from tuimon.control.commands import CHECKPOINT as CHECKPOINT_COMMAND
from tuimon.control.commands import PAUSE, RESUME, SCALE_LR, STOP
from tuimon.errors import ConfigError
from tuimon.integrations.transformers import TuimonCallback
from tuimon.run.events import (
    ALERT,
    CHECKPOINT,
    COMPLETED,
    CONTROL,
    END,
    FAILED,
    METRICS,
    START,
    STEP,
    STOPPED,
)
from tuimon.run.log_reader import read_events

from conftest import SteerWhilePaused

VOCAB = 100
SEQ = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: on a busy two-core box, two threads per tiny step cost ten times
    as much as one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TokenTask(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token ids. Classification: is the first token in the lower half of the
    vocabulary (learnable)? Language modelling (`lm`): the ids are their own labels."""

    def __init__(self, size: int = 64, seed: int = 0, lm: bool = False) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (size, SEQ), generator=generator)
        self.labels = self.ids if lm else (self.ids[:, 0] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
    )
    return BertForSequenceClassification(config)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ)
    )


def make_trainer(
    tmp_path: Path,
    *,
    callbacks: list[TrainerCallback],
    model: torch.nn.Module | None = None,
    dataset: TokenTask | None = None,
    eval_dataset: TokenTask | None = None,
    trainer_class: type[Trainer] = Trainer,
    **arguments: Any,
) -> Trainer:
    """A Trainer on CPU that logs every step to its state and saves nothing by itself."""
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "hf"),
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_steps": 1,
        "per_device_train_batch_size": 8,
        "max_steps": 6,
        "learning_rate": 1e-3,
        "seed": 0,
    }
    settings.update(arguments)
    return trainer_class(
        model=model if model is not None else tiny_bert(),
        args=TrainingArguments(**settings),
        train_dataset=dataset if dataset is not None else TokenTask(),
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )


def events_of(callback: TuimonCallback) -> list[dict[str, Any]]:
    assert callback.run_dir is not None
    return list(read_events(callback.run_dir / "events.jsonl"))


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def hf_step_logs(trainer: Trainer) -> list[dict[str, Any]]:
    """What the Trainer logged for each step (logging_steps=1)."""
    return [entry for entry in trainer.state.log_history if "loss" in entry]


class SendAt(TrainerCallback):
    """Sends one command through the run's control socket when a step ends. Listed before
    the TuimonCallback, so the command is applied at that same step's boundary."""

    def __init__(self, tuimon: TuimonCallback, step: int, cmd: str, **args: Any) -> None:
        self.tuimon, self.step, self.cmd, self.args = tuimon, step, cmd, args
        self.reply: dict[str, Any] | None = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if state.global_step == self.step:
            assert self.tuimon.run_dir is not None
            with ControlClient(self.tuimon.run_dir) as client:
                self.reply = client.request(self.cmd, **self.args)


def test_a_run_logs_each_steps_loss_lr_and_norms_and_the_eval_loss(tmp_path):
    model = tiny_bert()
    model_losses: list[float] = []

    def keep_loss(module: torch.nn.Module, args: Any, output: Any) -> None:
        if module.training:
            model_losses.append(output.loss.item())

    model.register_forward_hook(keep_loss)
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    trainer = make_trainer(
        tmp_path,
        callbacks=[tuimon],
        model=model,
        eval_dataset=TokenTask(16, seed=1),
        eval_strategy="steps",
        eval_steps=4,
        max_steps=8,
        warmup_steps=2,
        max_grad_norm=0.1,  # clips every step: both norms are recorded
    )
    trainer.train()

    events = events_of(tuimon)
    start = events[0]
    assert start["type"] == START and start["total_steps"] == 8
    assert start["framework"].startswith("transformers ") and start["precision"] == "32"
    assert events[-1]["type"] == END and events[-1]["status"] == COMPLETED
    steps = of_type(events, STEP)
    logged = hf_step_logs(trainer)
    assert [s["step"] for s in steps] == list(range(1, 9))
    # The model's own loss of each step (no accumulation), as the Trainer logged it too.
    assert [s["loss"] for s in steps] == pytest.approx(model_losses, rel=1e-6)
    assert [s["loss"] for s in steps] == pytest.approx([e["loss"] for e in logged], rel=1e-6)
    assert all(math.isfinite(s["loss"]) for s in steps)
    # The LR each step used: the warmup from 0, then the linear decay.
    assert [s["lr"] for s in steps] == pytest.approx([e["learning_rate"] for e in logged])
    assert steps[0]["lr"] == 0.0 and steps[2]["lr"] == pytest.approx(1e-3)
    # The Trainer's norm before clipping, and the clipped one the optimizer used.
    assert [s["grad_norm_unclipped"] for s in steps] == pytest.approx(
        [e["grad_norm"] for e in logged], rel=1e-5
    )
    assert all(0 < s["grad_norm"] <= 0.1 * 1.001 < s["grad_norm_unclipped"] for s in steps)
    metrics = of_type(events, METRICS)
    evaluated = [e for e in trainer.state.log_history if "eval_loss" in e]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    assert val == [(e["step"], pytest.approx(e["eval_loss"])) for e in evaluated]
    assert [step for step, _ in val] == [4, 8]
    for m in metrics:  # the step event has these already
        assert not {"loss", "learning_rate", "grad_norm", "eval_loss"} & m.keys()


def test_gradient_accumulation_records_one_step_per_optimizer_step(tmp_path):
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    trainer = make_trainer(
        tmp_path,
        callbacks=[tuimon],
        model=tiny_gpt2(),
        dataset=TokenTask(lm=True),
        gradient_accumulation_steps=4,
        per_device_train_batch_size=4,
        max_steps=3,
    )
    trainer.train()

    steps = of_type(events_of(tuimon), STEP)
    assert len(steps) == trainer.state.global_step == 3
    assert [s["samples"] for s in steps] == [16, 16, 16]  # 4 micro-batches of 4
    # The loss over the accumulated batch, as the Trainer logs it.
    logged = [e["loss"] for e in hf_step_logs(trainer)]
    assert [s["loss"] for s in steps] == pytest.approx(logged, rel=1e-6)
    assert all(math.isfinite(s["loss"]) and s["loss"] > 1 for s in steps)


def test_scale_lr_through_the_socket_halves_the_lr_and_keeps_the_schedule(tmp_path):
    def run(name: str, steer: bool) -> tuple[Trainer, list[dict[str, Any]]]:
        tuimon = TuimonCallback(run_dir=tmp_path / name / "run", quiet=True)
        callbacks: list[TrainerCallback] = [tuimon]
        if steer:
            callbacks.insert(0, SendAt(tuimon, 2, SCALE_LR, factor=0.5))
        trainer = make_trainer(tmp_path / name, callbacks=callbacks, max_steps=10, warmup_steps=4)
        trainer.train()
        return trainer, events_of(tuimon)

    plain_trainer, plain = run("plain", steer=False)
    steered_trainer, steered = run("steered", steer=True)
    (control,) = of_type(steered, CONTROL)
    assert (control["command"], control["step"]) == (SCALE_LR, 2)
    lrs = [s["lr"] for s in of_type(plain, STEP)]
    halved = [s["lr"] for s in of_type(steered, STEP)]
    # Steps 1-2 ran before the command; from step 3 on, warmup and decay at 0.5x.
    assert halved[:2] == pytest.approx(lrs[:2])
    assert halved[2:] == pytest.approx([0.5 * lr for lr in lrs[2:]])
    assert max(halved) == pytest.approx(0.5e-3) and halved[-1] < halved[4]
    # The Trainer's scheduler says the same: its base LR was scaled, not overwritten.
    hf_plain = [e["learning_rate"] for e in hf_step_logs(plain_trainer)]
    hf_steered = [e["learning_rate"] for e in hf_step_logs(steered_trainer)]
    assert hf_steered[2:] == pytest.approx([0.5 * lr for lr in hf_plain[2:]])


def test_stop_through_the_socket_ends_training_at_the_trainers_own_checkpoint(tmp_path):
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    stop = SendAt(tuimon, 3, STOP)
    trainer = make_trainer(tmp_path, callbacks=[stop, tuimon], max_steps=50)
    trainer.train()

    assert stop.reply is not None and stop.reply["ok"]
    assert trainer.state.global_step == 3
    events = events_of(tuimon)
    assert events[-1]["type"] == END and events[-1]["status"] == STOPPED
    assert [s["step"] for s in of_type(events, STEP)] == [1, 2, 3]
    (saved,) = of_type(events, CHECKPOINT)
    path = Path(saved["path"])
    assert path == tmp_path / "hf" / "checkpoint-3"
    assert (path / "model.safetensors").is_file() and (path / "trainer_state.json").is_file()

    # The Trainer resumes from it, and the new run counts on from step 3.
    resumed = TuimonCallback(run_dir=tmp_path / "resumed", quiet=True)
    make_trainer(tmp_path, callbacks=[resumed], max_steps=5).train(resume_from_checkpoint=path)
    events = events_of(resumed)
    assert events[0]["start_step"] == 3
    assert [s["step"] for s in of_type(events, STEP)] == [4, 5]


class PauseAt(TrainerCallback):
    """Pauses the run when a step ends; once the pause is applied (the training thread
    blocked inside the TuimonCallback), a second client asks for a checkpoint, then
    resumes."""

    def __init__(self, tuimon: TuimonCallback, step: int) -> None:
        self.tuimon, self.step = tuimon, step
        self.steer: SteerWhilePaused | None = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if state.global_step != self.step:
            return
        run_dir = self.tuimon.run_dir
        assert run_dir is not None
        self.steer = SteerWhilePaused(run_dir, CHECKPOINT_COMMAND, RESUME)


def test_pause_holds_the_trainer_until_resume_and_a_checkpoint_is_the_trainers(tmp_path):
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    pause = PauseAt(tuimon, 2)
    trainer = make_trainer(tmp_path, callbacks=[pause, tuimon], max_steps=5)
    trainer.train()
    assert pause.steer is not None
    pause.steer.join()

    events = events_of(tuimon)
    commands = [(e["command"], e["step"]) for e in of_type(events, CONTROL)]
    assert commands == [(PAUSE, 2), (CHECKPOINT_COMMAND, 2), (RESUME, 2)]
    (saved,) = of_type(events, CHECKPOINT)
    assert saved["reason"] == "command" and Path(saved["path"]) == tmp_path / "hf" / "checkpoint-2"
    assert (tmp_path / "hf" / "checkpoint-2" / "model.safetensors").is_file()
    assert [s["step"] for s in of_type(events, STEP)] == [1, 2, 3, 4, 5]
    assert events[-1]["status"] == COMPLETED and trainer.state.global_step == 5


def test_an_lr_of_100_is_named_by_the_doctor_and_its_healthy_twin_is_silent(tmp_path, cpu_burner):
    alerts: dict[float, list[str]] = {}
    for lr in (100.0, 0.1):
        tuimon = TuimonCallback(run_dir=tmp_path / f"lr-{lr}", quiet=True)
        make_trainer(
            tmp_path,
            callbacks=[tuimon],
            optim="sgd",
            learning_rate=lr,
            lr_scheduler_type="constant",
            max_steps=12,  # the update-ratio probe looks at step 10
        ).train()
        alerts[lr] = [e["rule"] for e in of_type(events_of(tuimon), ALERT)]
    assert "lr_too_high" in alerts[100.0]
    assert alerts[0.1] == []


def test_bf16_on_cpu_records_finite_losses(tmp_path):
    model = tiny_bert()
    dtypes: set[torch.dtype] = set()
    # Accelerate hands the model's outputs back in float32; a layer inside shows autocast.
    model.classifier.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    trainer = make_trainer(tmp_path, callbacks=[tuimon], model=model, bf16=True, max_steps=4)
    trainer.train()

    assert dtypes == {torch.bfloat16}  # autocast really ran
    events = events_of(tuimon)
    assert events[0]["precision"] == "bf16"
    steps = of_type(events, STEP)
    assert len(steps) == 4 and all(math.isfinite(s["loss"]) for s in steps)
    assert [s["loss"] for s in steps] == pytest.approx(
        [e["loss"] for e in hf_step_logs(trainer)], rel=1e-6
    )
    assert all("loss_scale" not in s for s in steps)  # bf16 needs no GradScaler


class OwnLoss(Trainer):
    """A compute_loss of its own: the model gets no labels, so its output has no loss."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, label_smoothing=0.1)
        return (loss, outputs) if return_outputs else loss


def test_a_compute_loss_of_its_own_gives_the_loss_the_trainer_trained_on(tmp_path):
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    trainer = make_trainer(tmp_path, callbacks=[tuimon], trainer_class=OwnLoss, max_steps=3)
    trainer.train()

    steps = of_type(events_of(tuimon), STEP)
    assert all(math.isfinite(s["loss"]) for s in steps)
    assert [s["loss"] for s in steps] == pytest.approx(
        [e["loss"] for e in hf_step_logs(trainer)], rel=1e-6
    )


class FailsAtStep(Trainer):
    """Its third training step raises, as a bug in a loss function would."""

    calls = 0

    def compute_loss(self, model: torch.nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if model.training:
            self.calls += 1
            if self.calls == 3:
                raise ValueError("a bug in the loss at the third step")
        return super().compute_loss(model, inputs, *args, **kwargs)


def test_an_exception_in_a_training_step_ends_the_run_failed_with_its_traceback(tmp_path):
    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    trainer = make_trainer(tmp_path, callbacks=[tuimon], trainer_class=FailsAtStep)
    with pytest.raises(ValueError, match="third step"):
        trainer.train()

    events = events_of(tuimon)
    assert [s["step"] for s in of_type(events, STEP)] == [1, 2]
    end = events[-1]
    assert end["type"] == END and end["status"] == FAILED
    assert "a bug in the loss at the third step" in end["error"]
    assert "compute_loss" in end["error"]  # the traceback, not only the message
    assert "training_step" not in vars(trainer)  # the Trainer is left as it was


def test_an_exception_outside_the_training_steps_ends_the_run_failed(tmp_path):
    def broken_metrics(prediction: Any) -> dict[str, float]:
        raise KeyError("accuracy")

    trainer = make_trainer(
        tmp_path,
        callbacks=[],
        eval_dataset=TokenTask(16, seed=1),
        eval_strategy="steps",
        eval_steps=2,
    )
    trainer.compute_metrics = broken_metrics
    # Given the Trainer, the callback also sees exceptions out of trainer.train().
    tuimon = TuimonCallback(trainer, run_dir=tmp_path / "run", quiet=True)
    trainer.add_callback(tuimon)
    with pytest.raises(KeyError, match="accuracy"):
        trainer.train()

    end = events_of(tuimon)[-1]
    assert end["type"] == END and end["status"] == FAILED
    assert "broken_metrics" in end["error"] and "KeyError" in end["error"]


def test_training_left_without_on_train_end_is_failed_by_the_next_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ of runs without a run_dir
    fail = [True]

    def metrics_that_fail_once(prediction: Any) -> dict[str, float]:
        if fail.pop() if fail else False:
            raise KeyError("accuracy")
        return {}

    tuimon = TuimonCallback(name="twice", quiet=True)
    trainer = make_trainer(
        tmp_path,
        callbacks=[tuimon],
        eval_dataset=TokenTask(16, seed=1),
        eval_strategy="steps",
        eval_steps=2,
        max_steps=2,
    )
    trainer.compute_metrics = metrics_that_fail_once
    with pytest.raises(KeyError):
        trainer.train()  # raised outside a training step, by a callback-only adapter
    first = tuimon.run_dir
    trainer.train()

    assert first is not None and tuimon.run_dir is not None and first != tuimon.run_dir
    end = list(read_events(first / "events.jsonl"))[-1]
    assert end["type"] == END and end["status"] == FAILED
    assert "began again" in end["error"]
    assert events_of(tuimon)[-1]["status"] == COMPLETED


def test_settings_are_checked_before_training_and_other_processes_do_nothing(tmp_path):
    with pytest.raises(ValueError, match="name"):
        TuimonCallback(name="not a name!")
    with pytest.raises(ConfigError, match="log_evry"):
        TuimonCallback(log_evry=5)

    tuimon = TuimonCallback(run_dir=tmp_path / "run", quiet=True)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), report_to=[], use_cpu=True)
    state = TrainerState(is_world_process_zero=False, max_steps=10)
    tuimon.on_train_begin(args, state, TrainerControl())
    assert tuimon.run_dir is None and not (tmp_path / "run").exists()
