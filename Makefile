# The two entry points of a fresh checkout: `make demo` and `make test` (CI runs `make test`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all lint

# (Re)install the package and its dev tools whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Offline demo: train a ResNet-18 on scikit-learn's real digits (once), then the main job forgets digit 3.
demo: $(VENV)/.installed
	$(PY) benchmarks/prepare_demo.py
	$(PY) scripts/unlearn.py --model_id outputs/digits-resnet18 --dataset_name outputs/digits \
		--forget_class digit_3 --output_dir outputs/digits-unlearned --disable_tqdm true

# The default suite (slow checks are marked and skipped; `make test-all` runs them too).
test: $(VENV)/.installed
	$(PY) -m pytest

test-all: $(VENV)/.installed
	$(PY) -m pytest -m ''

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check hf_pbu scripts tests benchmarks
