"""infermesh_cli."""
