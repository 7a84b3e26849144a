"""masked-iclora operator: the API model, the CLI and the Kubernetes controller.

Importing this package has no side effects; the operator runtime (kopf) is
only imported by the modules that run it.
"""

__version__ = "0.1.0"
