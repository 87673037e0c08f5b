"""Prompt learning for zero-shot sketch-based image retrieval (Sain et al., CVPR 2023) with Accelerate.

Entry points: `train/fit.py` (training), `train/eval.py` (evaluation, also of frozen CLIP),
`train/bench.py` (throughput and the learning check), `python -m train.synthetic OUT` (synthetic data).
"""
