"""The shell commands the documentation shows name modules that exist and flags they define.

Every fenced shell block (bash, sh, shell, console), every unmarked or indented block line
that starts with ``python``, and every inline ``python -m ...`` span of README.md,
docs/*.md and benchmarks/README.md is split into simple commands (``&&``, ``||``, ``;``,
``|``, line continuations, leading ``VAR=value`` assignments, wrappers such as ``srun``).
For each ``python -m MODULE ...`` (or ``python path/to/script.py ...``):

* the module must exist (``importlib.util.find_spec``);
* an absl entry point is imported in a fresh interpreter (its flags removed again before
  the next module there is imported, since entry points share flag names), and every ``--flag`` / ``--noflag`` must be defined and its value
  parse with the flag's own parser; flags marked required must be given;
* ``--config=path[:arg]`` of a config-file flag is loaded and every ``--config.field=...``
  applied by ml_collections' own flag parser, so an unknown field, a wrong type or a bad
  config argument is reported;
* an ``experiments.sweep`` command is expanded as the launcher does before starting
  anything (``rope_lab.sweep.runs.expand``), which checks its ``--set=config.<field>``;
* an argparse script's options are read from its ``add_argument`` calls.

Nothing is run: a documented command that no longer matches the code fails here.
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import functools
import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh", "shell-session"}
# Values that stand for something the reader fills in: not parsed, config not loaded.
_PLACEHOLDER = "PLACEHOLDER"
_UNRESOLVED = re.compile(r"[$`{}]|" + _PLACEHOLDER)
_PYTHON = re.compile(r"^(.*/)?python(\d+(\.\d+)?)?$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_OPERATORS = {"&&", "||", ";", "|", "&", ";;", "|&"}
# Modules whose flags are not theirs to check here (pytest's and pip's own options).
_FLAGS_NOT_CHECKED = {"pytest", "pip"}


def doc_files() -> list[str]:
  """The documentation whose commands are checked, relative to the repository root."""
  paths = ["README.md", *sorted(os.path.relpath(p, REPO_ROOT)
                                for p in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))]
  if os.path.exists(os.path.join(REPO_ROOT, "benchmarks", "README.md")):
    paths.append(os.path.join("benchmarks", "README.md"))
  return paths


@dataclasses.dataclass(frozen=True)
class Command:
  """One documented ``python -m MODULE args`` (or ``python SCRIPT args``)."""
  source: str          # "README.md:12"
  target: str          # a module name, or a script path relative to the repository
  args: tuple[str, ...]
  is_script: bool = False

  def text(self) -> str:
    return " ".join(["python", *([] if self.is_script else ["-m"]), self.target, *self.args])


# ------------------------------------------------------------------------------ parsing


def shell_lines(text: str) -> list[tuple[int, str]]:
  """(line number, command line) of every shell command the Markdown ``text`` shows.

  Fenced blocks marked as a shell: every line (``$ `` prompts stripped; in a ``console``
  block only prompted lines). Unmarked fenced blocks and indented blocks: the lines that
  start with ``python`` (or ``$ python``), so program output shown beside them is skipped.
  Inline code spans that start with ``python -m``. Continued lines are joined.
  """
  lines = text.splitlines()
  found: list[tuple[int, str]] = []
  i = 0
  previous_blank = True
  while i < len(lines):
    line = lines[i]
    fence = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", line)
    if fence:
      marker, language = fence.group(2), fence.group(3).lower()
      block, start = [], i + 1
      i += 1
      while i < len(lines) and not lines[i].strip().startswith(marker):
        block.append(lines[i])
        i += 1
      i += 1
      found.extend(_block_commands(block, start + 1, language or None))
      previous_blank = True
      continue
    if previous_blank and line.startswith("    ") and line.strip():
      block, start = [], i
      while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
        block.append(lines[i][4:])
        i += 1
      found.extend(_block_commands(block, start + 1, None))
      previous_blank = not lines[i - 1].strip()
      continue
    for span in re.findall(r"(?<!`)`(python3? -m [^`]+)`(?!`)", line):
      found.append((i + 1, span))
    previous_blank = not line.strip()
    i += 1
  return found


def _block_commands(block: list[str], first_line: int, language: str | None) -> list[tuple[int, str]]:
  if language is not None and language not in SHELL_LANGUAGES:
    return []
  commands = []
  i = 0
  while i < len(block):
    number, line = first_line + i, block[i]
    while line.rstrip().endswith("\\") and i + 1 < len(block):
      i += 1
      line = line.rstrip()[:-1] + " " + block[i].strip()
    i += 1
    stripped = line.strip()
    prompted = stripped.startswith("$ ")
    if prompted:
      stripped = stripped[2:].strip()
    if not stripped or stripped.startswith("#"):
      continue
    if language == "console" and not prompted:
      continue
    if language is None and not _PYTHON.match(stripped.split()[0]):
      continue
    commands.append((number, stripped))
  return commands


def split_commands(line: str) -> list[list[str]]:
  """A shell line -> its simple commands' words (operators split, comments dropped).

  ``<...>`` placeholders become one word, so ``--config=<that config>`` stays a flag.
  """
  line = re.sub(r"<[^<>|&;]*>", _PLACEHOLDER, line)
  lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
  lexer.whitespace_split = True
  commands, words = [], []
  for word in lexer:
    if word in _OPERATORS:
      if words:
        commands.append(words)
      words = []
    else:
      words.append(word)
  if words:
    commands.append(words)
  return commands


def python_command(words: list[str], source: str) -> Command | None:
  """The ``python -m MODULE`` / ``python SCRIPT.py`` command in ``words``, or None.

  Leading ``VAR=value`` assignments and wrappers (``srun ...``, ``taskset -c 0``) are
  skipped; ``python -c`` and commands that run no Python are not checked.
  """
  for index, word in enumerate(words):
    if _ASSIGNMENT.match(word) and index == 0:
      continue
    if not _PYTHON.match(word):
      continue
    rest = words[index + 1:]
    if len(rest) >= 2 and rest[0] == "-m":
      return Command(source, rest[1], tuple(_optional(a) for a in rest[2:]))
    if rest and rest[0].endswith(".py"):
      return Command(source, rest[0], tuple(_optional(a) for a in rest[1:]), is_script=True)
    return None
  return None


def _optional(word: str) -> str:
  """``[--unrolled]`` (an optional flag, in the docs' notation) -> ``--unrolled``."""
  if word.startswith("[-") and word.endswith("]"):
    return word[1:-1]
  return word


def commands_in_text(text: str, name: str) -> list[Command]:
  commands = []
  for number, line in shell_lines(text):
    source = f"{name}:{number}"
    try:
      simple = split_commands(line)
    except ValueError as e:  # an unclosed quote
      commands.append(Command(source, f"<unparsable shell line: {e}: {line}>", ()))
      continue
    for words in simple:
      command = python_command(words, source)
      if command is not None:
        commands.append(command)
  return commands


def documented_commands(paths: list[str] | None = None) -> list[Command]:
  commands = []
  for path in paths or doc_files():
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
      commands.extend(commands_in_text(f.read(), path))
  return commands


# ---------------------------------------------------------------- checks (own process)


def _flag_tokens(args: tuple[str, ...]):
  """(name, has '=', value or None, index) of every ``--flag`` in ``args``."""
  for index, arg in enumerate(args):
    if arg == "--":
      return
    if not arg.startswith("-") or arg == "-" or re.match(r"^-\d", arg):
      continue
    name, has_value, value = arg.lstrip("-").partition("=")
    yield name, bool(has_value), (value if has_value else None), index


def _runnable_source(module: str) -> tuple[str | None, str | None]:
  """(the name ``python -m module`` imports as its main, its source); a package's __main__."""
  spec = importlib.util.find_spec(module)
  if spec is None:
    return None, None
  if spec.submodule_search_locations is not None:
    module = module + ".__main__"
    spec = importlib.util.find_spec(module)
    if spec is None:
      return None, None
  if not spec.origin or not os.path.exists(spec.origin):
    return module, ""
  with open(spec.origin, encoding="utf-8") as f:
    return module, f.read()


def argparse_options(source: str) -> set[str]:
  """Every option string of the ``add_argument`` calls in a script's source."""
  options = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
      options.update(a.value for a in node.args
                     if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-"))
  return options | {"-h", "--help"}


def _check_argparse(command: Command, source: str) -> list[str]:
  options = argparse_options(source)
  problems = []
  for name, _, _, index in _flag_tokens(command.args):
    option = command.args[index].partition("=")[0]
    if option not in options:
      problems.append(f"{command.source}: {command.target} has no option {option} "
                      f"(its options: {', '.join(sorted(options))})")
  return problems


def _is_config_flag(flag) -> bool:
  """A ``config_flags.DEFINE_config_file`` flag (its ``--name.field`` overrides are fields)."""
  return any(cls.__name__ == "_ConfigFlag" for cls in type(flag).__mro__)


def _check_absl(command: Command, module_name: str) -> list[str]:
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS
  problems = []
  given: set[str] = set()
  config_args: dict[str, list[str]] = {}   # config flag -> its --config=... and overrides
  args = command.args
  skip = set()
  for name, has_value, value, index in _flag_tokens(args):
    if index in skip:
      continue
    where = f"{command.source}: python -m {command.target}"
    if "." in name:
      root = name.split(".", 1)[0]
      root = root[2:] if root.startswith("no") and root[2:] in fv and root not in fv else root
      if root in fv and _is_config_flag(fv[root]):
        tokens = [args[index]]
        if not has_value and index + 1 < len(args) and not args[index + 1].startswith("-"):
          tokens.append(args[index + 1])
          skip.add(index + 1)
        config_args.setdefault(root, []).extend(tokens)
        continue
      problems.append(f"{where} has no flag --{name.split('.', 1)[0]} (for --{name})")
      continue
    if name in fv:
      flag = fv[name]
      given.add(name)
      if not has_value and not flag.boolean and index + 1 < len(args):
        value = args[index + 1]
        skip.add(index + 1)
      if _is_config_flag(flag):
        config_args.setdefault(name, []).insert(0, f"--{name}={value}")
        continue
      if value is not None and not _UNRESOLVED.search(value):
        try:
          flag.parser.parse(value)
        except (ValueError, flags.Error) as e:
          problems.append(f"{where}: --{name}={value} is not a valid value: {e}")
    elif name.startswith("no") and name[2:] in fv and fv[name[2:]].boolean:
      given.add(name[2:])
      if has_value:
        problems.append(f"{where}: --{name} takes no value")
    else:
      problems.append(f"{where} has no flag --{name}")
  for name, flag in [(f.name, f) for f in fv.flags_by_module_dict().get(module_name, [])]:
    required = any(getattr(v, "message", "") == f"Flag --{name} must have a value other than None."
                   for v in flag.validators)
    if required and name not in given and flag.default is None:
      problems.append(f"{command.source}: python -m {command.target} needs --{name}")
  for root, tokens in config_args.items():
    problems.extend(_check_config(command, root, tokens))
  if command.target == "experiments.sweep" and not any("has no flag" in p for p in problems):
    problems.extend(_check_sweep(command))
  return problems


def _check_config(command: Command, root: str, tokens: list[str]) -> list[str]:
  """Loads ``--root=path[:arg]`` and applies its overrides with ml_collections' parser."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  where = f"{command.source}: python -m {command.target}"
  if not tokens[0].startswith(f"--{root}="):
    return [f"{where}: --{root}.<field> overrides need --{root}=<config file> before them"]
  if _UNRESOLVED.search(tokens[0]):
    return []
  argv = ["prog", *tokens]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(root, None, flag_values=fv, lock_config=True, sys_argv=argv)
  try:
    fv(argv)
  except Exception as e:  # pylint: disable=broad-except
    while isinstance(e.__cause__ or e.__context__, Exception) and not str(e):
      e = e.__cause__ or e.__context__
    detail = str(e).replace("\n", "; ")
    return [f"{where}: {' '.join(tokens)}: {type(e).__name__}: {detail}"]
  return []


def _check_sweep(command: Command) -> list[str]:
  """An experiments.sweep command expanded as its launcher does before starting anything."""
  from rope_lab.sweep import runs  # pylint: disable=g-import-not-at-top
  values = {}
  settings = []
  for name, _, value, _ in _flag_tokens(command.args):
    if name == "set":
      settings.append(value)
    else:
      values[name] = value
  spec, workdir = values.get("config"), values.get("workdir") or "/sweep"
  if spec is None or _UNRESOLVED.search(spec) or any(s is None for s in settings):
    return []
  try:
    runs.expand(spec, workdir, fixed=runs.parse_settings(settings))
  except Exception as e:  # pylint: disable=broad-except
    return [f"{command.source}: python -m experiments.sweep --config={spec}: {e}"]
  return []


def check_target(target: str, is_script: bool, commands: list[Command]) -> list[str]:
  """The problems of every command of one module or script (run in a process of its own)."""
  if is_script:
    path = os.path.join(REPO_ROOT, target)
    if not os.path.isfile(path):
      return [f"{c.source}: no file {target}" for c in commands]
    with open(path, encoding="utf-8") as f:
      source = f.read()
    relative = os.path.relpath(os.path.abspath(path), REPO_ROOT)
    module = relative[:-3].replace(os.sep, ".") if not relative.startswith("..") else None
  else:
    if target.startswith("<unparsable"):
      return [f"{c.source}: {target}" for c in commands]
    try:
      module, source = _runnable_source(target)
    except (ImportError, ValueError) as e:
      return [f"{c.source}: python -m {target}: {type(e).__name__}: {e}" for c in commands]
    if module is None:
      return [f"{c.source}: no module named {target}" for c in commands]
  if target.split(".")[0] in _FLAGS_NOT_CHECKED:
    return []
  if "add_argument(" in source:
    return [p for c in commands for p in _check_argparse(c, source)]
  if re.search(r"^\s*(from absl import|import absl)", source, re.M):
    if module is None:
      return []
    try:
      importlib.import_module(module)
    except Exception as e:  # pylint: disable=broad-except
      return [f"{c.source}: importing {module} failed: {type(e).__name__}: {e}" for c in commands]
    from absl import flags  # pylint: disable=g-import-not-at-top
    try:
      return [p for c in commands for p in _check_absl(c, module)]
    finally:  # the next module may define the same flag names
      for flag in list(flags.FLAGS.flags_by_module_dict().get(module, [])):
        if flag.name in flags.FLAGS:
          delattr(flags.FLAGS, flag.name)
  return [f"{c.source}: {c.target} takes no flags, the docs pass {a}"
          for c in commands for a in c.args if a.startswith("-")]


def _check_in_subprocess(group: list[tuple[str, bool, list[Command]]]) -> list[str]:
  payload = json.dumps([{"target": target, "is_script": is_script,
                         "commands": [dataclasses.asdict(c) for c in commands]}
                        for target, is_script, commands in group])
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
  result = subprocess.run([sys.executable, "-m", "tests.test_docs_commands"], input=payload,
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
  if result.returncode != 0:
    names = ", ".join(target for target, _, _ in group)
    return [f"checking {names} failed (exit {result.returncode}): {result.stderr[-2000:]}"]
  return json.loads(result.stdout.strip().splitlines()[-1])


def check_commands(commands: list[Command], processes: int | None = None) -> list[str]:
  """Every problem of ``commands``, checked in ``processes`` fresh interpreters (one per core).

  Each interpreter checks its share of the modules one after another, removing a module's
  flags before importing the next (entry points define the same names: --config, --workdir),
  so JAX, which several entry points import, is imported once per interpreter.
  """
  by_target: dict[tuple[str, bool], list[Command]] = {}
  for command in commands:
    by_target.setdefault((command.target, command.is_script), []).append(command)
  processes = processes or max(2, os.cpu_count() or 2)
  items = [(target, is_script, cs) for (target, is_script), cs in sorted(by_target.items())]
  groups = [items[i::processes] for i in range(processes) if items[i::processes]]
  with concurrent.futures.ThreadPoolExecutor(max_workers=len(groups) or 1) as pool:
    return [problem for problems in pool.map(_check_in_subprocess, groups) for problem in problems]


def _check_group(request: list[dict]) -> list[str]:
  problems = []
  for item in request:
    commands = [Command(**{**c, "args": tuple(c["args"])}) for c in item["commands"]]
    try:
      problems.extend(check_target(item["target"], item["is_script"], commands))
    except Exception as e:  # pylint: disable=broad-except
      problems.extend(f"{c.source}: checking {item['target']} raised {type(e).__name__}: {e}"
                      for c in commands)
  return problems


@functools.lru_cache(maxsize=None)
def _all_problems() -> tuple[tuple[Command, ...], tuple[str, ...]]:
  commands = documented_commands()
  return tuple(commands), tuple(check_commands(commands))


# -------------------------------------------------------------------------------- tests


def test_commands_are_found_in_every_form():
  text = "\n".join([
      "Run `python -m experiments.study --workdir=runs/s --quick` first.",
      "```bash",
      "python -m pip install -e '.[test]' && python -m experiments.fetch_assets && python -m pytest -q",
      "XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.train \\",
      "    --config=configs/tiny_cpu.py --workdir=runs/t   # a comment",
      "srun --nodes=2 python -m experiments.train --config=configs/gpu_125m.py --workdir=/w",
      "W=/tmp/x; python -m experiments.evaluate --workdir=$W --encoding='{\"name\": \"pi\"}' | tee log",
      "git status",
      "```",
      "```",
      "$ python -m benchmarks.longrope_search --workdir=/tmp/t",
      "device: cpu x 1",
      "```",
      "```python",
      "python -m not.a.shell.block",
      "```",
      "",
      "    python -m benchmarks.real_model_forward --lengths=8192 [--unrolled]",
      "",
      "```console",
      "$ python benchmarks/gpu_check.py --dry",
      "python -m output.line",
      "```",
  ])
  found = [(c.source, c.text()) for c in commands_in_text(text, "x.md")]
  assert found == [
      ("x.md:1", "python -m experiments.study --workdir=runs/s --quick"),
      ("x.md:3", "python -m pip install -e .[test]"),
      ("x.md:3", "python -m experiments.fetch_assets"),
      ("x.md:3", "python -m pytest -q"),
      ("x.md:4", "python -m experiments.train --config=configs/tiny_cpu.py --workdir=runs/t"),
      ("x.md:6", "python -m experiments.train --config=configs/gpu_125m.py --workdir=/w"),
      ("x.md:7", 'python -m experiments.evaluate --workdir=$W --encoding={"name": "pi"}'),
      ("x.md:11", "python -m benchmarks.longrope_search --workdir=/tmp/t"),
      ("x.md:18", "python -m benchmarks.real_model_forward --lengths=8192 --unrolled"),
      ("x.md:21", "python benchmarks/gpu_check.py --dry"),
  ]


def test_wrong_commands_are_reported():
  text = "\n".join([
      "```bash",
      "python -m experiments.train --config=configs/tiny_cpu.py --workdir=w --made_up_flag=1",
      "python -m experiments.train --config=configs/tiny_cpu.py:finetune --config.no_such_field=2 --workdir=w",
      "python -m experiments.train --config=configs/tiny_cpu.py:no_such_arg=1 --workdir=w",
      "python -m experiments.train --config=configs/tiny_cpu.py",
      "python -m experiments.sweep --config=configs/tiny_cpu.py:smoke,sweep=seeds --workdir=w --parallel=two",
      "python -m experiments.sweep --config=configs/tiny_cpu.py:smoke,sweep=seeds --workdir=w --set=config.bogus=1",
      "python -m experiments.study --workdir=w --noquick --noreport_only",
      "python -m experiments.no_such_module --workdir=w",
      "python -m benchmarks.long_eval --made_up_option=3",
      "```",
  ])
  problems = check_commands(commands_in_text(text, "x.md"))
  def at(line):
    return [p for p in problems if p.startswith(f"x.md:{line}:")]
  assert any("has no flag --made_up_flag" in p for p in at(2)), problems
  assert any("no_such_field" in p for p in at(3)), problems
  assert any("no_such_arg" in p for p in at(4)), problems
  assert any("needs --workdir" in p for p in at(5)), problems
  assert any("--parallel=two is not a valid value" in p for p in at(6)), problems
  assert any("bogus" in p for p in at(7)), problems
  assert not at(8), problems
  assert any("no module named experiments.no_such_module" in p for p in at(9)), problems
  assert any("has no option --made_up_option" in p for p in at(10)), problems
  assert len(problems) == 8, problems


@pytest.mark.parametrize("path", doc_files())
def test_documented_commands_exist_and_pass_defined_flags(path):
  commands, problems = _all_problems()
  assert len(commands) > 20
  mine = [p for p in problems if p.startswith(f"{path}:") or p.startswith("checking ")]
  assert not mine, "\n".join(mine)


def test_the_readme_documents_the_main_commands():
  commands = {c.text() for c in documented_commands(["README.md"])}
  assert "python -m experiments.study --workdir=runs/study_quick --quick" in commands
  assert "python -m pytest -q" in commands


def test_the_readme_test_command_is_what_ci_runs():
  """.ci/run runs the README's test command verbatim (pip's own verbosity aside)."""
  def test_command(text):
    lines = [line.strip() for line in text.splitlines()
             if "python -m pytest" in line and "experiments.fetch_assets" in line]
    assert len(lines) == 1, lines
    return re.sub(r" (--quiet|-q)(?= -e)", "", lines[0])
  with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
    readme = test_command(f.read())
  with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
    ci = test_command(f.read())
  assert readme == ci
  assert readme == ("python -m pip install -e '.[test]' && python -m experiments.fetch_assets "
                    "&& python -m pytest -q")


def heading_anchors(text: str) -> set[str]:
  """GitHub's anchors of a Markdown file's headings (fenced blocks skipped)."""
  anchors, seen = set(), {}
  in_fence = False
  for line in text.splitlines():
    if re.match(r"^\s*(```|~~~)", line):
      in_fence = not in_fence
      continue
    heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if in_fence or not heading:
      continue
    anchor = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
    count = seen.get(anchor, 0)
    seen[anchor] = count + 1
    anchors.add(anchor if count == 0 else f"{anchor}-{count}")
  return anchors


def test_heading_anchors_follow_github():
  text = "# A\n## Sizing it (`x/y.py`)\n```\n# not a heading\n```\n## A\n### Forward + loss: a vs b (CPU)\n"
  assert heading_anchors(text) == {"a", "sizing-it-xypy", "a-1", "forward--loss-a-vs-b-cpu"}


@pytest.mark.parametrize("path", doc_files())
def test_links_into_the_docs_name_existing_headings(path):
  """A relative link with an anchor into an existing page names one of its headings."""
  with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
    text = f.read()
  broken = []
  for target, anchor in re.findall(r"\]\(([^()\s#]*)#([^()\s]+)\)", text):
    if target.startswith(("http://", "https://")):
      continue
    page = os.path.normpath(os.path.join(REPO_ROOT, os.path.dirname(path), target)) if target \
        else os.path.join(REPO_ROOT, path)
    if not os.path.isfile(page):
      continue  # a page still being written; its anchors are checked once it exists
    with open(page, encoding="utf-8") as f:
      if anchor not in heading_anchors(f.read()):
        broken.append(f"{target or path}#{anchor}")
  assert not broken, f"{path}: links to headings that do not exist: {broken}"


if __name__ == "__main__":
  print(json.dumps(_check_group(json.loads(sys.stdin.read()))))
