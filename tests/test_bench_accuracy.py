"""``python -m bench.accuracy --quick``: the grid runs end to end, writes its three outputs, and resumes."""

import importlib.util
import json
import signal
import subprocess
import sys
import time

import pytest

from bench.accuracy import (
    EARLIER_DEFAULTS,
    applying_defaults,
    common_flags,
    defaults_text,
    file_sha256,
    load_results,
    main,
    mean_sd,
    moved_runs,
    parse_args,
    row_argv,
    stopped_message,
    summary,
    targets,
    teacher_accuracy_text,
    write_report,
)
from distill.config import Config
from distill.run_folder import claim


def test_quick_grid_writes_results_report_and_plot_and_resumes(tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--quick", "--out", str(out), "--runs", str(runs)]
    main(argv)
    printed = capsys.readouterr().out
    assert "[1/12] direct-rate-default-s0 ..." in printed and "[12/12] ann-ann-default-s1:" in printed
    results = json.loads((out / "results.json").read_text())
    records = results["records"]
    assert sorted({r["method"] for r in records}) == ["ann", "blockwise", "ckd", "convert", "direct", "kd"]
    assert sorted({r["seed"] for r in records}) == [0, 1]
    for r in records:
        assert {
            "method",
            "init",
            "recipe",
            "seed",
            "budget",
            "accuracy",
            "firing_rate",
            "train_time_s",
            "command",
        } <= set(r)
        assert r["init"] == ("teacher" if r["method"] == "convert" else "scratch")
        assert (r["train"] == "ann") == (r["method"] == "ann") == (r["firing_rate"] is None)
        assert r["budget"] == {"epochs": 2, "steps": 16, "train_images": 256}  # the same for every row
        assert len(r["accuracy_per_epoch"]) == 2 and r["accuracy_per_epoch"][-1] == r["accuracy"]
        assert r["command"].startswith("python -m distill.run ") and f"--seed {r['seed']}" in r["command"]
        assert r["devices"] == ["cpu"]  # the device of every epoch, in order; two when a run resumed on another
    ann_line = next(line for line in printed.splitlines() if line.startswith("[12/12] ann-ann-default-s1:"))
    assert "teacher" not in ann_line  # the ANN row has no teacher; a student's line names its teacher's accuracy
    direct_line = next(line for line in printed.splitlines() if line.startswith("[1/12] direct-rate-default-s0:"))
    assert "(teacher " in direct_line
    report = (out / "report.md").read_text()
    assert "| convert | rate | default | 0,1 |" in report and "vs direct" in report
    assert f"Teacher file SHA-256: {file_sha256(runs / 'teacher' / 'teacher.pt')}." in report
    assert "Every row also runs with" not in report  # no flags after --
    # the ANN row: the teacher stage alone, on the students' images and epochs, with its own seed; no firing rate
    ann = next(r for r in records if r["method"] == "ann" and r["seed"] == 1)
    assert "--epochs 0 --teacher-epochs 2 --seed 1 --train-subset 256" in ann["command"]
    assert "--teacher " not in ann["command"] and ann["teacher_accuracy"] is None
    assert "| ann | ann | default | 0,1 |" in report and "| - |" in report
    assert "the ANN trained on the students' budget" in report
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "accuracy.png").stat().st_size > 0
    else:  # the plot extra is not installed: the tables are written all the same
        assert not (out / "accuracy.png").exists()

    # the same command again runs nothing; other settings in the same folder are refused
    main(argv)
    assert "12 runs, 12 done" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["records"] == records
    with pytest.raises(SystemExit, match="other settings"):
        main([*argv, "--epochs", "3"])
    (out / "report.md").unlink()
    assert main(["--report-only", "--out", str(out)])["records"] == records and (out / "report.md").exists()
    # continuing the grid on another machine is refused; a grid whose runs moved is described by --report-only
    with pytest.raises(SystemExit, match=r"other settings \(\['machine'\]\)"):
        main([*argv, "--machine", "a GPU, then this CPU"])
    main(["--report-only", "--out", str(out), "--machine", "a GPU, then this CPU"])
    assert "Machine: a GPU, then this CPU, 1 thread(s) per run." in (out / "report.md").read_text()


