"""Registries: the one place where a named extension (an attack, an explanation method, an
explanation objective, a data set) is declared, with its parameters.

A registered function declares its parameters once, in its own signature: every
keyword-only argument that the caller does not supply itself (``fixed``, e.g. ``eps`` and
``key`` for attacks) is a parameter of the entry, with the signature's default, or
required when it has none. A config entry such as ``{'name': 'pgd', 'steps': 10}`` is
checked against them (:meth:`Entry.resolve`): unknown names and missing required ones
stop with the list of valid ones, and the resolved parameters (defaults filled in) are
what labels, resume keys and table rows are made from. A misspelt name stops with the
registered choices and the closest match.

    ATTACKS = Registry("attack", fixed=("eps", "key"))

    @ATTACKS.register("pgd", label=("{steps}", "{loss}?"))
    def pgd(fns, x, y, *, eps, key=None, steps: int, loss: str = "ce"): ...

``label`` templates name the parts of an entry's short label (``pgd-10``, ``pgd-10-dlr``):
``"{p}"`` is always shown, ``"...{p}...?"`` only when ``p`` differs from its default, a bool
shown as its template text when true; or ``label`` is a function ``params -> [parts]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import string
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union


class Required:
  """Marks a parameter without a default."""

  def __repr__(self) -> str:
    return "<required>"


REQUIRED = Required()


class UnknownName(ValueError):
  """A name that is not registered (the message lists the registered ones)."""


def _choices_hint(name: str, choices: Sequence[str]) -> str:
  close = difflib.get_close_matches(str(name), list(choices), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _declared_params(fn: Callable, fixed: Sequence[str]) -> dict:
  params = {}
  for p in inspect.signature(fn).parameters.values():
    if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in fixed:
      continue
    params[p.name] = REQUIRED if p.default is inspect.Parameter.empty else p.default
  return params


@dataclasses.dataclass(frozen=True)
class Entry:
  """One registered function: its name, parameters (name -> default or REQUIRED), the
  arguments it takes from the caller (``fixed``), a label rule and free metadata."""
  kind: str
  name: str
  fn: Callable
  params: Mapping[str, Any]
  accepts: frozenset                       # the fixed arguments this function takes
  label_rule: Union[Sequence[str], Callable[[dict], Sequence[str]], None] = ()
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __getattr__(self, name: str):
    """Metadata as attributes (``DATASETS["busi"].has_masks``)."""
    meta = self.__dict__.get("meta", {})
    if name in meta:
      return meta[name]
    raise AttributeError(f"{self.kind} {self.__dict__.get('name')!r} has no {name!r}")

  def resolve(self, given: Mapping[str, Any], *, ignore: Sequence[str] = ()) -> dict:
    """``given`` checked against the parameters, defaults filled in. Keys in ``ignore``
    (settings of the caller that travel in the same config entry, e.g. a sweep's own
    ``eps`` grid) are dropped."""
    given = {k: v for k, v in dict(given).items() if k != "name" and k not in ignore}
    unknown = sorted(set(given) - set(self.params))
    renamed = self.meta.get("renamed") or {}
    for old in unknown:
      if old in renamed:
        raise ValueError(f"{self.kind} {self.name!r}: the parameter {old!r} is now called "
                         f"{renamed[old]!r}.")
    if unknown:
      raise ValueError(
          f"{self.kind} {self.name!r} has no parameter {unknown[0]!r}"
          f"{_choices_hint(unknown[0], list(self.params))}; its parameters: "
          f"{', '.join(self._describe())}.")
    missing = [k for k, v in self.params.items() if v is REQUIRED and k not in given]
    if missing:
      raise ValueError(f"{self.kind} {self.name!r} needs {missing[0]!r} (e.g. "
                       f"{{'name': {self.name!r}, {missing[0]!r}: ...}}); its parameters: "
                       f"{', '.join(self._describe())}.")
    return {k: given.get(k, v) for k, v in self.params.items()}

  def _describe(self) -> list[str]:
    return [k if v is REQUIRED else f"{k}={v!r}" for k, v in self.params.items()]

  def __call__(self, *args, params: Optional[Mapping] = None, **fixed):
    """Calls the function with ``params`` (resolved) and those of ``fixed`` it accepts."""
    kw = {k: v for k, v in fixed.items() if k in self.accepts}
    return self.fn(*args, **kw, **self.resolve(params or {}))

  def label(self, params: Mapping[str, Any]) -> str:
    """Short name for tables and records, from the resolved ``params``."""
    params = self.resolve(params)
    if callable(self.label_rule):
      parts = list(self.label_rule(params))
    else:
      parts = [self.name]
      for template in self.label_rule or ():
        part = _render(template, params, self.params)
        if part is not None:
          parts.append(part)
    return "-".join(parts)

  def key(self, params: Mapping[str, Any]) -> str:
    """Everything that determines this entry's output, as canonical JSON (resume keys)."""
    return json.dumps({"name": self.name, **self.resolve(params)}, sort_keys=True, default=repr)


def _render(template: str, params: Mapping, defaults: Mapping) -> Optional[str]:
  optional = template.endswith("?")
  template = template.rstrip("?")
  fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
  if optional and all(params[f] == defaults[f] for f in fields):
    return None
  if len(fields) == 1 and isinstance(params[fields[0]], bool):
    return template.replace("{" + fields[0] + "}", "") if params[fields[0]] else None
  return template.format(**params)


class Registry:
  """Name -> :class:`Entry` for one kind of extension."""

  def __init__(self, kind: str, *, fixed: Sequence[str] = ()):
    self.kind = kind
    self.fixed = tuple(fixed)
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, *, label=(), replace: bool = False, **meta):
    """Decorator: registers ``fn`` under ``name`` (its keyword-only arguments but
    ``fixed`` are its parameters). ``replace=True`` allows re-registering a name."""
    def decorate(fn):
      if name in self._entries and not replace:
        raise ValueError(f"{self.kind} {name!r} is already registered (by "
                         f"{self._entries[name].fn.__module__}); pass replace=True.")
      sig = inspect.signature(fn).parameters
      accepts = frozenset(k for k in self.fixed if k in sig)
      self._entries[name] = Entry(self.kind, name, fn, _declared_params(fn, self.fixed),
                                  accepts, label, dict(meta))
      return fn
    return decorate

  def __getitem__(self, name: str) -> Entry:
    try:
      return self._entries[name]
    except (KeyError, TypeError):
      raise UnknownName(f"Unknown {self.kind} {name!r}{_choices_hint(name, self.names())}; "
                        f"registered: {', '.join(self.names())}.") from None

  def get(self, name: str, default=None):
    return self._entries.get(name, default)

  def __contains__(self, name) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def names(self, **meta) -> tuple:
    """Registered names, optionally only those whose metadata matches ``meta``."""
    return tuple(n for n, e in self._entries.items()
                 if all(e.meta.get(k) == v for k, v in meta.items()))

  def unregister(self, name: str) -> None:
    """Removes an entry (tests and notebooks that registered a toy one)."""
    self._entries.pop(name, None)
