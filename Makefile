# `make demo` and `make test` build .venv first (scripts/install.sh; seconds when it is there).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp

.PHONY: install test test-slow test-d2main demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) D2_SRC= bash scripts/install.sh
	touch $@

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

# The suite on a detectron2 built from source with its C++ extension (e.g. its main branch), in a
# second environment: `make test-d2main D2_SRC=path/to/detectron2` (a checkout or a .tar.gz of one).
D2_SRC ?= $(firstword $(wildcard ../shared/vendor/detectron2-main-*.tar.gz))
D2MAIN_VENV ?= .venv-d2main
test-d2main:
	@test -n "$(D2_SRC)" || { echo "error: set D2_SRC to a detectron2 source checkout or .tar.gz" >&2; exit 2; }
	VENV=$(D2MAIN_VENV) D2_SRC=$(D2_SRC) bash scripts/install.sh
	$(D2MAIN_VENV)/bin/python -m pytest

# Synthetic data, Mask R-CNN R-18-FPN trained on CPU, COCO mAP, pictures: output/demo/
demo: install
	$(PY) tools/demo.py --output-dir output/demo

# Ours against Detectron2's ResNet and pycocotools (README "Benchmarks"); the full run by default,
# `make bench BENCH_ARGS=--quick` for the 2-minute one.
BENCH_ARGS ?=
bench: install
	$(PY) tools/benchmark.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(D2MAIN_VENV) output .pytest_cache