def test_jobs_run_rows_in_worker_processes_with_the_same_records(tmp_path, capsys):
    """--jobs 2: the rows run two at a time as distill.run processes, each record saved as its run finishes, with the
    accuracies of the same rows run one after another in this process."""
    grid = ["--quick", "--methods", "direct,kd,ann", "--seeds", "0"]
    sequential = main([*grid, "--out", str(tmp_path / "one"), "--runs", str(tmp_path / "one-runs")])
    teacher = str(tmp_path / "one-runs" / "teacher" / "teacher.pt")
    argv = [*grid, "--teacher", teacher, "--jobs", "2", "--out", str(tmp_path / "two"), "--runs", str(tmp_path / "two")]
    parallel = main(argv)
    printed = capsys.readouterr().out
    assert "2 runs at a time, each a distill.run process" in printed and "[3/3] " in printed

    def accuracy(results):
        return {(r["method"], r["seed"]): (r["accuracy"], r["accuracy_per_epoch"]) for r in results["records"]}

    assert accuracy(parallel) == accuracy(sequential) and len(accuracy(parallel)) == 3
    saved = json.loads((tmp_path / "two" / "results.json").read_text())
    assert accuracy(saved) == accuracy(parallel)
    main(argv)
    assert "3 runs, 3 done" in capsys.readouterr().out


def test_with_jobs_a_failed_run_keeps_the_records_of_the_runs_under_way(tmp_path, capsys):
    """A row that fails (an unknown recipe, refused by distill.run) stops the grid with its error, after the run
    beside it has finished and been saved."""
    out = tmp_path / "out"
    argv = ["--quick", "--methods", "direct", "--seeds", "0", "--recipes", "default,no_such_recipe", "--jobs", "2"]
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(out), "--runs", str(tmp_path / "runs")])
    assert "direct-rate-no_such_recipe-s0 failed with exit status 2" in capsys.readouterr().out
    records = json.loads((out / "results.json").read_text())["records"]
    assert [(r["method"], r["recipe"]) for r in records] == [("direct", "default")]


@pytest.mark.parametrize("started_in_background", [False, True])
def test_with_jobs_an_interrupt_stops_every_run_at_a_checkpoint_and_the_same_command_resumes(
    tmp_path, started_in_background
):
    """SIGINT to the grid: each run under way gets one SIGINT, writes a checkpoint and exits; the grid exits with 130
    and says how to continue; the same command then finishes every row. Also for a grid started in the background by
    a shell (``... &``), which inherits SIGINT ignored."""
    runs = tmp_path / "runs"
    argv = ["--quick", "--methods", "direct,kd", "--seeds", "0", "--epochs", "40", "--jobs", "2"]
    argv += ["--out", str(tmp_path / "out"), "--runs", str(runs)]
    command = [sys.executable, "-m", "bench.accuracy", *argv]
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if started_in_background else None
    grid = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ignore_sigint
    )
    folders = [runs / "direct-rate-default-s0", runs / "kd-rate-default-s0"]
    deadline = time.monotonic() + 120
    while not all((f / "metrics.jsonl").exists() for f in folders) and time.monotonic() < deadline:
        time.sleep(0.2)  # both runs are training
    time.sleep(1)
    grid.send_signal(signal.SIGINT)
    output, _ = grid.communicate(timeout=120)
    assert grid.returncode == 130, output
    assert output.count("checkpoint written") == 2
    assert "stopped (SIGINT: stopping the runs at a checkpoint); no row had finished; the same command" in output
    assert all((f / "checkpoint.pt").exists() and not (f / "results.json").exists() for f in folders)
    results = main(argv)
    assert sorted(r["method"] for r in results["records"]) == ["direct", "kd"]
    assert all(r["budget"] == {"epochs": 40, "steps": 320, "train_images": 256} for r in results["records"])


