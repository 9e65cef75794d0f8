# The two quick-start commands: `make demo` (the main job) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
# Every extra, so that the tests of the optional parts (Ray, the server, OpenVINO) run too.
EXTRAS = train,bench,dev,serve,openvino,ray

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	-$(MAKE) --no-print-directory browser
	touch $@

install: $(BIN)/.installed

# Debian's Chromium for the search page's browser test (Playwright drives it; its own
# browser download cannot work offline). Without apt-get or root it does nothing and
# that test skips; it never fails the install.
browser:
	@if command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
			|| echo "could not install chromium: the browser test will skip"; \
	else echo "no chromium, and no apt-get as root to install it: the browser test will skip"; fi

demo: $(BIN)/.installed
	$(BIN)/python -m hbt.demo --out demo-out

test: $(BIN)/.installed
	$(BIN)/python -m pytest

.PHONY: install browser demo test

# The benchmark suite (pytest-benchmark), outside make test: tokenize, encode, search and
# end to end, with sentence-transformers and faiss beside them. Each run is saved under
# .benchmarks/; `make bench BENCH_ARGS=--benchmark-compare` compares it with the previous one.
bench: $(BIN)/.installed
	$(BIN)/python -m pytest benchmarks --benchmark-autosave --benchmark-columns=median,iqr,mean,ops,rounds $(BENCH_ARGS)

.PHONY: bench
