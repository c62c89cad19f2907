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
	$(BIN)/python -m pip install --quiet -e '.[serve,dev,dask]'
	touch $@

install: $(BIN)/oirl

## The main job on built-in defaults: import the Prompt-OIRL logs; train with every default
## on MAWPS (where per-query choice pays) and GSM8K (where it does not); recommend prompts for
## a few queries; evaluate both on their test queries and print one table. Writes only into
## logs/, models/ and embeddings/ (all git-ignored).
demo: install
	$(BIN)/oirl import prompt-oirl --data-dir $(DATA_DIR) --out logs
	$(BIN)/oirl train logs/mawps.parquet --out models/mawps
	$(BIN)/oirl train logs/gsm8k.parquet --out models/gsm8k
	$(BIN)/oirl recommend models/mawps --queries experiments/demo_queries.jsonl --top-k 3
	$(BIN)/oirl evaluate models/mawps logs/mawps.parquet --out models/mawps.evaluate.json > /dev/null
	$(BIN)/oirl evaluate models/gsm8k logs/gsm8k.parquet --out models/gsm8k.evaluate.json > /dev/null
	$(BIN)/python experiments/demo_table.py models/mawps.evaluate.json models/gsm8k.evaluate.json

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check oirl tests experiments

bench: install
	$(BIN)/python experiments/bench_core.py --data-dir $(DATA_DIR)

clean:
	rm -rf models .pytest_cache