def test_a_row_killed_before_its_first_checkpoint_starts_over_and_foreign_files_are_still_refused(tmp_path):
    """A run killed (SIGKILL, a lost machine) before it wrote a checkpoint leaves its run folder with the log of its
    first steps only: the same command starts that row over. A folder SpikeKD did not write is never touched."""
    runs = tmp_path / "runs"
    killed = runs / "direct-rate-default-s0"
    claim(killed)
    (killed / "config.toml").write_text('method = "direct"\n')
    (killed / "metrics.jsonl").write_text('{"stage": "student", "step": 0}\n')
    argv = ["--quick", "--methods", "direct", "--seeds", "0", "--out", str(tmp_path / "out"), "--runs", str(runs)]
    results = main(argv)
    assert [r["method"] for r in results["records"]] == ["direct"]
    assert (killed / "results.json").exists() and (killed / "checkpoint.pt").exists()

    foreign = tmp_path / "foreign-runs" / "direct-rate-default-s0"
    foreign.mkdir(parents=True)
    (foreign / "metrics.jsonl").write_text("someone else's log\n")
    argv = ["--quick", "--methods", "direct", "--seeds", "0", "--out", str(tmp_path / "out2")]
    with pytest.raises(SystemExit, match="direct-rate-default-s0: --out .* holds files SpikeKD did not write"):
        main([*argv, "--runs", str(foreign.parent), "--teacher", str(runs / "teacher" / "teacher.pt")])
    assert (foreign / "metrics.jsonl").read_text() == "someone else's log\n"


@pytest.mark.parametrize("extra", [[], ["--neuron-tau", "1.25"], ["--neuron-tau=3", "--v-threshold", "0.9"]])
def test_a_grid_saved_under_earlier_defaults_is_never_continued_with_todays(tmp_path, extra):
    """A results.json saved before distill.run's defaults were recorded ran with ``EARLIER_DEFAULTS``: continuing it
    with today's defaults would mix two neurons in one table, so it is refused, naming the flag that continues it
    (the same grid with that flag after ``--`` is the same grid). A grid whose flags set the option runs as it did.
    Its report says how to rerun it."""
    saved = dict(dataset="digits", arch="tiny_resnet", teacher_sha256="0" * 64, extra=extra, threads=1, command="-")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(dict(settings=saved, records=[])))
    today = {**saved, "defaults": applying_defaults(extra)}
    assert Config().neuron_tau != EARLIER_DEFAULTS["neuron_tau"]
    if extra:
        assert today["defaults"] == {} and load_results(path, today)["settings"] == saved
        assert defaults_text(saved) == ""
        with pytest.raises(SystemExit, match=r"other settings \(\['extra'\]\)"):
            load_results(path, {**today, "extra": [*extra, "--v-threshold", "0.5"]})
        return
    with pytest.raises(SystemExit, match=r"ran with \{'neuron_tau': 2.0\}.*would run with .*Add `-- --neuron-tau 2`"):
        load_results(path, today)
    # rows with no neuron, or whose recipe sets the leak, run as they did whatever the defaults
    assert load_results(path, today, [("ann", "ann", "default", 0), ("kd", "rate", "ratebp", 1)])["records"] == []
    with pytest.raises(SystemExit, match="Add `-- --neuron-tau 2`"):
        load_results(path, today, [("ann", "ann", "default", 0), ("kd", "rate", "default", 0)])
    for flags in (["--neuron-tau", "2"], ["--neuron-tau=2.0"]):
        same_grid = {**saved, "extra": flags, "defaults": applying_defaults(flags)}
        assert load_results(path, same_grid)["settings"] == saved
    assert defaults_text(saved) == (
        "distill.run's defaults when these rows ran: neuron_tau 2.0 (today's differ: a run's command in "
        "results.json needs `--neuron-tau 2` to run as it did, unless its --recipe sets them)."
    )
    assert defaults_text(today) == f"distill.run's defaults: neuron_tau {Config().neuron_tau}."


def test_an_interrupted_grid_says_why_and_where_its_finished_rows_are(tmp_path):
    results = dict(records=[dict(method="kd")])
    message = stopped_message("SIGTERM: stopping the runs at a checkpoint", results, tmp_path)
    assert message == (
        f"stopped (SIGTERM: stopping the runs at a checkpoint); 1 finished row(s) are in {tmp_path / 'results.json'}; "
        "the same command continues the grid"
    )


def test_the_report_names_the_runs_resumed_on_another_device():
    def record(seed, devices):
        return dict(method="kd", train="bptt", recipe="default", seed=seed, devices=devices)

    older = dict(method="kd", train="bptt", recipe="default", seed=2)  # a record from before devices were kept
    records = [record(0, ["cpu"]), record(1, ["cuda", "cpu"]), older]
    assert moved_runs(records) == " Runs resumed on another device: kd-bptt-default-s1 (cuda then cpu)."
    assert moved_runs(records[:1]) == ""


