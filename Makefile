# `make demo` and `make test` build .venv first (scripts/install.sh; seconds when it is there).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp

.PHONY: install test test-slow demo clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $@

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

demo: install
	$(PY) -m resnet_backbones

clean:
	rm -rf $(VENV) output .pytest_cache
