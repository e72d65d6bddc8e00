# `make demo` and `make test` each set up .venv on a fresh machine (CPU torch pinned: no CUDA download).
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m videoformer demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf .venv *.egg-info .pytest_cache
