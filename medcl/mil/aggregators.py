"""MIL aggregators looked up by name: ``create_aggregator("abmil", in_dim=512)``.

Every aggregator maps padded bags ``features (B, N, D)`` with ``mask (B, N)`` (``True`` on real
instances) to a :class:`~medcl.mil.base.MILOutput`:

- ``mean``: instance classifier, bag logits = mean of the instance logits;
- ``max``: instance classifier, the bag is classified by its top-scoring instance;
- ``abmil``: gated attention MIL (Ilse et al., ICML 2018);
- ``transmil``: a small transformer with a CLS token and a key padding mask;
- ``ins``: the INS instance classifier with a contrastive projection head; the bag score is the
  mean of the instance probabilities, as in the paper (:mod:`medcl.mil.instance`).
"""

from __future__ import annotations

from typing import Any

from medcl.mil import abmil as _abmil  # noqa: F401  (registers "abmil")
from medcl.mil import instance as _instance  # noqa: F401  (registers "mean", "max", "ins")
from medcl.mil import transmil as _transmil  # noqa: F401  (registers "transmil")
from medcl.mil.base import AGGREGATORS, MILAggregator, MILOutput, masked_softmax

__all__ = [
    "AGGREGATORS",
    "MILAggregator",
    "MILOutput",
    "create_aggregator",
    "list_aggregators",
    "masked_softmax",
]


def list_aggregators() -> list[str]:
    """The registered aggregator names, sorted."""
    return AGGREGATORS.names()


def create_aggregator(name: str, in_dim: int, n_classes: int = 2, **kwargs: Any) -> MILAggregator:
    """Build the aggregator ``name`` for ``in_dim``-dimensional features.

    The name and ``kwargs`` are recorded on the model (``aggregator_name``,
    ``aggregator_kwargs``) so that :func:`medcl.mil.train.save_mil_model` can rebuild it.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names), or options the
            builder does not take (checked against its signature before it runs; an error
            raised while building, a ``TypeError`` included, propagates unchanged).
    """
    model = AGGREGATORS.create(name, in_dim, n_classes, **kwargs)
    # plain attributes (not parameters) read back by save_mil_model
    object.__setattr__(model, "aggregator_name", name)
    object.__setattr__(model, "aggregator_kwargs", dict(kwargs))
    return model
