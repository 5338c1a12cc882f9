"""Model families; each module registers its models on import. Adding a family adds one line here."""

from zoo.models import sparse_ae  # noqa: F401
