# The README's two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The setup/CI path's CPU torch is pinned in constraints-cpu.txt, given to every pip call so that no
# dependency's resolution can replace it, and checked at the end; pyproject keeps an open range for GPU users.
CONSTRAINTS ?= constraints-cpu.txt
PIP := $(PY) -m pip install -q -c $(CONSTRAINTS)
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e '.[test]'
	$(PY) .ci/check_torch.py
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/humanseg-batch run examples/manifest.csv --output out/demo
	-$(VENV)/bin/humanseg-batch status out/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
