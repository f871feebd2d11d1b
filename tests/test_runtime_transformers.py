"""WatchTrainingCallback in a real Hugging Face Trainer (transformers + accelerate, CPU, a tiny
MLP) with planted faults (tests/planted_faults.py): the same alert steps as the decorator and
the Lightning callback, the gradients read before the Trainer clips them, statistics in
state.log_history, the monitor's state in the checkpoint, the opt-in actions."""

import json
import logging

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from planted_faults import (BATCH, NAN_STEP, OPTIONS, STEPS, alert_keys, count_host_syncs,  # noqa: E402
                            cpu_fp16_scaler, decorator_run, make_data, make_mlp, make_optimizer)

from training_profiler import watch_training  # noqa: E402
from training_profiler.runtime import TrainingAlertError  # noqa: E402
from training_profiler.runtime.device_stats import StatsBuffer  # noqa: E402
from training_profiler.runtime.transformers import STATE_FILE, WatchTrainingCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make_mlp()

    def forward(self, x, labels):
        out = self.net(x).float()
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


class Rows(torch.utils.data.Dataset):
    def __init__(self, nan_step=None, overflow=False):
        self.x, self.y = make_data(nan_step, overflow)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class InOrder(transformers.Trainer):
    """The batches in dataset order, as in the reference loop (the Trainer shuffles by default)."""

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def _trainer(callback, tmp_path, steps=STEPS, lr_raise=False, nan_step=None, overflow=False, **args):
    model = Regression()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, use_cpu=True, report_to="none", logging_steps=10,
        disable_tqdm=True, dataloader_num_workers=0,
        **{"max_grad_norm": 0.0, "save_strategy": "no", "per_device_train_batch_size": BATCH, **args})
    return InOrder(model=model, args=args, train_dataset=Rows(nan_step, overflow), callbacks=[callback],
                   optimizers=make_optimizer(model.parameters(), lr_raise))


def test_a_learning_rate_raise_alerts_at_the_same_step_as_through_the_decorator(tmp_path):
    callback = WatchTrainingCallback(**OPTIONS)
    _trainer(callback, tmp_path, lr_raise=True).train()
    assert alert_keys(callback.monitor) == alert_keys(decorator_run(lr_raise=True))
    first = alert_keys(callback.monitor)[0]
    assert first[0] == 63 and first[2] == "spike"  # the update of step 61 is the first at the raised LR
    assert callback.monitor.step_count == STEPS
    assert callback.monitor.history[9]["grad_norm"] == pytest.approx(decorator_run(steps=10).history[9]["grad_norm"])


def test_a_nan_batch_alerts_at_its_step_and_the_statistics_reach_the_log_history(tmp_path):
    callback = WatchTrainingCallback(**OPTIONS)
    trainer = _trainer(callback, tmp_path, nan_step=NAN_STEP)
    trainer.train()
    assert alert_keys(callback.monitor)[:2] == [(NAN_STEP, "loss", "nonfinite"), (NAN_STEP, "grad_norm", "nonfinite")]
    assert alert_keys(callback.monitor)[:2] == alert_keys(decorator_run(nan_step=NAN_STEP))[:2]
    logged = [row for row in trainer.state.log_history if "monitor/step" in row]
    assert [row["step"] for row in logged] == list(range(10, STEPS + 1, 10))
    history = {r["step"]: r for r in callback.monitor.history}
    row20 = next(row for row in logged if row["step"] == 20)
    assert row20["monitor/step"] == 20.0 and row20["monitor/grad_norm"] == pytest.approx(history[20]["grad_norm"])
    assert row20["monitor/loss"] == pytest.approx(history[20]["loss"]) and row20["monitor/alerts"] == 0.0
    last = logged[-1]
    assert last["monitor/alerts"] == 2.0 and last["monitor/spike_score"] == pytest.approx(1000 / STEPS)


def test_the_gradients_are_read_before_the_trainer_clips_them(tmp_path):
    # max_grad_norm=0.1 clips every step; the Trainer logs the norm before clipping: so must the monitor
    callback = WatchTrainingCallback(**OPTIONS)
    trainer = _trainer(callback, tmp_path, steps=20, max_grad_norm=0.1)
    trainer.train()
    history = {r["step"]: r for r in callback.monitor.history}
    logged = {row["step"]: row["grad_norm"] for row in trainer.state.log_history if "grad_norm" in row}
    assert sorted(logged) == [10, 20]
    for step, norm in logged.items():
        assert norm > 0.5 and history[step]["grad_norm"] == pytest.approx(norm, rel=1e-5)


