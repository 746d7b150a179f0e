# `make demo` and `make test` build .venv first (scripts/install.sh; seconds when it is there).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp

.PHONY: install test test-slow demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $@

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

# Synthetic data, Mask R-CNN R-18-FPN trained on CPU, COCO mAP, pictures: output/demo/
demo: install
	$(PY) tools/demo.py --output-dir output/demo

# Ours against Detectron2's ResNet and pycocotools (README "Benchmarks"); the full run by default,
# `make bench BENCH_ARGS=--quick` for the 2-minute one.
BENCH_ARGS ?=
bench: install
	$(PY) tools/benchmark.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) output .pytest_cache
