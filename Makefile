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

.PHONY: run study test test-fast container-check lint golden data ready-model ready-model-store bench bench-epoch bench-inference bench-load bench-gpu bench-keras clean

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

# The quick seed study: each model for fewer epochs than its recipe (docs/results/quick-study.md); the plan with its
# estimated times comes first, then one line for the whole study with elapsed and remaining time.
run: $(STUDY) data
	$(BIN)/fashionclf compare --quick --seeds $(SEEDS) --out $(OUT)

# The full recipes over 3 seeds: the figures of docs/results/ (about an hour with native bf16; hours without).
study: $(STUDY) data
	$(BIN)/fashionclf compare --seeds 3 --out study-full

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(DEV) lint data
	$(BIN)/pytest -q -rs --durations=15

# The loop for the person changing code: pure logic and one end-to-end smoke per command (train, predict, serve,
# evaluate, label and the desk, compare, data check, recipes, models), under a minute on two cores. Files are named,
# not selected by marker, because collecting every test module alone costs 20 s. make test (CI) runs everything.
FAST_TESTS := tests/test_api.py tests/test_selftrain.py tests/test_promise.py tests/test_audit.py tests/test_review_attacks.py \
	tests/test_calibrate.py tests/test_callbacks.py tests/test_architecture.py tests/test_models.py tests/test_unknown.py \
	tests/test_runs.py tests/test_batch.py tests/test_images.py tests/test_data_check.py tests/test_data.py tests/test_card.py \
	tests/test_metadata.py tests/test_layouts.py tests/test_corrupt.py tests/test_augment.py tests/test_analysis.py \
	tests/test_metrics.py tests/test_paired.py tests/test_reports_blocks.py tests/test_dockerfile.py \
	tests/test_cli.py::test_models_lists_registry tests/test_cli.py::test_unknown_model_is_one_clear_line \
	tests/test_cli.py::test_evaluate_missing_run_is_clear tests/test_cli.py::test_plain_predict_output_keeps_one_line_per_file_whatever_the_name

test-fast: $(DEV)
	$(BIN)/pytest -q -p no:cacheprovider --durations=5 $(FAST_TESTS)

# The container image, really built and started (tools/container_check.py): a Debian base made with mmdebstrap, `podman
# build` of the Dockerfile on it, then /health and one prediction from the running image. Needs podman and mmdebstrap.
container-check: $(DEV)
	$(BIN)/python tools/container_check.py

# After an intended change to what users see (a new setting's default, a new option): rewrite the golden snapshots
# in tests/golden/ from today's code and read the diff before committing it.
golden: $(DEV)
	FASHIONCLF_WRITE_GOLDEN=1 $(BIN)/pytest -q tests/test_golden.py
	git diff --stat tests/golden

# The ready model shipped in fashionclf/weights/default (docs/results/ready-model.md): trains a scan run and an RGB
# photo run (seed READY_SEED) into READY, fits their review rule on held-out photos, writes the bundle and its figures.
READY      ?= ready-build
READY_SEED ?= 0
PHOTOS     ?= ../shared/clothing-photos
READY_MAP  := t-shirt=T-shirt/top,pants=Trouser,dress=Dress,outwear=Coat,shirt=Shirt,longsleeve=Pullover,hat=-,shoes=-,shorts=-,skirt=-
ready-model: $(DEV) data
	$(BIN)/python tools/photo_fmnist_folder.py $(READY)/photofm --shop $(PHOTOS)/train --class-map "$(READY_MAP)" --seed $(READY_SEED)
	$(BIN)/python tools/catalogue_shots.py $(READY)/catshots --per-class 50
	$(BIN)/fashionclf train --model tuned_cnn --seed $(READY_SEED) --augment --aug-rotation 10 --aug-zoom 0.1 --aug-shift 0.1 \
		--aug-photo 0.5 --extra-photos $(PHOTOS)/train --class-map "$(READY_MAP)" --out $(READY)/scan
	$(BIN)/fashionclf train --data $(READY)/photofm --model efficientnet_lite0 --image-size 160 --epochs 10 --batch-size 64 \
		--aug-shift 0.1 --aug-zoom 0.15 --seed $(READY_SEED) --out $(READY)/photo
	$(BIN)/python tools/ready_model.py --scan $(READY)/scan --photo $(READY)/photo --phone $(PHOTOS)/validation \
		--phone-map "$(READY_MAP)" --catalogue $(READY)/catshots --out $(READY)/default \
		--report experiments/ready_model/results/ready.json --record tests/data/ready

# The same pair with its photo member on the embed-once route (frozen Lite0/1/2 + a head, `train --store`) and the
# shipped scan member: measured, not shipped (docs/results/ready-model.md). STORE: an embedding store, made where missing.
STORE ?= $(or $(FASHIONCLF_STORE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/fashionclf/embeddings)
ready-model-store: $(DEV) data
	$(BIN)/python tools/photo_fmnist_folder.py $(READY)/store/photofm --shop $(PHOTOS)/train --class-map "$(READY_MAP)" --seed $(READY_SEED)
	$(BIN)/python tools/catalogue_shots.py $(READY)/store/catshots --per-class 50
	$(BIN)/fashionclf train --data $(READY)/store/photofm --store $(STORE) --split-seed $(READY_SEED) --out $(READY)/store/photo
	$(BIN)/python tools/ready_model.py --scan fashionclf/weights/default/scan --photo $(READY)/store/photo --phone $(PHOTOS)/validation \
		--phone-map "$(READY_MAP)" --catalogue $(READY)/store/catshots --out $(READY)/store/default --report $(READY)/store/ready.json

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

bench-keras: $(DEV) data .venv-keras/.installed-stamp  # the seed study side by side with Keras (hours: --epochs N caps)
	$(BIN)/python benchmarks/vs_keras.py

clean:
	rm -rf $(VENV) build *.egg-info
