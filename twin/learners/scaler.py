"""A bank's parameter sets (its filters' centers and covariances) written under one channel
scaler, and the twin's model re-expressed since under another: the map between the two.

A kind whose parameters act on standardized channels (`arx`, `mlp`) rewrites them when the
twin's scaler moves (`TwinModel._reexpress`), an affine map theta -> M theta + b; the filters
that a bank keeps beside the model's center must go through the same map. It is found by
probing: the images of parameter sets (zero, unit vectors) under the move."""

from __future__ import annotations

import numpy as np
import torch

from twin.models.base import DTYPE, TwinModel, flat_parameters, load_flat

Scaler = tuple[np.ndarray, ...]  # y_mean, y_std, u_mean, u_std


def normalization(model: TwinModel) -> Scaler:
    """The model's channel scaler: y_mean, y_std, u_mean, u_std (copies)."""
    return tuple(
        getattr(model, name).detach().numpy().copy()
        for name in ("y_mean", "y_std", "u_mean", "u_std")
    )


def standardizes(model: TwinModel) -> bool:
    """Whether the model's parameters are re-expressed when its scaler moves."""
    return type(model)._reexpress is not TwinModel._reexpress


def reexpress_images(model: TwinModel, probes: np.ndarray, old: Scaler, new: Scaler) -> np.ndarray:
    """(S, P) parameter sets fitted under the scaler `old` -> (S, P) the model's re-expression
    of them under `new` (the model's current scaler): in one call where the kind offers one
    (`reexpressed`), else one set at a time through the model, which is left as it was."""
    batched = getattr(model, "reexpressed", None)
    if batched is not None:
        scaler = tuple(torch.from_numpy(a) for a in old)
        return batched(torch.from_numpy(probes), scaler).numpy()
    theta, out = flat_parameters(model).to(DTYPE), []
    with torch.no_grad():
        for row in probes:
            load_flat(model, torch.from_numpy(row))
            model.set_normalization(*old, keep_function=False)
            model.set_normalization(*new, keep_function=True)
            out.append(flat_parameters(model).to(DTYPE).numpy())
        load_flat(model, theta)
    return np.stack(out)


def affine_map(model: TwinModel, old: Scaler, new: Scaler, scale: np.ndarray) -> np.ndarray | None:
    """(P, P) the linear part M of the re-expression from `old` to `new`, in the scaled
    coordinates z = theta / `scale` (P,); None where it is not finite."""
    n = scale.shape[0]
    probes = np.vstack([np.zeros(n), np.eye(n)])
    im = reexpress_images(model, probes, old, new)
    m = (im[1:] - im[0]).T  # column j: the image of unit vector j, less the origin's
    m = m * scale[None, :] / scale[:, None]
    return m if np.isfinite(m).all() else None


def follow(
    m: np.ndarray, offsets: np.ndarray, covariances: np.ndarray, info: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bank through the map M: offsets (K, P) -> offsets M', covariances (K, P, P) -> M C M',
    the information per coordinate (P,) to its diagonal's image."""
    d = np.abs(np.diagonal(m))
    info = np.where(d > 0, info / np.maximum(d, 1e-300) ** 2, info)
    return offsets @ m.T, m @ covariances @ m.T, info
