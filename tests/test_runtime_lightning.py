"""WatchTrainingCallback in a real Lightning Trainer (CPU, a tiny MLP) with planted faults
(tests/planted_faults.py): the same alert steps as the decorator, statistics in the Trainer's
logger, the monitor's state in the checkpoint, the opt-in actions. Every test runs with both
Lightning packages, ``lightning.pytorch`` and ``pytorch_lightning``: each has its own Trainer,
LightningModule and Callback classes, and one callback class serves both."""

import csv
import functools
import logging

import pytest
import torch
from torch import nn

from planted_faults import (BATCH, NAN_STEP, OPTIONS, STEPS, alert_keys, count_host_syncs,  # noqa: E402
                            cpu_fp16_scaler, decorator_run, make_data, make_mlp, make_optimizer)

from training_profiler.runtime import TrainingAlertError  # noqa: E402
from training_profiler.runtime.device_stats import StatsBuffer  # noqa: E402

WatchTrainingCallback = pytest.importorskip(  # raises ImportError only when neither package is installed
    "training_profiler.runtime.lightning", reason="needs lightning or pytorch-lightning",
    exc_type=ImportError).WatchTrainingCallback

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)


@pytest.fixture(params=["lightning.pytorch", "pytorch_lightning"])
def pl(request):
    """The Lightning package under test (skipped only when it is not installed)."""
    return pytest.importorskip(request.param)


@functools.cache
def _regression(pl):
    """The tiny LightningModule of ``pl``'s namespace: a Trainer accepts only its own package's modules."""

    class Regression(pl.LightningModule):
        def __init__(self, lr_raise=False):
            super().__init__()
            self.net = make_mlp()
            self.lr_raise = lr_raise

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x).float(), y)

        def configure_optimizers(self):
            opt, sched = make_optimizer(self.parameters(), self.lr_raise)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Regression


def _loader(nan_step=None, overflow=False, batch_size=BATCH):
    x, y = make_data(nan_step, overflow)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _fit(pl, callback, tmp_path, module=None, steps=STEPS, nan_step=None, ckpt_path=None, overflow=False,
         **trainer_args):
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, default_root_dir=tmp_path,
                         logger=pl.loggers.CSVLogger(tmp_path), log_every_n_steps=10, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback], **trainer_args)
    trainer.fit(module or _regression(pl)(), _loader(nan_step, overflow), ckpt_path=ckpt_path)
    return trainer


def test_a_learning_rate_raise_alerts_at_the_same_step_as_through_the_decorator(pl, tmp_path):
    callback = WatchTrainingCallback(**OPTIONS)
    _fit(pl, callback, tmp_path, _regression(pl)(lr_raise=True), enable_checkpointing=False)
    expected = alert_keys(decorator_run(lr_raise=True))
    first = alert_keys(callback.monitor)[0]
    assert first[0] == 63 and first[2] == "spike"  # the update of step 61 is the first at the raised LR
    assert alert_keys(callback.monitor) == expected
    assert callback.monitor.step_count == STEPS
    # the monitor's view of a healthy step equals the decorator's: same model, batches and optimizer
    assert callback.monitor.history[9]["grad_norm"] == pytest.approx(decorator_run(steps=10).history[9]["grad_norm"])


def test_a_nan_batch_alerts_at_its_step_and_the_statistics_reach_the_trainer_logger(pl, tmp_path):
    callback = WatchTrainingCallback(**OPTIONS)
    trainer = _fit(pl, callback, tmp_path, nan_step=NAN_STEP, enable_checkpointing=False)
    assert alert_keys(callback.monitor)[:2] == alert_keys(decorator_run(nan_step=NAN_STEP))[:2] == [
        (NAN_STEP, "loss", "nonfinite"), (NAN_STEP, "grad_norm", "nonfinite")]
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("monitor/step")]
    assert {"monitor/grad_norm", "monitor/spike_score", "monitor/alerts", "monitor/loss"} <= set(rows[0])
    by_step = {int(float(r["monitor/step"])): r for r in rows}
    history = {r["step"]: r for r in callback.monitor.history}
    assert by_step[20]["monitor/grad_norm"] and float(by_step[20]["monitor/grad_norm"]) == pytest.approx(
        history[20]["grad_norm"])
    late = max(by_step)
    assert late >= NAN_STEP and float(by_step[late]["monitor/alerts"]) == 2.0
    assert float(by_step[late]["monitor/spike_score"]) == pytest.approx(1000 / late)


