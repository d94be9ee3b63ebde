# Every command a developer runs. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements*.txt | sha256sum | cut -c1-12)

.PHONY: install run test test-slow test-all lint format typecheck bench bench-kv bench-grammar loadtest soak fuzz clean lint-docker container-check publish

install: $(STAMP)

$(STAMP): requirements.txt requirements-embedded.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# llama-cpp-python compiles from source the first time (about 6 minutes on 2 cores); pip caches the wheel.
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(PY) -m spaceserve

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

test-all: install
	$(PY) -m pytest -m "slow or not slow"

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: install
	$(PY) -m mypy

# This server against llama-cpp-python's server and llama-server (built once from the same llama.cpp,
# cached in ~/.cache/spaceserve-bench/), side by side; prints one table. ARGS="--model x.gguf --rounds 5".
bench: install
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) -m bench.compare $(ARGS)

# KV cache layouts on the synthetic 1.3B (bench/synthetic.py builds it once), and what a
# structured-output request costs the streams beside it; each prints one table.
bench-kv: install
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) -m bench.kv_layout $(ARGS)

bench-grammar: install
	$(PY) -m bench.grammar_cost $(ARGS)

# Load tests: the server on the embedded model on a loopback port, locust headless; CSVs and a summary
# under artifacts/loadtest/. Exit status 1 on any failed request (soak: also on growing memory).
loadtest: install
	$(PY) -m loadtests.run

soak: install
	$(PY) -m loadtests.run --profile soak

# schemathesis against the server's own OpenAPI schema; reports under artifacts/fuzz/.
fuzz: install
	$(PY) -m loadtests.fuzz

# Space templates (spaces/<TEMPLATE>/): lint the image recipe, run it the way its container would,
# publish it. `make publish TEMPLATE=primary SPACE=owner/name ARGS="--private --dry-run"`.
TEMPLATE ?= primary

lint-docker: install
	$(VENV)/bin/hadolint Dockerfile

container-check: install
	$(PY) -m spaceserve.deploy.containercheck $(TEMPLATE) $(ARGS)

publish: install
	@test -n "$(SPACE)" || { echo "usage: make publish TEMPLATE=primary SPACE=owner/name [ARGS='--private ...']" >&2; exit 2; }
	$(PY) -m spaceserve.deploy.publish $(TEMPLATE) --space $(SPACE) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache artifacts
