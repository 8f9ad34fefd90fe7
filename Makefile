# The two set-up commands of a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-stress ui venv bench clean mutants

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) sweeps/thrm_lambda.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The end-to-end tests under load: 3 runs in a row beside one CPU burner per core (tens of minutes; not in CI)
test-stress: $(STAMP)
	$(PY) tools/stress.py $(STRESS_ARGS)

# the MLflow UI over ./mlflow.db (what `make run` writes), on 127.0.0.1 only; Ctrl-C stops it
UI_PORT ?= 5000
ui: $(STAMP)
	$(VENV)/bin/hyporay ui --port $(UI_PORT)

bench: $(STAMP)
	for f in bench/*.py; do $(PY) $$f || exit 1; done

# Mutation testing of the science modules against the fast tests (minutes to an hour on 2 cores; not in CI):
# named mutations, then mutmut, installed on first use into $(MUTMUT) (inside the venv's folder, not on its path).
MUTMUT ?= $(VENV)/mutmut
mutants: $(STAMP)
	test -d $(MUTMUT)/mutmut || $(PY) -m pip install --quiet --target $(MUTMUT) "mutmut>=3.8,<4"
	$(PY) tools/mutants.py --mutmut-path $(MUTMUT) $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
