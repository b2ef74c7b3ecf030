# The README's two set-up commands: `make demo` (the main job) and `make test`.
# Both install what they need first; torch comes from the pinned CPU wheel, never a CUDA build.
PYTHON ?= python

.PHONY: install install-dev demo test

install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e .

install-dev: install
	$(PYTHON) -m pip install -e ".[dev]"

demo: install
	$(PYTHON) train_hf.py --demo --output_dir outputs/demo

test: install-dev
	test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	$(PYTHON) -m pytest -q