def test_the_architecture_goes_to_the_teacher_and_every_row_and_is_part_of_the_settings(tmp_path, capsys):
    args = parse_args(["--arch", "resnet20", "--methods", "kd,ann"])
    assert common_flags(args)[2:4] == ["--arch", "resnet20"]  # the teacher's job is built from these flags too
    for label, mode in (("kd", "rate"), ("ann", "ann")):
        argv = row_argv(args, tmp_path / "teacher.pt", label, mode, "default", 0)
        assert argv[argv.index("--arch") + 1] == "resnet20"
    # a grid saved before the option existed was a tiny_resnet grid: it continues under the default only
    path = tmp_path / "results.json"
    path.write_text(json.dumps(dict(settings=dict(dataset="digits"), records=[])))
    earlier = dict(defaults=EARLIER_DEFAULTS)  # (and ran with the defaults of its day)
    assert load_results(path, dict(dataset="digits", arch="tiny_resnet", **earlier))["records"] == []
    with pytest.raises(SystemExit, match=r"other settings \(\['arch'\]\)"):
        load_results(path, dict(dataset="digits", arch="resnet20", **earlier))
    with pytest.raises(SystemExit):
        parse_args(["--arch", "resnet21"])
    err = capsys.readouterr().err
    assert "--arch must be one of [" in err and "'resnet20'" in err and "got 'resnet21'" in err


