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

# The tests run the CLI in hundreds of subprocesses: the package is compiled to
# bytecode once first (each would compile it anew where PYTHONDONTWRITEBYTECODE is
# set), then whole modules run on one pytest-xdist worker per core, keeping each
# module's fixtures on one worker, in the order tests/conftest.py sets (longest first).
test: venv
	$(PY) -m compileall -q pfhistory migrations
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

demo: venv
	$(PY) examples/demo.py --dir $(DEMO_DIR)

bench: venv
	$(PY) bench/decode.py

clean:
	rm -rf $(VENV) build dist *.egg-info pfhistory/_pfh*.so pfhistory/_pfh.c $(DEMO_DIR)
