# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Everything installs into the virtual environment .venv (made here if missing).
VENV     ?= .venv
BIN      := $(VENV)/bin
DATA_DIR ?= ../shared/data
PYTHON   ?= python3
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint bench clean

$(BIN)/oirl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first: otherwise sentence-transformers pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[serve,dev]'
	touch $@

install: $(BIN)/oirl

## The main job on built-in defaults: import the Prompt-OIRL logs, train on GSM8K,
## recommend prompts for a few queries, evaluate on the 1,000 GSM8K test queries.
demo: install
	$(BIN)/oirl import prompt-oirl --data-dir $(DATA_DIR) --out logs
	$(BIN)/oirl train logs/gsm8k.parquet --out models/gsm8k
	$(BIN)/oirl recommend models/gsm8k --queries experiments/demo_queries.jsonl --policy conservative --top-k 3
	$(BIN)/oirl evaluate models/gsm8k logs/gsm8k.parquet --split test --out experiments/results/gsm8k_evaluate.json

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check oirl tests experiments

bench: install
	$(BIN)/python experiments/bench_core.py --data-dir $(DATA_DIR)

clean:
	rm -rf models .pytest_cache
