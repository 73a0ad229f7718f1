# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# Ignore machine-wide pip settings: installs must be the same on every fresh machine.
PIP := PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip install -q -c constraints.txt

.PHONY: setup demo test lint clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) -U pip wheel "setuptools<82"
	$(PIP) torch torchaudio
	# DeepSpeed builds its CUDA ops lazily; it must see the already-installed torch.
	DS_BUILD_OPS=0 $(PIP) --no-build-isolation deepspeed
	$(PIP) -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/xlsr demo --out demo_out

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest

clean-demo:
	rm -rf demo_out
