# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# Ignore machine-wide pip settings: installs must be the same on every fresh machine.
PIP := PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip install -q -c constraints.txt

.PHONY: setup system-deps demo test lint clean-demo

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

# The SLURM tests start a real two-node cluster (network namespaces) from Debian's packages
# (tests/slurm_cluster.py).
SLURM_PACKAGES := slurmctld slurmd slurm-client munge iproute2

system-deps:
	@if [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] && command -v sbatch >/dev/null && command -v ip >/dev/null; then \
		:; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing $(SLURM_PACKAGES) (apt): the SLURM tests run a real local cluster"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SLURM_PACKAGES); \
	else \
		echo "the SLURM tests need Debian packages; run as root: apt-get install -y $(SLURM_PACKAGES)" >&2; exit 1; \
	fi

test: lint system-deps
	$(VENV)/bin/pytest

clean-demo:
	rm -rf demo_out

.PHONY: gpu-check gpu-check-dry-run
# On one H100/H200: every figure only a GPU shows, ~7 min (docs/performance.md#the-gpu-check). No
# `setup` dependency: the GPU machine has no network (benchmarks/gpu_check_wheels.sh brings the wheels).
gpu-check:
	benchmarks/gpu_check.sh --out runs/gpu_check
gpu-check-dry-run: setup
	benchmarks/gpu_check.sh --cpu-dry-run --out runs/gpu_check_dry_run

