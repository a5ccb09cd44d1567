"""`python -m rope_lab.pe`: every registered method with its parameters, defaults and allowed values."""

from __future__ import annotations

import dataclasses
import sys

from rope_lab.pe import REGISTRY


def describe_field(field: dataclasses.Field) -> str:
  default = "(required)" if field.metadata.get("required") else repr(field.default)
  line = f"    {field.name:36s} {str(field.type):22s} default {default}"
  choices = field.metadata.get("choices")
  if choices:
    line += f"; one of {', '.join(repr(c) for c in choices)}"
  return line


def describe_methods() -> str:
  lines = []
  for name in sorted(REGISTRY):
    cls = REGISTRY[name]
    summary = (cls.__doc__ or "").strip().splitlines()[0]
    lines.append(f"{name}  [{cls.changes}]  {cls.paper}")
    lines.append(f"    {summary}")
    lines.extend(describe_field(field) for field in dataclasses.fields(cls))
  return "\n".join(lines)


if __name__ == "__main__":
  sys.stdout.write(describe_methods() + "\n")
