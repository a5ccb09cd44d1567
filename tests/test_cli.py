"""The entry points' shared conventions: absolute paths, one exit code per way of stopping."""

import os

import pytest

from rope_lab.running import cli
from rope_lab.errors import ConfigError, DataError


def test_paths_become_absolute_once_and_remote_ones_are_kept(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.absolute_path("runs/tiny") == os.path.join(str(tmp_path), "runs", "tiny")
  assert cli.absolute_path(str(tmp_path / "x")) == str(tmp_path / "x")
  assert cli.absolute_path("~/d") == os.path.join(os.path.expanduser("~"), "d")
  assert cli.absolute_path("hf:models/llama") == "hf:" + os.path.join(str(tmp_path), "models", "llama")
  assert cli.absolute_path("gs://bucket/run") == "gs://bucket/run"
  assert cli.absolute_path(None) is None


@pytest.mark.parametrize("raised, code, text", [
    (ConfigError("config.steps must be >= 1"), 2, "config error: config.steps must be >= 1"),
    (DataError("tokens.bin is truncated"), 2, "error: tokens.bin is truncated"),
    (KeyboardInterrupt(), 130, "interrupted; run it again"),
    (cli.Terminated(), 143, "terminated (SIGTERM); run it again"),
])
def test_every_way_of_stopping_has_one_exit_code_and_one_line(raised, code, text, capsys, monkeypatch):
  monkeypatch.setattr(cli, "quiet_libraries", lambda: None)  # leave this process's logging alone
  def main(argv):
    del argv
    raise raised
  with pytest.raises(SystemExit) as exited:
    cli.guarded(main, resume_hint="run it again")(["prog"])
  assert exited.value.code == code
  err = capsys.readouterr().err
  assert err.strip() == text and "Traceback" not in err


def test_other_exceptions_are_not_hidden(monkeypatch):
  monkeypatch.setattr(cli, "quiet_libraries", lambda: None)
  def main(argv):
    raise RuntimeError("a bug")
  with pytest.raises(RuntimeError, match="a bug"):
    cli.guarded(main)(["prog"])
