# genforge: `make demo` trains the quickstart GAN; `make test` runs the fast test tier.
# Both create .venv when it is missing and install everything into it.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default; GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files record what was installed, so a second `make` does not reinstall.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Each demo run gets its own directory, so a second `make demo` never touches the first one's files.
DEMO_RUN := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

demo: $(VENV)/.installed
	$(BIN)/genforge train configs/quickstart.yaml --run-dir $(DEMO_RUN)
	@echo "Sample grid: $(DEMO_RUN)/samples/step-1000.png (try: $(BIN)/genforge sample $(DEMO_RUN) --out grid.png)"

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
