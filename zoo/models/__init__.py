"""Model families; each module registers its models on import. Adding a family adds one line here."""

from zoo.models import cdcgan, cgen, dcgan, deconvnet, lenet, sparse_ae  # noqa: F401
