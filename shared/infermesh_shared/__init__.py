"""infermesh_shared."""
