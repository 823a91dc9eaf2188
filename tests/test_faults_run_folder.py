"""Faults around the run folder: a user's own files, a finished run, a teacher inside the folder, a saved config
pointing back at its run, two runs into one folder, stale locks and temporary files of a killed write."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import distill.trainer
from distill.config import parse_config
from distill.run import main
from distill.run_folder import LOCK, MARKER, RESULT_FILES, RunFolderError, RunLock

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--train-subset", "64", "--test-subset", "32", "--batch-size", "32", "--threads", "1", "--progress", "off",
         "--max-steps", "1", "--teacher-epochs", "1", "--epochs", "1"]  # fmt: skip


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) by relative path, with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished quick run, copied by the tests that change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    main([*QUICK, "--out", str(out)])
    return out


def copy_run(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


# ----------------------------------------------------------------------------------------------- user's files

file_names = st.sampled_from([*RESULT_FILES, "notes.txt", ".bashrc", "data.npz", "teacher.pt.bak"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(file_names, st.binary(max_size=64), min_size=1, max_size=5), overwrite=st.booleans())
def test_a_users_own_files_survive_byte_for_byte(tmp_path_factory, files, overwrite):
    """--out pointing at a folder SpikeKD did not create (a home folder): refused before anything is touched, even
    with --overwrite, even when the user's files carry the names of a run's results."""
    out = tmp_path_factory.mktemp("home")
    for name, data in files.items():
        (out / name).write_bytes(data)
    before = snapshot(out)
    args = [*QUICK, "--out", str(out)] + (["--overwrite"] if overwrite else [])
    with pytest.raises(SystemExit, match="holds files SpikeKD did not write .*Pass another --out"):
        main(args)
    assert snapshot(out) == before


def test_an_out_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{}")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        main([*QUICK, "--out", str(path)])
    assert path.read_text() == "{}"


def test_a_new_or_empty_folder_is_claimed_with_a_marker(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new" / "run", tmp_path / "empty"):
        main([*QUICK, "--out", str(out)])
        assert (out / MARKER).is_file() and (out / "results.json").is_file()
        assert not (out / LOCK).exists()  # released at the end


# ----------------------------------------------------------------------------------------------- a finished run


def test_a_fresh_run_over_a_finished_one_needs_overwrite(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    with pytest.raises(SystemExit, match="holds a run .*--resume .*--overwrite"):
        main([*QUICK, "--out", str(out)])
    assert snapshot(out) == before
    main([*QUICK, "--out", str(out), "--overwrite", "--seed", "1"])
    assert snapshot(out)["student.pt"] != before["student.pt"]


@pytest.mark.parametrize(
    "bad",
    [
        ["--arch", "vgg11"],  # the architecture's preflight: 8x8 digits vanish in vgg11
        ["--teacher", "/nonexistent/teacher.pt"],  # the teacher
        ["--dataset", "fashion_mnist", "--data-dir", "/nonexistent"],  # the data
        ["--lr", "-1"],  # the options
    ],
)
def test_nothing_is_deleted_before_every_check_passed(finished_run, tmp_path, bad):
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    with pytest.raises(SystemExit):
        main([*QUICK, "--out", str(out), "--overwrite", *bad])
    assert snapshot(out) == before


def test_the_teacher_loaded_from_the_run_folder_is_kept(finished_run, tmp_path):
    """--teacher DIR/teacher.pt --out DIR: refused without --overwrite, and with it the teacher stays as it was."""
    out = copy_run(finished_run, tmp_path / "run")
    teacher = out / "teacher.pt"
    before = teacher.read_bytes()
    with pytest.raises(SystemExit, match="holds a run"):
        main([*QUICK, "--teacher", str(teacher), "--out", str(out)])
    results = main([*QUICK, "--teacher", str(teacher), "--out", str(out), "--overwrite"])
    assert teacher.read_bytes() == before and results["teacher_time_s"] == 0.0


# ----------------------------------------------------------------------------------------------- saved configs


def test_a_saved_config_never_targets_its_run(tmp_path, monkeypatch):
    """`--config RUN/config.toml` (as report.md suggests) with the default --out: refused, RUN untouched."""
    monkeypatch.chdir(tmp_path)
    main(QUICK)
    run = tmp_path / "runs" / "digits-blockwise-rate"
    saved = (run / "config.toml").read_text()
    assert "out =" not in saved and "resume =" not in saved and "overwrite =" not in saved
    before = snapshot(run)
    with pytest.raises(SystemExit, match="holds a run"):
        main(["--config", str(run / "config.toml"), "--epochs", "2"])
    assert snapshot(run) == before
    results = main(["--config", str(run / "config.toml"), "--out", str(tmp_path / "more")])
    assert results["run_dir"] == str(tmp_path / "more") and snapshot(run) == before


def test_a_config_in_a_run_folder_cannot_set_the_run_location(tmp_path):
    """A config saved by an older SpikeKD carried `out` and `resume`: inside a run folder they are not taken."""
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("")
    (run / "config.toml").write_text(f'out = "{run}"\nresume = true\noverwrite = true\nepochs = 3\n')
    cfg = parse_config(["--config", str(run / "config.toml")])
    assert (cfg.out, cfg.resume, cfg.overwrite, cfg.epochs) == ("", False, False, 3)
    elsewhere = tmp_path / "mine.toml"  # a hand-written config outside any run folder is taken as written
    elsewhere.write_text(f'out = "{run}"\n')
    assert parse_config(["--config", str(elsewhere)]).out == str(run)


# ----------------------------------------------------------------------------------------------- the lock


def test_a_live_lock_keeps_a_second_run_out(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text("")
    with RunLock(out):
        before = snapshot(out)
        with pytest.raises(SystemExit, match="in use by another run"):
            main([*QUICK, "--out", str(out)])
        with pytest.raises(RunFolderError, match="in use by another run"):
            RunLock(out).__enter__()
        assert snapshot(out) == before
    assert not (out / LOCK).exists()


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text("")
    (out / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "1"}))
    main([*QUICK, "--out", str(out)])
    assert (out / "results.json").is_file() and not (out / LOCK).exists()


def test_a_reused_pid_does_not_hold_the_lock(tmp_path):
    """The lock's pid now names another process (this one) that started at another time: stale."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "-1"}))
    with RunLock(out):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()


