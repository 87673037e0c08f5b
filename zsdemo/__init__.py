"""zsdemo: sketch-to-photo search with learned-prompt CLIP over a cached, indexed photo gallery."""

__version__ = "0.1.0"
