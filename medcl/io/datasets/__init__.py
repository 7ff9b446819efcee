"""Adapters for public datasets in their native layout.

Each image-set adapter module registers its loader and how to recognise its folder with
``@IMAGE_SETS.register(name, recognise=..., describe=...)`` (:mod:`medcl.io.images`); the modules
listed in :data:`IMAGE_SET_MODULES` are imported before a format is detected or loaded by name.
A new image-set format is one new module plus its entry here.
"""

IMAGE_SET_MODULES: tuple[str, ...] = (
    "medcl.io.datasets.camelyon17",
    "medcl.io.datasets.class_folders",
    "medcl.io.datasets.ham10000",
)
