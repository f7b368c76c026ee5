"""infermesh_scheduler."""
