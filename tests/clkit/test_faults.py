"""Fault injection: bad inputs are one clear line with exit code 2, and no finished work is lost.

Every case of the table runs ``clkit fit`` in-process: an unexpected exception (a traceback) fails the test by
itself; an expected one must exit with code 2, print one ``clkit: error:`` line and name the bad value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clkit.cli import main

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1"]
EWC = ["--model", "strategies.EWC"]
GPM = ["--model", "strategies.GPM"]
PERMUTED = ["--data", "scenarios.PermutedDigits", "--data.init_args.n_experiences", "3"]

CASES: list[tuple[str, list[str], str]] = [
    # unknown or wrong classes
    ("unknown strategy", ["--model", "strategies.Nope"], "Nope"),
    ("short-name typo", ["--model", "GPMM"], "did you mean GPM?"),
    ("short-name case", ["--model", "gpm"], "did you mean GPM?"),
    ("unknown scenario", ["--data", "SplitDigit"], "SplitDigits"),
    ("a class that is no strategy", ["--model", "torch.nn.Linear"], "torch.nn.Linear is not a strategy"),
    ("a class that is no scenario", ["--data", "torch.nn.Linear"], "torch.nn.Linear is not a scenario"),
    ("unknown backbone", ["--model.init_args.backbone", "clkit.nets.Nope"], "valid backbones include: clkit.nets.MLP"),
    ("an unsupported setting", ["--model", "tests.clkit.helpers.TaskILOnly", *PERMUTED], "domain-il"),
    # unknown arguments name the class that was mistyped, inherited arguments included
    ("strategy argument typo", ["--model.init_args.nope", "1"], "valid arguments of Naive: backbone, optimizer"),
    ("inherited argument of a strategy", [*EWC, "--model.init_args.bogus", "1"], "ewc_lambda, mode, decay, fisher_"
     "samples, backbone, optimizer, lr_scheduler, seed"),
    ("scenario argument typo", ["--data.init_args.val_fractio", "0.1"], "val_fraction, batch_size"),
    ("nested class typo", [*GPM, "--model.init_args.backbone", "clkit.nets.MLP",
                           "--model.init_args.backbone.init_args.hiden", "3"], "valid arguments of MLP: hidden"),
    ("trainer key typo", ["--trainer.bogus_key", "7"], "max_epochs"),
    ("no abbreviations", ["--trainer.max_epoch", "1"], "unrecognized arguments: --trainer.max_epoch"),
    ("section typo", ["--trainr.max_epochs", "1"], "valid sections: model, data, trainer"),
    # bad values: the value is quoted, negative numbers intact
    ("a word for an int", ["--trainer.max_epochs", "abc"], "trainer.max_epochs: expected int, got 'abc'"),
    ("a word for the seed", ["--seed_everything", "abc"], "seed_everything: expected bool or int, got 'abc'"),
    ("a negative seed", ["--seed_everything", "-1"], "seed_everything=-1 is not in bounds"),
    ("an unknown optimizer", ["--optimizer", "adamw"], "adamw"),
    ("negative momentum", ["--optimizer.momentum", "-1"], "momentum"),
    ("negative weight decay", ["--optimizer.weight_decay", "-1"], "weight_decay"),
    ("negative lr", ["--optimizer.lr", "-0.1"], "-0.1"),
    ("NaN lr", ["--optimizer.lr", ".nan"], "lr=nan"),
    ("a scheduler without its argument", ["--lr_scheduler", "torch.optim.lr_scheduler.StepLR"], "step_size"),
    ("NaN in a strategy float", [*EWC, "--model.init_args.ewc_lambda", ".nan"], "ewc_lambda=nan is not a finite"),
    ("inf in a strategy float", [*EWC, "--model.init_args.decay", ".inf"], "decay=inf is not a finite"),
    ("negative EWC lambda", [*EWC, "--model.init_args.ewc_lambda", "-1"], "ewc_lambda"),
    ("a mode typo", [*EWC, "--model.init_args.mode", "bogus"], "bogus"),
    ("a threshold above 1", [*GPM, *PERMUTED, "--model.init_args.threshold", "1.5"], "threshold"),
    ("NaN in a list of floats", [*GPM, *PERMUTED, "--model.init_args.threshold", "[0.9, .nan, 0.9]"],
     "threshold[1]=nan"),
    ("zero density", ["--model", "strategies.SupSup", "--model.init_args.density", "0"], "density"),
    ("NaN in a scenario float", ["--data.init_args.val_fraction", ".nan"], "val_fraction=nan"),
    ("a validation fraction above 1", ["--data.init_args.val_fraction", "1.5"], "val_fraction"),
    ("an empty test set", ["--data.init_args.test_fraction", "0.001"], "test_fraction=0.001"),
    ("an impossible split", ["--data.init_args.n_experiences", "3"], "n_experiences=3 does not divide"),
    ("a zero batch size", ["--data.init_args.batch_size", "0"], "batch_size=0"),
    ("a stream larger than memory", [*PERMUTED[:2], "--data.init_args.n_experiences", "100000"], "GiB"),
    ("a task order that is no permutation", ["--data.init_args.task_order", "[0, 1, 1, 2, 3]"], "permutation"),
    ("a missing data set", ["--data", "scenarios.SplitMNIST"], "dataset_root"),
    ("a backbone too small for the input", [*GPM, *PERMUTED, "--model.init_args.backbone",
                                            "strategies.projection.AlexNetGPM"], "AlexNetGPM needs"),
    # trainer settings that would train nothing, forever, or fail late
    ("zero epochs", ["--trainer.max_epochs", "0"], "trainer.max_epochs=0 trains nothing"),
    ("infinite epochs", ["--trainer.max_epochs", "-1"], "forever"),
    ("no training batches", ["--trainer.limit_train_batches", "0"], "limit_train_batches=0"),
    ("negative clipping", ["--trainer.gradient_clip_val", "-1"], "gradient_clip_val=-1"),
    ("no GPU", ["--trainer.accelerator", "gpu"], "valid on this machine: cpu"),
    ("zero devices", ["--trainer.devices", "0"], "Valid: an int >= 1"),
    ("an unknown precision", ["--trainer.precision", "bogus"], "trainer.precision=bogus is not a precision"),
    ("a precision an operation lacks", ["--model", "ICaRL", "--data", "ToySplit", "--trainer.precision", "bf16-true"],
     "ICaRL does not run in trainer.precision=bf16-true"),
    ("zero test passes", ["--test_passes", "0"], "test_passes must be >= 1, got 0"),
    ("an unwritable run directory", ["--run_dir", "/sys/clkit-run"], "cannot write the run directory /sys/clkit-run"),
    # a NaN loss stops the run with advice that works
    ("a diverging lr", [*PERMUTED, "--optimizer.lr", "1e9"], "--optimizer.lr 1e+08"),
]


def _fails(args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    argv = ["fit", "--run_dir", str(tmp_path / "run"), *QUIET, *args]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, err
    assert err and err[-1].startswith("clkit: error:") and "Traceback" not in "\n".join(err), err
    assert needle in err[-1], err[-1]
    return err[-1]


def test_the_table_holds_at_least_forty_cases() -> None:
    assert len(CASES) >= 40 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "args", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it(name: str, args: list[str], needle: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _fails(args, needle, tmp_path, capsys)


CONFIG_FILES = [
    ("malformed YAML", "model: {class_path: strategies.Naive\n", "invalid YAML at line 2"),
    ("a list instead of a mapping", "- a\n- b\n", "holds a list"),
    ("a tab", "trainer:\n\tmax_epochs: 1\n", "a tab"),
    ("an empty file", "", "is empty"),
    ("an unknown section", "trainr:\n  max_epochs: 1\n", "unknown section(s) 'trainr'"),
    ("NaN through YAML", "model:\n  class_path: strategies.EWC\n  init_args: {ewc_lambda: .nan}\n"
     "data: {class_path: scenarios.SplitDigits}\n", "ewc_lambda=nan"),
]


@pytest.mark.parametrize(("name", "text", "needle"), CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_bad_config_files_are_named(name: str, text: str, needle: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = _fails(["--config", str(path)], needle, tmp_path, capsys)
    assert str(path) in line or "ewc_lambda" in line


def test_run_directory_misuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["fit", "--run_dir", str(tmp_path / "done"), *QUIET, *PERMUTED])
    (tmp_path / "file").write_text("")
    before = (tmp_path / "done" / "results.json").read_bytes()
    for args, needle in ((["--resume", str(tmp_path / "done")], "has finished"),
                         (["--resume", str(tmp_path / "missing")], "no such run directory"),
                         (["--run_dir", str(tmp_path / "file")], "is a file"),
                         (["--run_dir", str(tmp_path / "done")], "already holds a run")):
        with pytest.raises(SystemExit) as exc:
            main(["fit", *args, *QUIET, *PERMUTED])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exc.value.code == 2 and needle in err, err
    assert (tmp_path / "done" / "results.json").read_bytes() == before  # nothing finished was touched


def test_a_nan_loss_keeps_finished_experiences_and_a_resume_may_lower_the_lr(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "nan"
    args = ["--model", "tests.clkit.helpers.NaNAt", "--model.init_args.above_lr", "0.01", "--optimizer.lr", "0.05",
            *PERMUTED, *QUIET]
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--run_dir", str(run), *args])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "loss is nan at experience 1" in err and f"--resume {run} --optimizer.lr" in err
    partial = json.loads((run / "results.partial.json").read_text())
    assert partial["completed_experiences"] == 1 and len(partial["accuracy_matrix_rows"]) == 1
    assert (run / "checkpoints" / "exp0.pt").is_file()
    # the advised resume: a changed optimizer is allowed (and recorded), the model itself is not
    with pytest.raises(SystemExit):
        main(["fit", "--resume", str(run), *args, "--model.init_args.experience", "2"])
    assert "model.init_args.experience: 1 -> 2" in capsys.readouterr().err
    main(["fit", "--resume", str(run), *args, "--optimizer.lr", "0.005"])
    results = json.loads((run / "results.json").read_text())
    assert results["resumes"][0]["changed"]["model.init_args.optimizer.init_args.lr"] == {"from": 0.05, "to": 0.005}


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    main(["fit", "--run_dir", str(full), *QUIET, *PERMUTED])
    crash = ["--trainer.callbacks+=tests.clkit.helpers.CrashAt", "--trainer.callbacks.experience", "2"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["fit", "--run_dir", str(cut), *QUIET, *PERMUTED, *crash])
    (cut / "checkpoints" / "exp1.pt").write_bytes(b"")  # a zero-byte latest checkpoint (a full disk)
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint .*exp1.pt"):
        main(["fit", "--resume", str(cut), *QUIET, *PERMUTED])
    assert json.loads((cut / "results.json").read_text())["accuracy_matrix"] == \
        json.loads((full / "results.json").read_text())["accuracy_matrix"]


def test_a_report_skips_and_lists_an_unreadable_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):
        main(["fit", "--run_dir", str(tmp_path / name), *QUIET, *PERMUTED])
    (tmp_path / "b" / "results.json").write_text('{"strategy": "Naive", "metr')
    capsys.readouterr()
    main(["report", str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "Naive" in out and "unreadable" in out and str(tmp_path / "b") in out


def _clkit(args: list[str], **kw: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "clkit", "fit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)  # type: ignore[call-overload]


@pytest.mark.slow
def test_a_second_process_on_a_run_directory_is_refused_and_ctrl_c_exits_130(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _clkit(["--run_dir", str(run), *PERMUTED, "--trainer.max_epochs", "1000", "--trainer.enable_progress_bar",
                    "false", "--trainer.limit_train_batches", "2"])  # ~0.3 s per epoch: minutes per experience
    deadline = time.time() + 120
    while not (run / "checkpoints" / "exp0.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = _clkit(["--resume", str(run), *PERMUTED, "--trainer.max_epochs", "1000", "--trainer.limit_train_batches",
                     "2"])
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and f"{run} is in use by another clkit process (pid {first.pid}" in err, err
    assert first.poll() is None  # still in its second experience
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert first.returncode == 130 and "interrupted" in last and f"--resume {run}" in last, err
    assert "Traceback" not in err
    resumed = _clkit(["--resume", str(run), *PERMUTED, "--trainer.max_epochs", "2", "--trainer.enable_progress_bar",
                      "false", "--trainer.limit_train_batches", "2"])  # the lock died with its process: it continues
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    matrix = json.loads((run / "results.json").read_text())["accuracy_matrix"]
    assert torch.isfinite(torch.tensor(matrix)).all()


def test_a_ctrl_c_that_a_library_wrapped_in_another_exception_is_still_an_interruption() -> None:
    """Ctrl-C inside inspect.getfullargspec (Lightning's hook-signature check) came out as 'TypeError: unsupported
    callable' and exit code 1; the interruption is found in the exception chain."""
    from clkit.cli.fit import _interruption
    from clkit.errors import Interrupted

    try:
        try:
            raise Interrupted("interrupted (Ctrl-C)")
        except Exception as ex:
            raise TypeError("unsupported callable") from ex
    except TypeError as wrapped:
        found = _interruption(wrapped)
    assert isinstance(found, Interrupted)
    assert _interruption(TypeError("unrelated")) is None
