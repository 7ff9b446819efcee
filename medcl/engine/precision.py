"""Mixed precision through one helper: autocast, loss scaling, unscaling, clipping and stepping.

``precision`` is ``"fp32" | "bf16" | "fp16" | "auto"``. ``"auto"`` is bf16 on a CUDA device that
supports it, fp16 on an older CUDA device, and fp32 on CPU (CPU autocast is off unless ``"bf16"``
is asked for explicitly). fp16 needs a :class:`torch.amp.GradScaler` so that small gradients do
not underflow; bf16 has fp32's range and needs none.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

PrecisionName = Literal["fp32", "bf16", "fp16", "auto"]
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def resolve_precision(precision: str, device: torch.device) -> str:
    """Resolve ``"auto"`` for ``device`` and check that the choice is possible there.

    Raises:
        ValueError: an unknown name, or fp16 on a device other than CUDA.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device, got '{device}'; use bf16 or fp32")
    return precision


class MixedPrecision:
    """Autocast and (for fp16) gradient scaling for one device.

    Usage per optimizer step::

        with amp.autocast():
            loss = step_fn(model, batch)
        amp.backward(loss)
        amp.step(optimizer, model.parameters(), grad_clip=1.0)

    Args:
        precision: ``"fp32" | "bf16" | "fp16" | "auto"``.
        device: the device the model runs on.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype: torch.dtype | None = {
            "fp32": None,
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
        }[self.precision]
        self.scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        )
        logger.debug("precision %s on %s (scaler: %s)", self.precision, self.device, self.scaler)

    @property
    def enabled(self) -> bool:
        """True when autocast is on."""
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context manager for the forward pass; a no-op context in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled first in fp16)."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[nn.Parameter] | None = None,
        grad_clip: float | None = None,
    ) -> float | None:
        """Unscale, clip the gradient norm to ``grad_clip`` (if given), step and update the scale.

        Returns:
            The total gradient norm before clipping when ``grad_clip`` is given, else None.
        """
        norm: float | None = None
        if grad_clip is not None:
            if parameters is None:
                raise ValueError("grad_clip needs the parameters to clip")
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            norm = float(torch.nn.utils.clip_grad_norm_(list(parameters), grad_clip))
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skips the step when a gradient is inf/nan
            self.scaler.update()
        else:
            optimizer.step()
        return norm

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty without a scaler), for checkpoints."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; an empty state leaves the scaler as it is."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


@contextlib.contextmanager
def autocast_for(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast for inference code that has no optimizer (evaluation, feature extraction)."""
    with MixedPrecision(precision, device).autocast():
        yield
