"""Tasks: each task's criterion and the shapes it adapts, what train_stat totals (against a hand count), the
target checks' errors, losses and metrics by name, and a model's own loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from trainyard.data import DataInfo
from trainyard.errors import ConfigError, DataError
from trainyard.tasks import TASKS, Task, build_loss, make_criterion, metric_name, output_logits, output_loss, parse_metrics, task_class
from trainyard.tasks.classification import Binary, Classification, Multilabel
from trainyard.tasks.regression import Regression


def info(**kw) -> DataInfo:
    return DataInfo(kind="features", **kw)


# --- criterion and shapes -----------------------------------------------------------------------------


def test_classification_criterion_is_cross_entropy_on_class_logits():
    task = Classification(info(num_classes=3))
    out, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert task.num_outputs() == 3
    assert torch.equal(task.criterion(out, y), F.cross_entropy(out, y))
    assert task.check_output(out, y) is None
    assert "(5, 3), one logit per class" in task.check_output(torch.randn(5, 4), y)


def test_binary_criterion_takes_one_logit_per_sample_in_either_shape():
    task = Binary(info(num_classes=2))
    y = torch.tensor([1, 0, 0, 1])  # integer 0/1 targets: adapted to the logits' dtype
    column = torch.randn(4, 1)
    assert task.num_outputs() == 1
    expected = F.binary_cross_entropy_with_logits(column.view(-1), y.float())
    assert torch.equal(task.criterion(column, y), expected)
    assert torch.equal(task.criterion(column.view(-1), y), expected)
    assert task.adapt(column, y)[0].shape == (4,) and task.adapt(column, y)[1].dtype == torch.float32
    assert "one logit per sample" in task.check_output(torch.randn(4, 2), y)


def test_multilabel_criterion_is_bce_on_label_vectors():
    task = Multilabel(info(target_shape=(5,)))
    out, y = torch.randn(3, 5), torch.randint(0, 2, (3, 5))
    assert task.num_outputs() == 5 == task.info.num_labels
    assert torch.equal(task.criterion(out, y), F.binary_cross_entropy_with_logits(out, y.float()))
    assert "one logit per label, (3, 5)" in task.check_output(torch.randn(3, 4), y)


def test_regression_criterion_fits_predictions_to_the_targets_shape():
    scalar = Regression(info(target_shape=()))
    out, y = torch.randn(6, 1), torch.randn(6, dtype=torch.float64)
    assert scalar.num_outputs() == 1
    assert torch.equal(scalar.criterion(out, y), F.mse_loss(out.view(-1), y.float()))  # (6, 1) for (6,), float64 targets as float32
    vector = Regression(info(target_shape=(2, 3)))
    out, y = torch.randn(4, 6), torch.randn(4, 2, 3)
    assert vector.num_outputs() == 6
    assert torch.equal(vector.criterion(out, y), F.mse_loss(out.view(4, 2, 3), y))
    assert "one value per target" in vector.check_output(torch.randn(4, 5), y)


def test_a_model_s_own_loss_comes_before_the_task_loss():
    task = Regression(info(target_shape=()), loss="L1Loss")
    y = torch.tensor([1.0, 2.0])
    logits = torch.tensor([[0.0], [4.0]])
    own = torch.tensor(0.25)
    assert task.criterion({"loss": own, "logits": logits}, y) is own  # the dict's loss, not L1 of its logits
    assert task.criterion(SimpleNamespace(loss=own, logits=logits), y) is own  # an object holding .loss (Hugging Face outputs)
    assert task.criterion(own, y) is own  # a bare scalar is a loss
    assert torch.equal(task.criterion({"logits": logits}, y), torch.tensor(1.5))  # only logits: the task's L1Loss on them
    assert torch.equal(task.criterion((logits, torch.tensor(3.0)), y), torch.tensor(1.5))  # the first non-scalar of a tuple
    no_loss = make_criterion(None)
    assert no_loss({"loss": own}, y) is own
    with pytest.raises(ConfigError, match="holds no loss and no logits, and the task has no loss"):
        no_loss({"logits": logits}, y)


def test_output_loss_and_logits():
    logits, loss = torch.randn(2, 3), torch.tensor(1.0)
    assert output_loss(loss) is loss and output_loss(logits) is None
    assert output_logits(logits) is logits and output_logits(loss) is None
    assert output_logits({"loss": loss, "scores": logits}) is logits  # the first non-scalar tensor besides the loss
    assert output_logits(SimpleNamespace(logits=logits)) is logits
    assert output_logits([loss, logits]) is logits
    assert output_logits({"loss": loss}) is None


# --- train_stat against a hand count -------------------------------------------------------------------


def test_train_stats_count_what_the_metric_names():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    total, count = Classification(info(num_classes=3)).train_stat(logits, torch.tensor([0, 1, 2, 2]))
    assert (int(total), count) == (3, 4)  # argmax 0, 1, 0, 2: the third is wrong

    total, count = Binary(info(num_classes=2)).train_stat(torch.tensor([[0.5], [-1.0], [2.0], [-0.1]]), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert (int(total), count) == (3, 4)  # logit > 0 is yes: 1, 0, 1, 0 against 1, 0, 0, 0

    out = torch.tensor([[1.0, -1.0, 2.0], [-1.0, -1.0, 1.0]])
    total, count = Multilabel(info(target_shape=(3,))).train_stat(out, torch.tensor([[1, 0, 0], [0, 1, 1]]))
    assert (int(total), count) == (4, 6)  # (sample, label) pairs right: 1,1,0 and 1,0,1

    total, count = Regression(info(target_shape=())).train_stat(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.5, 2.0, 1.0]))
    assert (float(total), count) == (2.5, 3)  # |1 - 1.5| + |2 - 2| + |3 - 1|: the absolute errors' sum, MAE = 2.5 / 3
    assert Regression.train_metric == "mae" and Classification.train_metric == Multilabel.train_metric == "accuracy"


# --- target checks ------------------------------------------------------------------------------------


def test_classification_takes_class_ids_only():
    task = Classification(info(num_classes=3))
    task.check_targets(torch.tensor([0, 2, 1]), "train split")
    task.check_targets(torch.tensor([0.0, 2.0, 1.0]), "train split")  # whole numbers stored as floats are class ids
    with pytest.raises(
        DataError,
        match=r"^train split: targets are fractional \(e\.g\. 0\.5\), but task=classification takes class ids.*use task=regression",
    ):
        task.check_targets(torch.tensor([1.0, 0.5, 2.0]), "train split")
    with pytest.raises(DataError, match=r"^val split: targets are vectors of 4, but task=classification.*use task=multilabel"):
        task.check_targets(torch.zeros(3, 4), "val split")


def test_binary_takes_zero_one_or_probabilities():
    task = Binary(info(num_classes=2))
    task.check_targets(torch.tensor([0.0, 1.0, 0.3]), "train split")
    with pytest.raises(DataError, match=r"targets outside \[0, 1\] \(e\.g\. 3\).*for class ids use task=classification"):
        task.check_targets(torch.tensor([0, 1, 3]), "train split")
    with pytest.raises(DataError, match="targets are vectors of 2.*use task=multilabel"):
        task.check_targets(torch.zeros(3, 2), "train split")


def test_multilabel_takes_zero_one_vectors():
    task = Multilabel(info(target_shape=(3,)))
    task.check_targets(torch.tensor([[0, 1, 1], [1, 0, 0]]), "train split")
    with pytest.raises(
        DataError,
        match=r"^train split: targets are class ids \(e\.g\. 7\), but task=multilabel takes a 0/1 vector.*use task=classification",
    ):
        task.check_targets(torch.tensor([7, 1, 0]), "train split")
    with pytest.raises(DataError, match=r"values other than 0 and 1 \(e\.g\. 2\)"):
        task.check_targets(torch.tensor([[0, 2, 1]]), "train split")


def test_regression_takes_any_real_targets():
    Regression(info(target_shape=())).check_targets(torch.tensor([-3.5, 0.25, 1e6]), "train split")


# --- losses and metrics by name --------------------------------------------------------------------------


def test_losses_by_torch_name_import_path_class_or_callable():
    mse = build_loss("MSELoss", None)
    assert torch.equal(mse(torch.ones(2), torch.zeros(2)), torch.tensor(1.0))
    huber = build_loss("HuberLoss", {"delta": 0.5})
    assert torch.equal(huber(torch.tensor([2.0]), torch.tensor([0.0])), torch.tensor(0.875))  # 0.5 * (2 - 0.25)
    assert build_loss("torch.nn.functional:l1_loss", None) is F.l1_loss
    assert build_loss(F.smooth_l1_loss, None) is F.smooth_l1_loss
    assert build_loss(None, None) is None
    with pytest.raises(ConfigError, match=r"^task.loss=MSELos: unknown loss; a torch.nn loss .*did you mean MSELoss"):
        build_loss("MSELos", None)
    with pytest.raises(ConfigError, match=r"task.loss_args: MSELoss\(.*reduction.*takes no argument 'reductio'; did you mean reduction"):
        build_loss("MSELoss", {"reductio": "sum"})
    with pytest.raises(ConfigError, match="task.loss_args: given, but task.loss is not a class to construct"):
        build_loss(F.l1_loss, {"reduction": "sum"})


@pytest.mark.parametrize(
    "cls, args, name",
    [
        ("F1Score", {}, "f1"),
        ("F1Score", {"average": "macro"}, "f1_macro"),
        ("BinaryF1Score", {}, "f1"),
        ("MulticlassF1Score", {"average": "weighted"}, "f1_weighted"),
        ("Accuracy", {"top_k": 5}, "accuracy_top5"),
        ("Accuracy", {"top_k": 1}, "accuracy"),
        ("MulticlassAccuracy", {}, "accuracy"),
        ("MeanAbsoluteError", {}, "mae"),
        ("MeanSquaredError", {}, "mse"),
        ("MeanSquaredError", {"squared": False}, "rmse"),
        ("R2Score", {}, "r2"),
        ("AUROC", {}, "auroc"),
        ("PearsonCorrCoef", {}, "pearson_corr_coef"),
        ("MultilabelAveragePrecision", {}, "average_precision"),
    ],
)
def test_metric_short_names(cls, args, name):
    assert metric_name(cls, args) == name


def test_metrics_parse_and_build_with_the_task_s_facts():
    specs = parse_metrics(
        ["F1Score", {"Accuracy": {"top_k": 2}}, {"my_f1": {"metric": "F1Score", "average": "macro"}}, "MeanAbsoluteError"]
    )
    assert [n for n, _, _ in specs] == ["f1", "accuracy_top2", "my_f1", "mae"]
    assert specs[2][2] == {"average": "macro"}
    task = Classification(info(num_classes=3), metrics=["F1Score", {"Accuracy": {"top_k": 2}}])
    assert task.metric_names() == ["loss", "f1", "accuracy_top2"]
    metrics = task.build_metrics(torch.device("cpu"))  # task=multiclass and num_classes=3 come from the task's facts
    logits, y = torch.tensor([[3.0, 2.0, 0.0], [0.0, 1.0, 3.0], [0.0, 3.0, 1.0]]), torch.tensor([1, 2, 0])
    for metric in metrics.values():
        metric.update(*task.metric_inputs(logits, y))
    assert float(metrics["accuracy_top2"].compute()) == pytest.approx(2 / 3)  # the top two hold 1 and 2, not 0
    assert float(metrics["f1"].compute()) == pytest.approx(1 / 3)  # micro F1 = top-1 accuracy: only the second is right
    with pytest.raises(ConfigError, match=r"task.metrics\[0\]: unknown metric 'MeanAbsolutError'.*did you mean MeanAbsoluteError"):
        parse_metrics(["MeanAbsolutError"])
    with pytest.raises(ConfigError, match="two metrics are named 'f1'"):
        parse_metrics(["F1Score", {"F1Score": {"threshold": 0.3}}])


def test_default_metrics_and_monitors():
    assert [n for n, _, _ in Regression(info()).metric_specs] == ["mae", "mse"]
    assert [n for n, _, _ in Multilabel(info(target_shape=(3,))).metric_specs] == ["accuracy", "f1_macro"]
    assert (Regression.monitor, Regression.monitor_mode) == ("val/loss", "min")
    assert (Classification.monitor, Classification.monitor_mode) == ("val/accuracy", "max")


# --- tasks by name --------------------------------------------------------------------------------------


class MyTask(Regression):
    name = "mine"


def test_tasks_by_name_or_import_path():
    assert task_class("binary") is Binary
    assert task_class(f"{__name__}:MyTask") is MyTask
    assert set(TASKS.names()) == {"classification", "binary", "multilabel", "regression"}
    with pytest.raises(ConfigError, match=r"task.name=torch.nn:Linear: Linear is not a trainyard.tasks.Task subclass"):
        task_class("torch.nn:Linear")
    with pytest.raises(ConfigError, match="did you mean regression"):
        task_class("regresion")
    assert Task.default_loss is None and Task(info()).loss is None  # a task with no loss: the model brings its own


# --- honest numbers: the test split's count and Wilson interval (issue 21) ----------------------------


def test_wilson_interval_on_known_values():
    from trainyard.tasks import wilson_interval

    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)  # the textbook case
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    low, high = wilson_interval(359, 359)  # no error in 359: not "1.0000", at least 0.989
    assert high == 1.0 and low == pytest.approx(0.9894, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_summary_text_gives_the_count_and_interval():
    from trainyard.tasks import interval_entries, summary_text

    final = {"test/loss": 0.02, "test/accuracy": 358 / 359, **interval_entries("test", "accuracy", 358, 359), "val/accuracy": 0.99}
    assert summary_text(final) == "accuracy 0.9972 (358/359, 95% CI 0.984-1.000)"
    assert summary_text({"test/loss": 0.5, "test/mae": 0.25}) == "mae 0.2500"
    assert summary_text({"test/loss": 0.5}) == "loss 0.5000"
    assert summary_text({"val/loss": 0.5}) == ""


def _evaluate(task, logits, y, batch=4):
    from trainyard.engine.evaluate import evaluate

    class Fixed(torch.nn.Module):  # returns the logits of the samples it is given, by index
        def forward(self, i):
            return logits[i]

    strategy = SimpleNamespace(device=torch.device("cpu"), predict=lambda model, x: model(x), all_reduce_sum=lambda t: t)
    loader = [(torch.arange(i, min(i + batch, len(y))), y[i : i + batch]) for i in range(0, len(y), batch)]
    return evaluate(Fixed(), loader, strategy, prefix="test", task=task, autocast=lambda: __import__("contextlib").nullcontext()).metrics


def test_the_test_split_stores_its_count_and_interval_for_accuracy():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    pred = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 1, 1])  # 8 of 10 right
    logits = F.one_hot(pred, 3).float()
    m = _evaluate(Classification(info(num_classes=3)), logits, y)
    assert m["test/accuracy"] == pytest.approx(0.8)
    assert (m["test/accuracy/correct"], m["test/accuracy/count"]) == (8.0, 10.0)
    assert m["test/accuracy/low"] == pytest.approx(0.4902, abs=1e-4) and m["test/accuracy/high"] == pytest.approx(0.9433, abs=1e-4)
    # a macro average is another quantity than the share right: no interval is claimed for it
    macro = _evaluate(
        Classification(info(num_classes=3), metrics=[{"accuracy": {"metric": "MulticlassAccuracy", "average": "macro"}}]), logits, y
    )
    assert "test/accuracy" in macro and not any(k.startswith("test/accuracy/") for k in macro)
    # regression has no share metric; binary does
    yb = torch.tensor([1, 0, 1, 1])
    mb = _evaluate(Binary(info(num_classes=2)), torch.tensor([2.0, -1.0, -3.0, 1.0]), yb)
    assert (mb["test/accuracy/correct"], mb["test/accuracy/count"]) == (3.0, 4.0)
