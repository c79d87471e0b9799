# Two entry points for a fresh machine: `make run` (the study) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# `make run` installs what the study needs (the core and the report figures: '.[study]');
# `make test` installs what the tests need (every extra and the test tools: '.[dev]').
STUDY  := $(VENV)/.installed-study
DEV    := $(VENV)/.installed-dev
OUT    ?= study
SEEDS  ?= 1

.PHONY: run test lint data bench bench-epoch bench-inference bench-load bench-gpu bench-keras clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STUDY): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[study]'
	touch $(STUDY)

$(DEV): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(DEV) $(STUDY)

# The Debian package is the fastest offline source; without root or apt, fashionclf downloads
# Zalando's files into ~/.cache/fashionclf on first use and verifies their MD5s.
data: $(STUDY)
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "apt install failed; downloading instead"; \
	fi
	@$(BIN)/python -c "from fashionclf.data.fashion_mnist import locate; print('Fashion-MNIST:', locate())"

run: $(STUDY) data
	$(BIN)/fashionclf compare --seeds $(SEEDS) --out $(OUT)

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(DEV) lint data
	$(BIN)/pytest -q -rs

# Benchmarks (minutes each); every one writes JSON into benchmarks/results/. The Keras baseline gets its own venv.
# bench-inference and bench-load time RUN, a run folder (by default one of `make run`'s).
RUN ?= $(OUT)/runs/tuned_cnn-s0

bench: bench-epoch

bench-epoch: $(DEV) data
	$(BIN)/python benchmarks/epoch_speed.py

bench-inference: $(DEV) data .venv-keras/.installed-stamp
	$(BIN)/python benchmarks/inference_speed.py $(RUN)

bench-load: $(DEV) data
	$(BIN)/python benchmarks/load_test.py $(RUN)

# On a machine with a CUDA GPU (a few minutes on an H100/H200).
bench-gpu: $(DEV) data
	$(BIN)/python benchmarks/gpu_time_to_accuracy.py

.venv-keras/.installed-stamp: benchmarks/requirements-keras.txt
	$(PYTHON) -m venv .venv-keras
	.venv-keras/bin/pip install -q -r benchmarks/requirements-keras.txt
	touch $@

bench-keras: $(DEV) data .venv-keras/.installed-stamp
	$(BIN)/python benchmarks/vs_keras.py

clean:
	rm -rf $(VENV) build *.egg-info
