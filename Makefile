# Two commands for a newcomer: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test migrate lint venv venv-test clean bench eval

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

# The demo store's order API (app/demo_orders.py) runs beside the chat server, and the demo page
# is signed in as its demo customer: ask "where is my order 1042?".
DEMO_ORDERS_PORT ?= 8001
run: venv
	DEMO_ORDERS_PORT=$(DEMO_ORDERS_PORT) $(PY) -m app.demo_orders & orders=$$!; \
	trap "kill $$orders 2>/dev/null" EXIT INT TERM; \
	ORDERS_API_URL=$${ORDERS_API_URL:-http://127.0.0.1:$(DEMO_ORDERS_PORT)} \
	ORDERS_API_TOKEN=$${ORDERS_API_TOKEN:-demo-orders-token} \
	DEMO_CUSTOMER=$${DEMO_CUSTOMER-demo-customer:demo@example.com} $(PY) -m app

migrate: venv
	$(PY) -m app migrate

test: venv-test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv-test
	$(PY) -m ruff check app tests
	$(PY) -m mypy app

# The knowledge evaluation of issues 14 and 21 (under a minute, no model): retrieval accuracy, out-of-scope
# precision and recall, key facts and length of the composed answers, search latency; then per
# language (German, Spanish, Hindi).
eval: venv-test
	$(PY) -m tests.knowledge_eval $(EVAL_ARGS)

# The side-by-side benchmark of issue 8 (a few minutes; not part of `make test`): our app, the
# upstream called directly and the LiteLLM proxy (installed once into bench/.venv-litellm).
# Needs PostgreSQL and Redis on 127.0.0.1 and two cores; writes bench/RESULTS.md and the plot.
bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
