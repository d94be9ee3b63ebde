# Every command a developer runs. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements*.txt | sha256sum | cut -c1-12)

.PHONY: install run test test-slow test-all lint format typecheck bench bench-deps bench-compare bench-site bench-contention bench-kv bench-grammar bench-lookup loadtest soak fuzz clean lint-docker container-check publish

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

# This server against llama.cpp's llama-server (built once from the same llama.cpp, cached in
# ~/.cache/spaceserve-bench/ with the synthetic 1.3B of bench/synthetic.py), side by side; each part
# prints one table (docs/performance.md). About 80 minutes on 2 vCPU; run a part alone with its target.
bench: bench-compare bench-site bench-contention

bench-deps: install
	$(PY) -m pip install --quiet -r requirements-bench.txt

# Decode at 1/4/8 streams, a 3,000-token prompt, a follow-up on a 2,500-token system prompt, memory
# with one 15,000-token stream: the synthetic 1.3B at the primary template's layout.
bench-compare: bench-deps
	$(PY) -m bench.compare --model synthetic $(ARGS)

# The site generator's new page / follow-up / edit: on the embedded model (real text, so speculation
# is measured), then on the synthetic 1.3B (production-size speed).
bench-site: bench-deps
	$(PY) -m bench.site $(ARGS)
	$(PY) -m bench.site --model synthetic --servers ours,llama-server --rounds 1 $(ARGS)

# Beside a busy process, as on a shared host.
bench-contention: bench-deps
	$(PY) -m bench.contention $(ARGS)

# KV cache layouts on the synthetic 1.3B, and what a structured-output request costs the streams
# beside it; each prints one table.
bench-kv: bench-deps
	$(PY) -m bench.kv_layout $(ARGS)

bench-grammar: install
	$(PY) -m bench.grammar_cost $(ARGS)

# What speculation drafts and keeps on a whole-page copy of bench.site's page, replayed through the
# lookup without a model (seconds).
bench-lookup: install
	$(PY) -m bench.lookup_replay $(ARGS)

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
