"""The model layer: preprocessing, learned prompts on a frozen open_clip ViT, and the sketch/photo encoder."""
