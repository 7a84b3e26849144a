"""I/O at the edges: the Kubernetes API and the object store."""
