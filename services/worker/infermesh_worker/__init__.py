"""infermesh_worker."""
