"""Prompt sets: the registry of named sets and the one place where a prompt spec becomes prompts.

A spec (``RunConfig.prompts`` / ``eval_prompts``) is one of

- a list whose items are prompt texts or mappings ``{prompt: ..., tag: ..., include: [...],
  exclude: [...]}`` (GenEval metadata inline);
- a registered set: ``toy:train``, ``toy:heldout``, ``toy:all`` (the toy world registers them),
  ``ocr:train`` / ``ocr:test`` and ``geneval:train`` / ``geneval:test`` (generated in code,
  ``grpo_guard.prompts``);
- ``file:PATH``: a UTF-8 text file, one prompt a line;
- ``geneval:file:PATH``: GenEval's ``evaluation_metadata.jsonl`` (one JSON row a line);
- ``hf:DATASET[:SPLIT][#COLUMN]``: a Hugging Face dataset from the local cache or a local
  directory, through the ``datasets`` library (imported only when such a spec is resolved).

Prompts are :class:`Prompt` objects: ``str`` subclasses carrying per-prompt metadata, so they
flow unchanged through the trainer, rollouts, evaluation and rewards (``reward(images, prompts)``
reads ``getattr(p, "meta", None)``). Imports no torch, numpy or datasets (the app imports
``grpo_guard.config``, which imports this).
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpo_guard.prompts.prompt import Prompt

GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_KEYS: tuple[str, ...] = ("tag", "include", "exclude")
_OBJECT_KEYS = ("class", "count", "color", "position")

# Modules that register built-in sets when imported; loaded on the first registry lookup so that
# importing this module stays cheap (and the toy world can import it without a cycle).
_BUILTIN_MODULES = ("grpo_guard.toyworld.prompts", "grpo_guard.prompts.ocr", "grpo_guard.prompts.geneval")

# Spec forms with an argument; listed with the registered sets.
SPEC_FORMS: dict[str, str] = {
    "file:PATH": "a UTF-8 text file, one prompt a line (# starts a comment)",
    "geneval:file:PATH": "GenEval's evaluation_metadata.jsonl: one JSON row {prompt, tag, include, exclude} a line",
    "hf:DATASET[:SPLIT][#COLUMN]": "a Hugging Face dataset (hub id from the local cache, or a local directory)",
}


@dataclass(frozen=True)
class PromptSet:
    """A registered set: ``build()`` returns its prompts (builders cache their result)."""

    name: str
    description: str
    build: Callable[[], Sequence[Prompt]]
    geneval: bool = False  # every prompt carries GenEval metadata (tag, include)


_REGISTRY: dict[str, PromptSet] = {}
_loaded = False
_load_lock = threading.Lock()


def register(name: str, description: str, build: Callable[[], Sequence[Prompt]], *, geneval: bool = False) -> None:
    """Add a named set (``family:split``); registering a name again replaces it."""
    if ":" not in name or name.startswith(("file:", "hf:", "geneval:file:")):
        raise ValueError(f"a prompt set name looks like 'family:split' and is not a spec form, got {name!r}")
    _REGISTRY[name] = PromptSet(name, description, build, geneval)


def registry() -> dict[str, PromptSet]:
    """The registered sets by name (built-in ones included)."""
    global _loaded
    if not _loaded:
        with _load_lock:  # the app validates configs from several threads at once
            if not _loaded:
                for module in _BUILTIN_MODULES:
                    importlib.import_module(module)
                _loaded = True
    return dict(_REGISTRY)


def known_sets() -> str:
    """The registered names and the spec forms, for error messages."""
    return ", ".join([*sorted(registry()), *SPEC_FORMS])


# ---- reading ----------------------------------------------------------------------------------
def read_prompt_file(path: str, *, field: str = "prompts", confined: bool = False,
                     config_dir: str | None = None) -> str:
    """The text of the prompt file at ``path``. Every spec that reads a local file goes
    through here. With ``confined`` (or a ``config_dir``) the file must lie inside the allowed
    roots (:func:`grpo_guard.config.paths.confine`: the config's directory, GG_PROMPTS_DIR, the built-in
    sets; never /proc, a FIFO or a symlink out of its root), as for every queued run; without
    (``grpo-guard train`` on one's own files) any readable file, ``~`` expanded. Size, line and
    UTF-8 limits hold either way. Raises ValueError with one sentence."""
    from grpo_guard.config import paths  # lazily: config imports this package lazily too

    try:
        real = (paths.confine(field, path, config_dir=config_dir) if confined or config_dir
                else os.path.expanduser(path.strip()))
        return paths.read_text(field, real)
    except ValueError as e:  # a ConfigError: the caller names the field
        raise ValueError(getattr(e, "errors", [("", str(e))])[0][1]) from None


def _text_file(path: str, **where: Any) -> list[Prompt]:
    lines = read_prompt_file(path, **where).splitlines()
    prompts = [Prompt(ln.strip()) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {os.path.expanduser(path)} has no prompts (one prompt a line)")
    return prompts


def _geneval_file(path: str, **where: Any) -> list[Prompt]:
    out: list[Prompt] = []
    for n, line in enumerate(read_prompt_file(path, **where).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {n} of {path} is not a JSON object ({e.msg})") from None
        why = item_problem(row, geneval=True)
        if why:
            raise ValueError(f"line {n} of {path}: {why}")
        out.append(prompt_from_item(row))
    if not out:
        raise ValueError(f"{path} has no GenEval rows (one JSON object with prompt, tag and include a line)")
    return out


# ---- inline items and metadata ----------------------------------------------------------------
def _object_problem(obj: Any, where: str, *, position: bool) -> str | None:
    if not isinstance(obj, Mapping):
        return f"{where} must be a mapping like {{class: dog, count: 1}}, got {type(obj).__name__}"
    extra = [k for k in obj if k not in _OBJECT_KEYS]
    if extra:
        return f"{where} has unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(_OBJECT_KEYS)}"
    if not isinstance(obj.get("class"), str) or not obj["class"].strip():
        return f"{where} needs a 'class' name such as 'dog'"
    count = obj.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return f"{where}.count must be an integer >= 0, got {count!r}"
    if "color" in obj and not isinstance(obj["color"], str):
        return f"{where}.color must be a colour name, got {obj['color']!r}"
    if "position" in obj:
        pos = obj["position"]
        if not position:
            return f"{where} may not have a position (only include objects may)"
        if (not isinstance(pos, Sequence) or isinstance(pos, str) or len(pos) != 2 or not isinstance(pos[0], str)
                or not isinstance(pos[1], int) or isinstance(pos[1], bool)):
            return f"{where}.position must be [relation, index] like ['left of', 0], got {pos!r}"
    return None


def item_problem(item: Any, *, geneval: bool = False, blank_ok: bool = False) -> str | None:
    """Why a prompt-list item is not a prompt text or a ``{prompt, tag, include, exclude}``
    mapping, else None. With ``geneval`` a mapping must carry ``tag`` and ``include``; with
    ``blank_ok`` a blank text passes (config validation: it is refused when resolved)."""
    if isinstance(item, str):
        if not item.strip() and not blank_ok:
            return "is an empty prompt"
        return "is a plain prompt without GenEval metadata" if geneval else None
    if not isinstance(item, Mapping):
        return f"must be a prompt text or a mapping with 'prompt' and metadata, got {type(item).__name__}"
    extra = [k for k in item if k not in ("prompt", *GENEVAL_KEYS)]
    if extra:
        return f"has unknown key(s) {', '.join(map(repr, extra))}; allowed: prompt, {', '.join(GENEVAL_KEYS)}"
    if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
        return "needs a non-empty 'prompt' text"
    if "tag" in item and item["tag"] not in GENEVAL_TAGS:
        return f"has tag {item['tag']!r}; GenEval tags are {', '.join(GENEVAL_TAGS)}"
    if geneval and ("tag" not in item or "include" not in item):
        return "needs GenEval metadata: 'tag' and 'include'"
    for key in ("include", "exclude"):
        if key not in item:
            continue
        objs = item[key]
        if not isinstance(objs, list) or (key == "include" and not objs):
            return f"'{key}' must be a{' non-empty' if key == 'include' else ''} list of objects like [{{class: dog, count: 1}}]"
        for j, obj in enumerate(objs):
            why = _object_problem(obj, f"{key}[{j}]", position=key == "include")
            if why:
                return why
        if key == "include":
            for j, obj in enumerate(objs):
                if "position" in obj and not 0 <= obj["position"][1] < len(objs):
                    return f"include[{j}].position refers to object {obj['position'][1]}, which is not in include"
    return None


def prompt_from_item(item: str | Mapping[str, Any]) -> Prompt:
    """A list item (already checked by :func:`item_problem`) as a Prompt."""
    if isinstance(item, str):
        return Prompt(item.strip())
    meta = {k: json.loads(json.dumps(item[k])) for k in GENEVAL_KEYS if k in item}  # a deep, JSON-clean copy
    return Prompt(item["prompt"].strip(), meta)


def prompt_to_item(prompt: str) -> str | dict[str, Any]:
    """The inverse of :func:`prompt_from_item`: a plain text, or ``{prompt, **meta}``."""
    meta = getattr(prompt, "meta", None)
    return {"prompt": str(prompt), **meta} if meta else str(prompt)


def has_geneval_meta(prompt: str) -> bool:
    meta = getattr(prompt, "meta", None) or {}
    return "tag" in meta and "include" in meta


# ---- specs ------------------------------------------------------------------------------------
def parse_hf_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``hf:DATASET[:SPLIT][#COLUMN]`` -> (dataset, split, column). DATASET is a hub id
    (``org/name``) or a local directory; a ':' inside a directory path is not supported."""
    body = spec[len("hf:"):].strip()
    column = None
    if "#" in body:
        body, column = body.rsplit("#", 1)
        column = column.strip() or None
    name, split = body, None
    if ":" in body:
        name, split = body.rsplit(":", 1)
        split = split.strip() or None
    name = name.strip()
    if not name:
        raise ValueError(f"{spec!r} names no dataset; use hf:DATASET[:SPLIT][#COLUMN], e.g. hf:yuvalkirstain/pickapic_v2:test#caption")
    return name, split, column


def spec_problem(spec: Any, *, strict: bool = True) -> str | None:
    """Why ``spec`` is not a prompt spec, judged without reading any file or dataset (cheap
    enough for every config validation), else None. ``strict=False`` (config validation) lets a
    blank list item pass, as configs always have; resolving refuses it."""
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith(("file:", "geneval:file:")):
            path = s.split("file:", 1)[1].strip()
            return None if path else f"{spec!r} names no file; use {s.split('file:')[0]}file:PATH"
        if s.startswith("hf:"):
            try:
                parse_hf_spec(s)
            except ValueError as e:
                return str(e)
            return None
        if s in registry():
            return None
        return f"unknown prompt set {spec!r}; known: {known_sets()}, or a list of prompts"
    if isinstance(spec, Sequence):
        if not spec:
            return "the prompt list is empty"
        for i, item in enumerate(spec):
            why = item_problem(item, blank_ok=not strict)
            if why:
                return f"item {i} {why}"
        return None
    return f"must be a prompt set name or a list of prompts, got {type(spec).__name__}"


def spec_has_geneval_meta(spec: Any) -> bool:
    """Whether every prompt of ``spec`` carries GenEval metadata, judged without resolving it:
    the generated GenEval sets, ``geneval:file:`` and lists whose items all carry tag and include."""
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith("geneval:file:"):
            return True
        entry = registry().get(s)
        return bool(entry and entry.geneval)
    return bool(spec) and all(isinstance(i, Mapping) and "tag" in i and "include" in i for i in spec)


def _is_geneval(name: str) -> bool:
    return name == "geneval" or name.startswith("geneval_")


def _short(spec: Any) -> str:
    return repr(spec) if isinstance(spec, str) else f"this list of {len(spec)} prompts"


def run_prompt_errors(prompts: Any, eval_prompts: Any, *, rewards: Sequence[str],
                      gold: Sequence[str]) -> list[tuple[str, str]]:
    """(field, sentence) pairs for a run's prompt specs, judged without reading a file or a
    dataset: each spec is well-formed and names a known set, and where a GenEval reward scores
    prompts (proxies: training and eval prompts; gold evaluators: eval prompts) they carry
    GenEval metadata (:func:`spec_has_geneval_meta`)."""
    specs = {"prompts": prompts, "eval_prompts": eval_prompts}
    errors = [(name, why) for name, spec in specs.items() if (why := spec_problem(spec, strict=False))]
    if errors:
        return errors
    proxy = [k for k in rewards if _is_geneval(k)]
    scorers = {"prompts": proxy, "eval_prompts": list(dict.fromkeys(proxy + [g for g in gold if _is_geneval(g)]))}
    for name, names in scorers.items():
        if names and not spec_has_geneval_meta(specs[name]):
            errors.append((name, f"{', '.join(names)} scores prompts by their GenEval metadata, but "
                                 f"{_short(specs[name])} carries none; use geneval:train / geneval:test, "
                                 "geneval:file:PATH or list items with tag and include"))
    return errors


def resolve_prompts(spec: str | Sequence[str | Mapping[str, Any]], *, field: str = "prompts",
                    confined: bool = False, config_dir: str | None = None) -> list[Prompt]:
    """Turn a prompt spec (see the module doc) into a list of prompts. Raises ``ValueError``
    with a one-sentence reason for an unknown set, an unreadable, refused or empty file, a
    malformed item or row, a dataset missing from the local cache, or an empty list.
    ``field``, ``confined`` and ``config_dir``: how a file is read (:func:`read_prompt_file`)."""
    where = {"field": field, "confined": confined, "config_dir": config_dir}
    why = spec_problem(spec)
    if why:
        raise ValueError(why)
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith("geneval:file:"):
            return _geneval_file(s[len("geneval:file:"):].strip(), **where)
        if s.startswith("file:"):
            return _text_file(s[len("file:"):].strip(), **where)
        if s.startswith("hf:"):
            from grpo_guard.prompts.hf import hf_prompts

            return list(hf_prompts(*parse_hf_spec(s)))
        return list(registry()[s].build())
    return [prompt_from_item(item) for item in spec]


def write_prompts(prompts: Iterable[str], path: str, fmt: str = "text") -> int:
    """Write ``prompts`` to ``path`` as text (one a line) or ``jsonl`` (``{prompt, **meta}`` a
    line, which ``geneval:file:`` reads back); returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for p in prompts:
            if fmt == "jsonl":
                fh.write(json.dumps({"prompt": str(p), **(getattr(p, "meta", None) or {})}) + "\n")
            else:
                fh.write(str(p).replace("\n", " ") + "\n")
            n += 1
    return n
