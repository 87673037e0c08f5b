"""Searching a gallery with a sketch (engine) and explaining a match (similarity maps)."""
