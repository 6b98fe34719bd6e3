"""Ratio benchmarks (docs/design.md section 7): each figure measured beside its baseline in one run.

`python -m benchmarks` (or `make bench`) runs every figure on the tiny world and writes
`benchmarks/results/<date>.json` plus the table in BENCHMARKS.md; `--quick` runs the micro world
with 2 repeats (the test suite's smoke run); `--gpu` runs the GPU variant (vLLM engine, a ~0.5B
Llama built from config). Figures: rollout.py, broadcast.py, learner.py, overlap.py (which also
takes the per-role memory), gpu.py; shared helpers in common.py, the tables in report.py.
"""