def test_results_that_appear_before_the_lock_is_taken_are_kept(tmp_path, monkeypatch):
    """Another run ends in the folder between this run's first check and its lock: checked again under the lock."""
    out = tmp_path / "run"
    real_claim = distill.trainer.claim

    def claim_after_another_run_finished(run_dir):
        real_claim(run_dir)
        (run_dir / "results.json").write_text('{"from": "the other run"}')

    monkeypatch.setattr(distill.trainer, "claim", claim_after_another_run_finished)
    with pytest.raises(SystemExit, match="holds a run"):
        main([*QUICK, "--out", str(out)])
    assert (out / "results.json").read_text() == '{"from": "the other run"}' and not (out / LOCK).exists()


@pytest.mark.slow
def test_two_runs_into_one_folder(tmp_path):
    """The second run, started (with --overwrite) while the first writes, fails at once; the first finishes alone."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "distill.run", "--threads", "1", "--progress", "off", "--log-every", "1",
            "--teacher-epochs", "20", "--epochs", "1", "--out", str(out)]  # fmt: skip
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / LOCK).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*args, "--overwrite"], env=env, capture_output=True, text=True, timeout=300)
    still_running = first.poll() is None
    assert first.wait(timeout=600) == 0 and still_running
    assert second.returncode != 0 and "in use by another run" in second.stderr, second.stderr[-2000:]
    teacher_steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
                     if '"teacher"' in line and '"loss"' in line]  # fmt: skip
    assert teacher_steps and teacher_steps == sorted(set(teacher_steps))  # one writer, each step once


# ----------------------------------------------------------------------------------------------- temporary files


def test_temporary_files_of_a_killed_write_are_removed_on_the_next_start(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    strays = [out / ".checkpoint.pt.k1ll3d.tmp", out / ".student.pt.x.tmp"]
    for stray in strays:
        stray.write_bytes(b"half a checkpoint")
    main([*QUICK, "--out", str(out), "--overwrite"])
    assert not any(stray.exists() for stray in strays)