def test_a_run_resumed_from_a_trainer_checkpoint_keeps_its_baseline(tmp_path):
    first = WatchTrainingCallback(**OPTIONS)
    _trainer(first, tmp_path, steps=50, lr_raise=True, save_strategy="steps", save_steps=50).train()
    saved = json.loads((tmp_path / "checkpoint-50" / STATE_FILE).read_text())
    assert saved["monitor"]["step_count"] == 50 and len(saved["monitor"]["history"]) == 50

    resumed = WatchTrainingCallback(**OPTIONS)
    _trainer(resumed, tmp_path, lr_raise=True).train(resume_from_checkpoint=str(tmp_path / "checkpoint-50"))
    assert resumed.monitor.step_count == STEPS and resumed.monitor.history[0]["step"] == 1
    assert alert_keys(resumed.monitor) == alert_keys(decorator_run(lr_raise=True))  # step 63: no second warm-up


def test_on_alert_raise_stops_the_trainer_and_skip_list_names_the_nan_step(tmp_path):
    skip = tmp_path / "skip_batches.json"
    callback = WatchTrainingCallback(**OPTIONS, on_alert="raise", skip_list=skip)
    with pytest.raises(TrainingAlertError, match=f"Step {NAN_STEP} \\| loss: nan"):
        _trainer(callback, tmp_path, nan_step=NAN_STEP).train()
    assert callback.monitor.step_count == NAN_STEP
    assert skip.read_text() == f"[{NAN_STEP}]\n"


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e6])  # without clipping the callback unscales, with it the Trainer
def test_fp16_overflow_under_cpu_autocast_with_a_grad_scaler_gives_the_decorators_alerts(tmp_path, max_grad_norm):
    # on CPU accelerate makes neither the fp16 autocast nor the GradScaler that fp16=True makes on a
    # GPU: the test switches both on (before train() prepares the model and optimizer); the callback
    # finds the scaler on the accelerate-wrapped optimizer
    callback = WatchTrainingCallback(**OPTIONS)
    trainer = _trainer(callback, tmp_path, overflow=True, fp16=True, max_grad_norm=max_grad_norm)
    trainer.accelerator.scaler, trainer.accelerator.native_amp = cpu_fp16_scaler(), True
    trainer.train()
    assert callback.monitor.scaler is trainer.accelerator.scaler
    assert alert_keys(callback.monitor) == alert_keys(decorator_run(fp16=True)) == [
        (41, "loss", "spike"), (43, "loss_scale", "skipped_steps")]
    assert [r.get("loss_scale") for r in callback.monitor.history[39:44]] == [1024.0, 512.0, 256.0, 128.0, 128.0]
    reference = decorator_run(fp16=True, steps=10).history[9]["grad_norm"]  # unscaled, as in the decorator
    assert callback.monitor.history[9]["grad_norm"] == pytest.approx(reference, rel=1e-5)
    assert [row["monitor/skipped_steps"] for row in trainer.state.log_history if "monitor/step" in row][-1] == 3.0


def test_a_corrupt_monitor_state_in_the_checkpoint_never_stops_the_resumed_run(tmp_path, caplog):
    first = WatchTrainingCallback(**OPTIONS)
    _trainer(first, tmp_path, steps=20, save_strategy="steps", save_steps=20).train()
    (tmp_path / "checkpoint-20" / STATE_FILE).write_text("{not json")
    resumed = WatchTrainingCallback(**OPTIONS)
    with caplog.at_level(logging.WARNING, logger="training_profiler"):
        _trainer(resumed, tmp_path, steps=30, nan_step=25).train(resume_from_checkpoint=str(tmp_path / "checkpoint-20"))
    assert resumed.monitor.step_count == 10  # a fresh monitor: steps 21-30 are its steps 1-10
    assert alert_keys(resumed.monitor) == [(5, "loss", "nonfinite"), (5, "grad_norm", "nonfinite")]
    path = tmp_path / "checkpoint-20" / STATE_FILE
    assert [r.getMessage() for r in caplog.records if "[Monitor]" in r.getMessage()] == [
        f"[Monitor] {path} was not restored (JSONDecodeError: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)); the monitor learns its baseline afresh"]


def test_with_gradient_accumulation_a_step_is_an_optimizer_step_read_once_after_its_last_micro_batch(tmp_path):
    # 4 micro-batches of 8 rows = the 32-row batch of the reference: the same gradients, summed
    callback = WatchTrainingCallback(**OPTIONS)
    reads = []
    observe = callback.monitor.observe_gradients
    callback.monitor.observe_gradients = lambda: (reads.append(callback.monitor.step_count + 1), observe())[1]
    _trainer(callback, tmp_path, steps=12, per_device_train_batch_size=BATCH // 4,
             gradient_accumulation_steps=4).train()
    assert callback.monitor.step_count == 12 and reads == list(range(1, 13))
    reference = decorator_run(steps=12).history
    for got, want in zip(callback.monitor.history, reference):
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)


