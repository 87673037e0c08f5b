"""The sketch query path: faster copies of the prompted encoder (torch int8/bf16, ONNX Runtime), and the measured choice among them."""
