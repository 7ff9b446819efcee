"""medcl: contrastive adaptation of medical-imaging models across hospitals, scanners and stains."""

from medcl.errors import MedclError

__all__ = ["MedclError", "__version__"]
__version__ = "0.1.0"