def test_jobs_must_be_at_least_one(capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--jobs", "0"])
    assert "--jobs must be at least 1 (runs at a time), got 0" in capsys.readouterr().err


def test_summary_pairs_the_difference_to_direct_by_seed():
    def record(method, seed, accuracy):
        return dict(method=method, train="rate", recipe="default", seed=seed, accuracy=accuracy, firing_rate=0.1,
                    train_time_s=1.0)  # fmt: skip

    records = [record("direct", 0, 0.70), record("direct", 1, 0.80), record("kd", 0, 0.72), record("kd", 1, 0.83)]
    lines = {s["method"]: s for s in summary(records)}
    assert lines["kd"]["accuracy"] == pytest.approx(mean_sd([72.0, 83.0]))
    assert lines["kd"]["vs_direct"] == pytest.approx((2.5, mean_sd([2.0, 3.0])[1]))
    assert lines["direct"]["vs_direct"] is None and lines["kd"]["vs_kd"] is None
    assert lines["direct"]["vs_kd"] == pytest.approx((-2.5, mean_sd([2.0, 3.0])[1]))


def test_targets_are_judged_per_train_mode_and_recipe_with_their_shortfall():
    def record(method, seed, accuracy, recipe="default"):
        return dict(method=method, train="rate", recipe=recipe, seed=seed, accuracy=accuracy, firing_rate=0.1,
                    train_time_s=1.0, teacher_accuracy=0.90)  # fmt: skip

    records = [record("direct", 0, 0.70), record("direct", 1, 0.72), record("kd", 0, 0.76), record("kd", 1, 0.78)]
    records += [record("blockwise", 0, 0.79), record("blockwise", 1, 0.79), record("ckd", 0, 0.77)]
    records += [record("ckd", 1, 0.79), record("kd", 0, 0.10, "ratebp"), record("blockwise", 0, 0.99, "ratebp")]
    judged = targets(summary(records))
    assert {(t["train"], t["recipe"]) for t in judged} == {("rate", "default"), ("rate", "ratebp")}
    judged = {t["target"]: t for t in judged if t["recipe"] == "default"}
    assert {t["seeds"] for t in judged.values()} == {"0,1"}
    # blockwise - kd: +3 and +1 -> 2.0 +- 1.41: the 2 points are met, and more than the sd
    assert judged["blockwise >= kd + 2 points, and >= its sd"]["shortfall"] == pytest.approx(0.0, abs=1e-9)
    # blockwise - direct: +9 and +7 -> 8.0: met
    assert judged["blockwise >= direct + 6 points"]["shortfall"] == 0.0
    # 90 - 79 = 11 points below the teacher: 8 short of 3
    assert judged["blockwise within 3 points of the teacher"]["shortfall"] == pytest.approx(8.0)
    # ckd - kd: +1 and +1: met
    assert judged["ckd >= kd"]["shortfall"] == 0.0
    # a difference to a baseline counts the seeds both rows have
    judged = {t["target"]: t for t in targets(summary(records[1:])) if t["recipe"] == "default"}
    assert judged["blockwise >= direct + 6 points"]["seeds"] == "1"
    assert judged["blockwise >= kd + 2 points, and >= its sd"]["seeds"] == "0,1"
    # with the ANN row of the same recipe, the distance to the teacher says what the budget allows without spikes
    ann = [dict(record("direct", s, 0.85), method="ann", train="ann", firing_rate=None, teacher_accuracy=None)
           for s in (0, 1)]  # fmt: skip
    judged = {t["target"]: t for t in targets(summary(records + ann)) if t["recipe"] == "default"}
    assert judged["blockwise within 3 points of the teacher"]["measured"] == (
        "11.00 points below (the ANN trained on the students' budget: 5.00 below)"
    )
    records[4] = record("blockwise", 0, 0.77)  # blockwise - kd: +1 and +1 -> 1.0 +- 0: short by 1
    judged = {t["target"]: t for t in targets(summary(records)) if t["recipe"] == "default"}
    assert judged["blockwise >= kd + 2 points, and >= its sd"]["shortfall"] == pytest.approx(1.0)


def test_the_distance_to_the_teacher_is_measured_on_each_seeds_own_test_images():
    """With --test-subset, each seed tests on a subset of its own: the teacher is compared on the same images."""

    def record(method, seed, accuracy, teacher):
        return dict(method=method, train="rate", recipe="default", seed=seed, accuracy=accuracy, firing_rate=0.1,
                    train_time_s=1.0, teacher_accuracy=teacher)  # fmt: skip

    records = [record("blockwise", 0, 0.79, 0.90), record("blockwise", 1, 0.79, 0.92)]
    (line,) = summary(records)
    assert line["teacher_accuracy"] == pytest.approx(91.0)
    (judged,) = targets([line])
    assert judged["measured"] == "12.00 points below" and judged["shortfall"] == pytest.approx(9.0)
    each = "seed 0: 90.00 %, seed 1: 92.00 %"
    assert teacher_accuracy_text(records, {}) == f"91.00 % (mean over the seeds' test subsets; {each})"
    assert teacher_accuracy_text(records[:1], {}) == "90.00 %"


def test_a_grid_continues_only_with_the_teacher_it_began_with(tmp_path, capsys):
    """The teacher is known by its checksum, not its path: a teacher retrained to the same path starts another grid."""
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"the first teacher")
    first = dict(dataset="digits", arch="tiny_resnet", teacher=str(teacher), teacher_sha256=file_sha256(teacher))
    first["defaults"] = applying_defaults([])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(dict(settings=first, records=[])))
    assert load_results(path, first)["settings"] == first
    teacher.write_bytes(b"a retrained teacher")
    second = {**first, "teacher_sha256": file_sha256(teacher)}
    assert second["teacher_sha256"] != first["teacher_sha256"]
    with pytest.raises(SystemExit, match=r"other settings \(\['teacher_sha256'\]\)"):
        load_results(path, second)
    # a grid saved before the checksum was kept knew its teacher by path: it continues, and keeps the checksum
    path.write_text(json.dumps(dict(settings={k: v for k, v in first.items() if k != "teacher_sha256"}, records=[])))
    assert load_results(path, second)["settings"]["teacher_sha256"] == second["teacher_sha256"]
    # a --teacher that is not there is named before anything runs
    with pytest.raises(SystemExit, match="--teacher must be a teacher checkpoint file, got .*missing.pt.*no such file"):
        main(["--quick", "--teacher", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")])


def test_the_report_names_the_flags_every_row_adds_and_a_teacher_without_checksum(tmp_path):
    """A grid run with flags after ``--`` says so above its table; a grid saved before teacher checksums says that its
    teacher's path may now hold another teacher."""
    record = dict(method="ckd", train="rate", recipe="default", seed=0, accuracy=0.75, firing_rate=0.25,
                  train_time_s=1.0, teacher_accuracy=0.9)  # fmt: skip
    budget = dict(epochs=5, train_images=10000, batch_size=64)
    settings = dict(dataset="fashion_mnist", budget=budget, test_images=0, teacher="t.pt",
                    extra=["--noise-scale", "0.1"], threads=1, machine="a CPU", command="c")  # fmt: skip
    write_report(tmp_path / "report.md", dict(settings=settings, records=[record], teacher=dict(accuracy=0.9)))
    report = (tmp_path / "report.md").read_text()
    assert "Every row also runs with `--noise-scale 0.1`." in report
    assert "The teacher file's checksum was not recorded (the grid predates checksums)" in report
