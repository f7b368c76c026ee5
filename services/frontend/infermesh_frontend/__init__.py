"""infermesh_frontend."""
