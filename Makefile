# The two quick-start commands: `make demo` (the main job) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
# Every extra, so that the tests of the optional parts (Ray, the server, OpenVINO, MTEB) run too.
EXTRAS = train,bench,dev,serve,openvino,ray,mteb
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH = torch==2.13.0
# The tested set: every extra's versions as CI installs them, for CPython 3.11 on x86-64
# Linux. `make lock` regenerates it from pyproject.toml; `make install LOCK=` goes without.
LOCK ?= requirements/lock.txt

$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(LOCK),-c $(LOCK)) $(TORCH)
	$(BIN)/pip install -q $(if $(LOCK),-c $(LOCK)) -e '.[$(EXTRAS)]'
	-$(MAKE) --no-print-directory browser
	-$(MAKE) --no-print-directory qemu
	touch $@

install: $(BIN)/.installed

# uv resolves every extra in seconds and writes a requirements file that pip reads as
# constraints; pip-tools' pip-compile resolves through pip's internals, which new pips break.
# It keeps the versions already locked: `make lock LOCK_FLAGS=--upgrade` moves them all.
UV = uv==0.13.8
# torch's CPU wheel: from pip's find-links where they are set (this kind of machine keeps
# the wheel on disk), else from PyTorch's CPU index.
TORCH_SOURCE = $(if $(PIP_FIND_LINKS),$(addprefix --find-links ,$(PIP_FIND_LINKS)),--torch-backend cpu)
lock:
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(UV)
	echo '$(TORCH)' | $(BIN)/uv pip compile pyproject.toml --all-extras --constraints - $(TORCH_SOURCE) \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' \
		--quiet $(LOCK_FLAGS) -o requirements/lock.txt

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

# Debian's qemu-user for the tests that run hbt on an AVX2 CPU without VNNI, the other int8
# kernel path (qemu-x86_64 -cpu Haswell). Like browser: without apt-get or root those tests
# skip; it never fails the install.
qemu:
	@if command -v qemu-x86_64 >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's qemu-user for the tests on the AVX2 int8 path"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user) >/dev/null 2>&1 \
			|| echo "could not install qemu-user: the tests under qemu will skip"; \
	else echo "no qemu-user, and no apt-get as root to install it: the tests under qemu will skip"; fi

demo: $(BIN)/.installed
	$(BIN)/python -m hbt.demo --out demo-out

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# The README's install orders, as a user runs them without the lock, each in a throwaway
# venv under /tmp with an export and a search (.ci/install-orders): too heavy for make test;
# run it after changing pyproject.toml's dependencies.
install-orders:
	.ci/install-orders

.PHONY: install lock browser qemu demo test install-orders

# The benchmark suite (pytest-benchmark), outside make test: tokenize, encode, search and
# end to end, with sentence-transformers and faiss beside them. Each run is saved under
# .benchmarks/; `make bench BENCH_ARGS=--benchmark-compare` compares it with the previous one.
bench: $(BIN)/.installed
	$(BIN)/python -m pytest benchmarks --benchmark-autosave --benchmark-columns=median,iqr,mean,ops,rounds $(BENCH_ARGS)

.PHONY: bench