def test_the_callback_reads_no_tensor_value_on_the_host_in_any_step(tmp_path, monkeypatch):
    monkeypatch.setattr(StatsBuffer, "host_scalars", False)  # the statistics written as on a GPU (device ops)
    callback = WatchTrainingCallback(**OPTIONS)
    counter = count_host_syncs(callback, ("on_step_begin", "_forward_hook", "_on_backward", "_after_backward",
                                          "on_pre_optimizer_step", "on_step_end", "on_log"))
    _trainer(callback, tmp_path, steps=30).train()
    # six hooks per step x 30 steps, on_log at steps 10, 20, 30 and the final summary; three periodic reads
    assert counter == {"syncs": 0, "cpu_reads": 0, "calls": 6 * 30 + 4}
    assert len(callback.monitor.history) == 30


def test_the_decorator_in_a_plain_accelerate_loop_finds_the_scaler_on_the_wrapped_optimizer():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton: the Trainers above set it
    # on CPU accelerate makes neither the fp16 autocast nor the GradScaler: switched on as on a GPU
    accelerator = accelerate.Accelerator(mixed_precision="fp16", cpu=True)
    accelerator.scaler, accelerator.native_amp = cpu_fp16_scaler(), True
    model = make_mlp()
    model, opt = accelerator.prepare(model, make_optimizer(model.parameters())[0])
    x, y = make_data(overflow=True)

    @watch_training(**OPTIONS)
    def train_step(model, opt, xb, yb):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(xb).float(), yb)
        accelerator.backward(loss)
        opt.step()
        return loss.detach()

    for i in range(STEPS):
        train_step(model, opt, x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH])
    AcceleratorState._reset_state(reset_partial_state=True)
    monitor = train_step.monitor
    assert monitor.scaler is accelerator.scaler and monitor.optimizer is opt.optimizer
    assert alert_keys(monitor) == alert_keys(decorator_run(fp16=True))  # a loss spike, three skipped steps
    reference = decorator_run(fp16=True, steps=10).history[9]["grad_norm"]  # unscaled
    assert monitor.history[9]["grad_norm"] == pytest.approx(reference, rel=1e-5)


def _tensorboard_scalars(folder):
    """{tag: {step: value}} of the scalars in the TensorBoard event files under ``folder``
    (TFRecord framing: an 8-byte length, its 4-byte CRC, the Event proto, its 4-byte CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at < len(data):
            length = int.from_bytes(data[at : at + 8], "little")
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


@pytest.mark.parametrize("added", ["in_the_constructor", "with_add_callback"])
def test_the_monitor_keys_reach_the_reporting_integrations_that_run_before_the_callback(tmp_path, added):
    # report_to's integrations (TensorBoard here) and a callback the user lists first all come before
    # ours in the Trainer's list, and each reads `logs` in its own on_log: the callback moves itself
    # to the front so that they see the monitor's keys
    pytest.importorskip("tensorboardX")
    seen = []  # (step, logs) of each on_log: at step 30 the periodic logs, then the run's summary

    class Recorder(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append((state.global_step, dict(logs)))

    callback = WatchTrainingCallback(**OPTIONS)
    model = Regression()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=30, use_cpu=True, report_to="tensorboard", logging_steps=10,
        disable_tqdm=True, dataloader_num_workers=0, max_grad_norm=0.0, save_strategy="no",
        per_device_train_batch_size=BATCH)
    callbacks = [Recorder(), callback] if added == "in_the_constructor" else [Recorder()]
    trainer = InOrder(model=model, args=args, train_dataset=Rows(), callbacks=callbacks,
                      optimizers=make_optimizer(model.parameters()))
    if added == "with_add_callback":  # moved in on_train_begin: the Trainer's __init__ did not call it
        trainer.add_callback(callback)
    trainer.train()
    assert [type(cb).__name__ for cb in trainer.callback_handler.callbacks] == [
        "WatchTrainingCallback", "DefaultFlowCallback", "TensorBoardCallback", "Recorder", "PrinterCallback"]
    history = {r["step"]: r for r in callback.monitor.history}
    monitored = {step: logs for step, logs in seen if "monitor/step" in logs}
    assert sorted(monitored) == [10, 20, 30]
    assert monitored[20]["monitor/step"] == 20.0
    assert monitored[20]["monitor/grad_norm"] == pytest.approx(history[20]["grad_norm"])
    board = _tensorboard_scalars(tmp_path)  # TensorBoardCallback writes every key as train/<key>
    assert sorted(board["train/monitor/step"].items()) == [(10, 10.0), (20, 20.0), (30, 30.0)]
    assert board["train/monitor/grad_norm"][20] == pytest.approx(history[20]["grad_norm"], rel=1e-6)
    assert board["train/monitor/alerts"] == {10: 0.0, 20: 0.0, 30: 0.0}
