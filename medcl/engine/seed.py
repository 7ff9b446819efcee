"""Seeds and random-number-generator state, so that a run and its resumption draw the same numbers.

:func:`seed_everything` seeds Python, NumPy and torch (CPU and every CUDA device);
:func:`get_rng_state` / :func:`set_rng_state` capture and restore all of them, in a form that
``torch.load(weights_only=True)`` accepts (tensors, ints, tuples); :func:`worker_init_fn` gives each
DataLoader worker its own NumPy / Python stream derived from torch's per-worker seed.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_MAX_SEED = 2**32


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and all CUDA devices).

    Args:
        seed: any integer; it is reduced modulo 2**32 for NumPy.
        deterministic: also ask torch for deterministic kernels (slower; some operations then
            raise) and turn off cuDNN benchmarking.
    """
    random.seed(seed)
    np.random.seed(seed % _MAX_SEED)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs this workspace setting for reproducible matmuls on CUDA >= 10.2.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    logger.debug("seeded everything with %d (deterministic=%s)", seed, deterministic)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy, ``random`` and the dataset's own transforms
    from torch's per-worker seed.

    torch already gives each worker ``base_seed + worker_id``; without this, every worker would
    share the NumPy state forked from the parent and draw the same augmentations. A dataset with
    a ``set_random_state(seed)`` method (transforms with a generator of their own, as MONAI's)
    is reseeded with the worker's seed too.
    """
    seed = torch.initial_seed() % _MAX_SEED
    np.random.seed(seed)
    random.seed(seed)
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    reseed = getattr(info.dataset, "set_random_state", None) if info is not None else None
    if reseed is not None:
        reseed(seed)
    logger.debug("worker %d seeded with %d", worker_id, seed)


def get_rng_state() -> dict[str, Any]:
    """Capture the state of every generator: ``python``, ``numpy``, ``torch`` and ``cuda``."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators captured by :func:`get_rng_state`.

    CUDA states are restored only when as many devices are visible as were saved; otherwise a
    warning is logged and the CUDA generators keep their current state.
    """
    random.setstate(_as_python_state(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = list(state.get("cuda", []))
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            logger.warning(
                "saved %d CUDA generator states but %d devices are visible; not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


def _as_python_state(value: Any) -> tuple[Any, ...]:
    # A round trip through torch.save may turn the inner tuple into a list; random wants tuples.
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
