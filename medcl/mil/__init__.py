"""Multiple-instance learning for whole-slide classification.

- :mod:`medcl.mil.data`: :class:`~medcl.mil.data.Bag`, padding (``collate_bags``), bag files and
  manifests;
- :mod:`medcl.mil.aggregators`: ``create_aggregator(name, in_dim, n_classes)`` for ``mean``,
  ``max``, ``abmil``, ``transmil`` and ``ins``;
- :mod:`medcl.mil.train`: ``fit_mil``, ``predict_bags``, ``mil_metrics``, checkpoints and
  patient-grouped ``cross_validate``;
- heatmaps and explanations: :mod:`medcl.mil.heatmap`, :mod:`medcl.mil.slide_heatmap`.

Submodules are imported on use, so importing a light one (heatmap rendering) does not load torch
training code.
"""
