"""A trained student in a user's hands: `models.load_student`, `python -m distill.evaluate`, `models.export`."""

import pytest
import torch

from distill.datasets import load_dataset
from distill.evaluate import main as evaluate
from distill.run import main as run
from models import Student, create_model, export, load_student

QUICK = ["--train-subset", "64", "--test-subset", "96", "--batch-size", "32", "--progress", "off", "--max-steps", "4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A quick kd run on the digits with non-default neuron options and T."""
    out = tmp_path_factory.mktemp("run")
    args = ["--method", "kd", "--time-steps", "3", "--neuron-tau", "1.5", "--v-threshold", "0.8"]
    results = run([*QUICK, *args, "--surrogate", "atan", "--out", str(out)])
    return out, results


def test_load_student_reproduces_the_reported_accuracy(run_dir):
    out, results = run_dir
    student = load_student(out)
    assert isinstance(student, Student) and not student.training
    assert student.T == 3
    assert student.neuron_options["tau"] == 1.5 and student.neuron_options["v_threshold"] == 0.8
    assert student.neuron_options["surrogate"] == "atan"
    test = load_dataset("digits", "test").subset(96, 0)
    assert student.mean.flatten().tolist() == pytest.approx(list(test.mean))
    images, labels = test.batch(torch.arange(len(test)), normalize=False)  # in [0, 1], as a user has them
    assert 0 <= images.min() and images.max() <= 1
    accuracy = int((student(images).argmax(-1) == labels).sum()) / len(labels)
    assert accuracy == pytest.approx(results["student_acc"], abs=1e-9)
    assert load_student(out / "student.pt").T == 3


def test_evaluate_command_prints_the_reported_accuracy(run_dir, capsys):
    out, results = run_dir
    profile = evaluate([str(out)])
    printed = capsys.readouterr().out
    assert profile.accuracy == pytest.approx(results["student_acc"], abs=1e-9)
    assert f"accuracy:        {100 * results['student_acc']:.2f} %" in printed
    assert "firing rate per LIF layer" in printed and "  stem.act" in printed and "uJ" in printed
    assert 0 < profile.energy_uj and len(profile.firing_rates) == len(results["firing_rates"])
    whole = evaluate([str(out), "--subset", "0"])
    assert "359 samples" in capsys.readouterr().out and 0 <= whole.accuracy <= 1


def test_evaluate_errors_name_the_problem(run_dir, tmp_path, write_image_folder):
    out, _ = run_dir
    with pytest.raises(SystemExit, match=f"run folder {tmp_path} has no student.pt"):
        evaluate([str(tmp_path)])
    write_image_folder(tmp_path / "images", {"val": {"cat": 2, "dog": 2}}, size=8)
    with pytest.raises(SystemExit, match="takes 1-channel images of 10 classes; imagenet has 3 channels and 2 classes"):
        evaluate([str(out), "--dataset", "imagenet", "--data-dir", str(tmp_path / "images"), "--image-size", "8"])


@pytest.mark.parametrize("kind", ["student", "ann"])
def test_export_gives_the_module_logits(run_dir, kind):
    out, _ = run_dir
    model = load_student(out) if kind == "student" else create_model("tiny_resnet", num_classes=10, in_channels=1)
    x = torch.rand(5, 1, 8, 8)
    program = export(model, x)
    assert isinstance(program, torch.export.ExportedProgram) and not model.training
    torch.testing.assert_close(program.module()(x), model(x), atol=0, rtol=0)
    torch.testing.assert_close(program.module()(x.flip(0)), model(x.flip(0)), atol=0, rtol=0)


def test_load_student_refuses_a_file_without_its_arguments(tmp_path):
    torch.save({"model": create_model("tiny_resnet", kind="snn").state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"lacks \['model_args', 'input'\]"):
        load_student(tmp_path / "bare.pt")
