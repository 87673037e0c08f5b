"""Serving without Gradio: modes, the search service and its typed outcomes; the page's own files in page/."""
