"""`python -m rope_lab.pe`: every registered method with its parameters and defaults."""

from __future__ import annotations

import dataclasses
import sys

from rope_lab.pe import REGISTRY


def describe_methods() -> str:
  lines = []
  for name in sorted(REGISTRY):
    cls = REGISTRY[name]
    summary = (cls.__doc__ or "").strip().splitlines()[0]
    lines.append(f"{name}  [{cls.changes}]  {cls.paper}")
    lines.append(f"    {summary}")
    for field in dataclasses.fields(cls):
      default = "(required)" if field.metadata.get("required") else repr(field.default)
      lines.append(f"    {field.name:36s} {str(field.type):22s} default {default}")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.stdout.write(describe_methods() + "\n")
