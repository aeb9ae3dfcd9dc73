# The two commands of the README. Both set up .venv from scratch if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo

.PHONY: test demo venv bench clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard native/*.c native/*.h native/*.py)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

demo: venv
	$(PY) examples/demo.py --dir $(DEMO_DIR)

bench: venv
	$(PY) bench/decode.py

clean:
	rm -rf $(VENV) build dist *.egg-info pfhistory/_pfh*.so pfhistory/_pfh.c $(DEMO_DIR)
