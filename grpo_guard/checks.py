"""Argument checks shared by ``sde.py`` and ``policy.py``: clear ValueErrors that name the argument,
with tensor checks batched into one device sync."""

from __future__ import annotations

import torch

SigmaLike = float | torch.Tensor


def _is_real(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__


def _per_sample(value: SigmaLike, batch: int, dtype: torch.dtype, device, name: str, fn: str) -> torch.Tensor:
    """A float, a one-element tensor, a (B,) tensor or a (B, 1, ..., 1) tensor → (B,)."""
    if _is_real(value):
        return torch.full((batch,), float(value), dtype=dtype, device=device)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{fn}: `{name}` must be a float or a tensor of shape (B,), got {_describe(value)}")
    if value.numel() == 1:
        return value.reshape(1).to(dtype=dtype, device=device).expand(batch)
    if value.ndim >= 1 and value.shape[0] == batch and value.numel() == batch:
        return value.reshape(batch).to(dtype=dtype, device=device)
    raise ValueError(f"{fn}: `{name}` must be a float or have shape ({batch},) (one value per sample), "
                     f"got shape {tuple(value.shape)}")


Check = tuple  # (message, ok: bool | 0-d bool tensor) or (message, ok, [(message, tensor), ...] to name a culprit)


def _raise_failed(checks: list[Check], values: list[torch.Tensor] | None = None) -> list[float]:
    """Raise ValueError for the first failed check, else return ``values`` as floats.

    Tensor checks and ``values`` (0-d tensors) are converted together: one device sync in all. A
    check that carries culprits ``[(message, tensor), ...]`` raises the first culprit's message whose
    tensor holds NaN/inf, and its own message if none does.
    """
    for msg, ok, *_ in checks:
        if ok is False:
            raise ValueError(msg)
    tensor_checks = [c for c in checks if isinstance(c[1], torch.Tensor)]
    values = values or []
    if not tensor_checks and not values:
        return []
    dev = (tensor_checks[0][1] if tensor_checks else values[0]).device
    flat = torch.stack([x.reshape(()).to(device=dev, dtype=torch.float64)
                        for x in [c[1] for c in tensor_checks] + values]).tolist()
    for check, flag in zip(tensor_checks, flat, strict=False):
        if not flag:
            for culprit_msg, tensor in (check[2] if len(check) > 2 else []):
                if not bool(torch.isfinite(tensor).all()):
                    raise ValueError(culprit_msg)
            raise ValueError(check[0])
    return flat[len(tensor_checks):]


def _check_like(mean: torch.Tensor, other: torch.Tensor, name: str, fn: str) -> None:
    if not isinstance(mean, torch.Tensor) or mean.ndim < 2:
        raise ValueError(f"{fn}: `mean` must be a tensor (B, ...), got {_describe(mean)}")
    if not isinstance(other, torch.Tensor) or other.shape != mean.shape:
        raise ValueError(f"{fn}: `{name}` must have the shape of `mean` {tuple(mean.shape)}, got {_describe(other)}")
