"""fedrec: federated recommendation with pretrained models."""

from fedrec.errors import FedrecError

__all__ = ["FedrecError"]
__version__ = "0.1.0"
