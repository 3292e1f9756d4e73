"""What a person reads: one-line warnings, third-party noise only with -v, progress bars that suit a log file."""

from __future__ import annotations

import io
import logging
import time
import warnings

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from boothkit import log, progress
from boothkit.cli.main import app


def _mixed_folder(tmp_path):
    good = Image.new("RGB", (80, 70), (200, 30, 30))
    ImageDraw.Draw(good).rectangle([10, 10, 40, 40], fill=(0, 0, 0))
    good.save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    return tmp_path


def test_a_boothkit_warning_is_one_line_naming_the_file_and_the_reason(tmp_path, capsys):
    from boothkit.inputs import load_subject_images

    folder = _mixed_folder(tmp_path)
    with log.cli_output(verbose=False):
        load_subject_images(folder)
    err = capsys.readouterr().err
    assert err == f"warning: skipped {folder / 'empty.png'}: the file is empty (0 bytes)\n"
    with log.cli_output(verbose=True):  # -v: the same line, plus where it was raised
        load_subject_images(folder)
    err = capsys.readouterr().err
    assert err.startswith(f"warning: skipped {folder / 'empty.png'}: the file is empty (0 bytes) (UserWarning, ")
    assert err.count("\n") == 1
    with pytest.warns(UserWarning, match="empty.png: the file is empty"):  # library users' warnings work as before
        load_subject_images(folder)


def test_third_party_noise_is_hidden_unless_verbose(capsys, caplog):
    import transformers.utils.logging as tlog

    def noise():
        warnings.warn_explicit("a notice from deep inside", UserWarning, "modeling_x.py", 7,
                               module="transformers.models.x")
        tlog.get_logger("transformers.test").warning("transformers talking")
        logging.getLogger("accelerate.test").warning("accelerate talking")

    # transformers' own handler writes to the stderr of the moment it was made (another test's capture, in a full
    # run): what reaches it is read from a handler of this test's, on transformers' library logger
    heard: list[str] = []
    listener = logging.Handler()
    listener.emit = lambda record: heard.append(record.getMessage())
    library = tlog.get_logger("transformers")
    library.addHandler(listener)
    try:
        level = tlog.get_verbosity()
        with log.cli_output(verbose=False):
            assert tlog.get_verbosity() == logging.ERROR and not log.verbose()
            noise()
        assert capsys.readouterr().err == ""
        assert "accelerate talking" not in caplog.text and heard == []
        assert tlog.get_verbosity() == level  # restored after the command
        with log.cli_output(verbose=True):
            assert log.verbose()
            noise()
        loud = capsys.readouterr().err
        assert "warning: a notice from deep inside (UserWarning, modeling_x.py:7)" in loud
        assert heard == ["transformers talking"] and "accelerate talking" in caplog.text
        assert not log.verbose()
    finally:
        library.removeHandler(listener)


def test_the_root_verbose_option_and_settings_restored_after_a_command():
    shown = warnings.showwarning
    filters = list(warnings.filters)
    r = CliRunner().invoke(app, ["-v", "encoders", "--json"])
    assert r.exit_code == 0, r.output
    assert warnings.showwarning is shown and warnings.filters == filters and not log.verbose()


def _run(bar_iterable, sleep: float):
    for _ in bar_iterable:
        time.sleep(sleep)


def test_a_bar_in_a_pipe_is_a_few_plain_lines(monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY", 0.1)
    out = io.StringIO()  # not a terminal: a log file or a pipe
    t0 = time.monotonic()
    b = progress.bar(total=40, desc="training", unit="step", file=out)
    for i in range(40):
        time.sleep(0.01)
        b.update(1)
        b.set_postfix(loss=i)  # tqdm would redraw on every call
    b.close()
    elapsed = time.monotonic() - t0
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 2 <= len(lines) <= elapsed / 0.1 + 2, lines
    assert all(line.startswith("training: ") for line in lines)
    assert "40/40" in lines[-1] and "100%" in lines[-1]
    out = io.StringIO()
    _run(progress.bar(range(3), desc="short", file=out), 0)  # a loop quicker than LINE_EVERY: one final line
    assert out.getvalue().count("\n") == 1 and "3/3" in out.getvalue()


def test_a_bar_on_a_terminal_is_tqdms_and_off_means_nothing():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    _run(progress.bar(range(5), desc="gen", file=tty), 0)
    assert "\r" in tty.getvalue() and "5/5" in tty.getvalue()
    quiet = io.StringIO()
    with progress.bars(False):
        _run(progress.bar(range(5), desc="gen", file=quiet), 0)
    _run(progress.bar(range(5), desc="gen", file=quiet, disable=True), 0)
    assert quiet.getvalue() == ""