def test_a_run_resumed_from_a_lightning_checkpoint_keeps_its_baseline(pl, tmp_path):
    first = WatchTrainingCallback(**OPTIONS)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=50, save_top_k=-1)
    trainer = pl.Trainer(max_steps=50, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[first, checkpoint])
    trainer.fit(_regression(pl)(lr_raise=True), _loader())
    assert first.monitor.step_count == 50 and first.monitor.alerts == []
    ckpt = torch.load(tmp_path / "ckpt" / "epoch=0-step=50.ckpt", weights_only=True)  # plain data
    assert ckpt["callbacks"]["WatchTrainingCallback"]["monitor"]["step_count"] == 50

    # Lightning restarts a plain DataLoader's epoch on resume, so the batches after step 50 are
    # not the uninterrupted run's; the LR raise still explodes the gradients at step 63
    resumed, fresh = WatchTrainingCallback(**OPTIONS), WatchTrainingCallback(**OPTIONS)
    for callback in (resumed, fresh):
        trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                             callbacks=[callback])
        ckpt_path = tmp_path / "ckpt" / "epoch=0-step=50.ckpt"
        if callback is fresh:  # the same restart with the monitor's state dropped from the checkpoint
            ckpt["callbacks"] = {}
            torch.save(ckpt, tmp_path / "no_monitor.ckpt")
            ckpt_path = tmp_path / "no_monitor.ckpt"
        trainer.fit(_regression(pl)(lr_raise=True), _loader(), ckpt_path=ckpt_path)
    first_alert = alert_keys(resumed.monitor)[0]
    assert first_alert[2] == "spike" and 61 < first_alert[0] <= 63  # right after the LR raise: no second warm-up
    assert resumed.monitor.step_count == STEPS and resumed.monitor.history[0]["step"] == 1
    assert fresh.monitor.step_count == STEPS - 50
    # without the state: step 13 of a second warm-up (no verdict), then only the NaN it leads to
    assert alert_keys(fresh.monitor) == [(15, "loss", "nonfinite"), (15, "grad_norm", "nonfinite")]


def test_on_alert_raise_stops_the_lightning_run_and_skip_list_names_the_nan_step(pl, tmp_path):
    skip = tmp_path / "skip_batches.json"
    callback = WatchTrainingCallback(**OPTIONS, on_alert="raise", skip_list=skip)
    with pytest.raises(TrainingAlertError, match=f"Step {NAN_STEP} \\| loss: nan"):
        _fit(pl, callback, tmp_path, nan_step=NAN_STEP, enable_checkpointing=False)
    assert callback.monitor.step_count == NAN_STEP  # a NaN is handed out at once: training stops at its step
    assert skip.read_text() == f"[{NAN_STEP}]\n"


def test_fp16_overflow_under_cpu_autocast_with_a_grad_scaler_gives_the_decorators_alerts(pl, tmp_path):
    # Lightning makes no GradScaler on CPU: the precision plugin gets one, and the callback finds it there
    plugin = pl.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=cpu_fp16_scaler())
    callback = WatchTrainingCallback(**OPTIONS)
    trainer = _fit(pl, callback, tmp_path, overflow=True, plugins=[plugin], enable_checkpointing=False)
    assert callback.monitor.scaler is plugin.scaler
    # the three x1000 batches overflow in the fp16 backward: a loss spike, then three skipped steps
    assert alert_keys(callback.monitor) == alert_keys(decorator_run(fp16=True)) == [
        (41, "loss", "spike"), (43, "loss_scale", "skipped_steps")]
    assert [r.get("loss_scale") for r in callback.monitor.history[39:44]] == [1024.0, 512.0, 256.0, 128.0, 128.0]
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        skipped = [float(r["monitor/skipped_steps"]) for r in csv.DictReader(f) if r.get("monitor/step")]
    assert skipped[-1] == 3.0


def test_a_corrupt_monitor_state_or_a_failing_logger_never_stops_the_run(pl, tmp_path, caplog):
    callback = WatchTrainingCallback(**OPTIONS)
    callback.load_state_dict({"monitor": {"version": 1}, "reporter": {}})  # not a monitor state: logged, fresh start

    class BrokenLogging(_regression(pl)):
        def log_dict(self, *args, **kwargs):
            raise RuntimeError("logger down")

    with caplog.at_level(logging.WARNING, logger="training_profiler"):
        _fit(pl, callback, tmp_path, BrokenLogging(), steps=30, nan_step=25, enable_checkpointing=False)
    assert callback.monitor.step_count == 30
    assert alert_keys(callback.monitor)[:1] == [(25, "loss", "nonfinite")]
    failures = [r.getMessage() for r in caplog.records if "training continues (reported once)" in r.getMessage()]
    assert failures == [
        "[Monitor] WatchTrainingCallback.load_state_dict raised ValueError: load_state_dict: not a monitor state: "
        "pass what TrainingMonitor.state_dict() returned; training continues (reported once)",
        "[Monitor] WatchTrainingCallback.on_train_batch_end raised RuntimeError: logger down; training continues "
        "(reported once)"]


def test_with_gradient_accumulation_a_step_is_an_optimizer_step(pl, tmp_path):
    # 4 batches of 8 rows per optimizer step: the gradients of the reference's 32-row batch
    callback = WatchTrainingCallback(**OPTIONS)
    trainer = pl.Trainer(max_steps=12, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         accumulate_grad_batches=4)
    trainer.fit(_regression(pl)(), _loader(batch_size=BATCH // 4))  # Lightning divides each loss by 4 for the backward
    assert callback.monitor.step_count == 12
    reference = decorator_run(steps=12).history
    for got, want in zip(callback.monitor.history, reference):
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)


def test_the_callback_reads_no_tensor_value_on_the_host_in_any_step(pl, tmp_path, monkeypatch):
    monkeypatch.setattr(StatsBuffer, "host_scalars", False)  # the statistics written as on a GPU (device ops)
    callback = WatchTrainingCallback(**OPTIONS)
    counter = count_host_syncs(callback, ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end"))
    _fit(pl, callback, tmp_path, steps=30, enable_checkpointing=False)
    assert counter == {"syncs": 0, "cpu_reads": 0, "calls": 90}  # three hooks x 30 steps, with three periodic reads and log_dicts
    assert len(callback.monitor.history) == 30
