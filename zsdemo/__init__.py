"""zsdemo: sketch-to-photo search with learned-prompt CLIP and an Annoy gallery index."""

__version__ = "0.1.0"
