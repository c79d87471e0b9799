# Two entry points for a fresh machine: `make run` (the study) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= study
SEEDS  ?= 1

.PHONY: run test lint data bench bench-epoch bench-inference bench-load bench-gpu bench-keras clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The Debian package is the fastest offline source; without root or apt, fashionclf downloads
# Zalando's files into ~/.cache/fashionclf on first use and verifies their MD5s.
data: $(STAMP)
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "apt install failed; downloading instead"; \
	fi
	@$(BIN)/python -c "from fashionclf.data.fashion_mnist import locate; print('Fashion-MNIST:', locate())"

run: $(STAMP) data
	$(BIN)/fashionclf compare --seeds $(SEEDS) --out $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint data
	$(BIN)/pytest -q -rs

# Benchmarks (minutes each); every one writes JSON into benchmarks/results/. The Keras baseline gets its own venv.
# bench-inference and bench-load time RUN, a run folder (by default one of `make run`'s).
RUN ?= $(OUT)/runs/tuned_cnn-s0

bench: bench-epoch

bench-epoch: $(STAMP) data
	$(BIN)/python benchmarks/epoch_speed.py

bench-inference: $(STAMP) data .venv-keras/.installed-stamp
	$(BIN)/python benchmarks/inference_speed.py $(RUN)

bench-load: $(STAMP) data
	$(BIN)/python benchmarks/load_test.py $(RUN)

# On a machine with a CUDA GPU (a few minutes on an H100/H200).
bench-gpu: $(STAMP) data
	$(BIN)/python benchmarks/gpu_time_to_accuracy.py

.venv-keras/.installed-stamp: benchmarks/requirements-keras.txt
	$(PYTHON) -m venv .venv-keras
	.venv-keras/bin/pip install -q -r benchmarks/requirements-keras.txt
	touch $@

bench-keras: $(STAMP) data .venv-keras/.installed-stamp
	$(BIN)/python benchmarks/vs_keras.py

clean:
	rm -rf $(VENV) build *.egg-info
