"""``hf:DATASET[:SPLIT][#COLUMN]``: prompts from a Hugging Face dataset through ``datasets``.

DATASET is a local directory (data files such as parquet, CSV or JSON lines, or a
``save_to_disk`` folder) or a hub id read from the local cache only: no run downloads a
dataset, so ``HF_HUB_OFFLINE=1`` works and a missing one is one sentence naming the command
that fetches it. ``datasets`` is imported here, only when such a spec is resolved.
"""

from __future__ import annotations

import os
from functools import lru_cache

from grpo_guard.prompts.prompt import Prompt

TEXT_COLUMNS = ("prompt", "caption", "text")


def download_hint(name: str) -> str:
    return (f"`hf download --repo-type dataset {name}` or "
            f"`python -c \"import datasets; datasets.load_dataset('{name}')\"`")


def _hub_snapshot(name: str) -> str | None:
    """The local snapshot directory of dataset repo ``name`` in the hub cache, else None."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, repo_type="dataset", local_files_only=True)
    except Exception:  # not cached, or not a valid repo id
        return None


def _load_dir(datasets, path: str):
    if os.path.exists(os.path.join(path, "dataset_info.json")) or os.path.exists(os.path.join(path, "dataset_dict.json")):
        return datasets.load_from_disk(path)  # a save_to_disk folder
    return datasets.load_dataset(path)


def _load(name: str, split: str | None):  # -> datasets.Dataset
    import datasets

    datasets.disable_progress_bars()
    local = os.path.expanduser(name)
    if os.path.isdir(local):
        ds = _load_dir(datasets, local)
    elif name.startswith(("/", "./", "../", "~")):
        raise ValueError(f"no dataset directory at {local}")
    elif (snapshot := _hub_snapshot(name)) is not None:
        # the hub cache's files, read like a local directory: works with HF_HUB_OFFLINE=1
        ds = _load_dir(datasets, snapshot)
    else:
        try:  # datasets' own cache of an earlier load_dataset(name)
            ds = datasets.load_dataset(name)
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"dataset {name!r} is not in the local Hugging Face cache ({reason}); fetch it "
                             f"once with {download_hint(name)}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in ds else next(iter(ds))
        if split not in ds:
            raise ValueError(f"dataset {name!r} has no split {split!r}; it has {', '.join(ds)}")
        return ds[split]
    if split is not None and split != "train":
        raise ValueError(f"dataset {name!r} has a single split; drop ':{split}' from the spec")
    return ds


@lru_cache(maxsize=8)
def hf_prompts(name: str, split: str | None, column: str | None) -> tuple[Prompt, ...]:
    """The distinct non-empty texts of ``column`` (default: the first of prompt, caption, text)."""
    try:
        ds = _load(name, split)
    except ValueError:
        raise  # already one sentence
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load dataset {name!r}: {reason}") from None
    cols = list(ds.column_names)
    if column is None:
        column = next((c for c in TEXT_COLUMNS if c in cols), None)
        if column is None:
            raise ValueError(f"dataset {name!r} has no prompt, caption or text column; name one with "
                             f"#COLUMN (columns: {', '.join(cols)})")
    elif column not in cols:
        raise ValueError(f"dataset {name!r} has no column {column!r}; columns: {', '.join(cols)}")
    texts = dict.fromkeys(t.strip() for t in ds[column] if isinstance(t, str) and t.strip())
    if not texts:
        raise ValueError(f"column {column!r} of dataset {name!r} holds no text")
    return tuple(Prompt(t) for t in texts)
