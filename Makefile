# napari-seglab: `make run` opens napari with the plugin and a sample; `make test` runs the tests.
# Both create the virtual environment (.venv, with the [dev] extra, which brings [napari]) on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# A second venv with the plain package (no napari, no Qt), as a Dask worker or a server installs it.
HEADLESS_VENV ?= .venv-headless
HPY := $(HEADLESS_VENV)/bin/python
# the torch build the dev venv resolves on these machines, so pip takes it from the local wheel index
HEADLESS_PINS ?= torch==2.14.1 torchvision==0.29.1
XVFB_PKGS := xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxkbcommon-x11-0 libxcb-cursor0 libdbus-1-3 libfontconfig1 \
	libgl1 libegl1
# Run Qt tests under Xvfb when there is no display (napari's canvas needs OpenGL; offscreen Qt has none).
XVFB := $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1920x1080x24")
# the slowest tests of every run are listed, so a test that grows is seen in CI's log
PYTEST_ARGS ?= --durations=15
# `make test` and `make test-fast` spread the files over this many pytest-xdist workers, each pinned to its share of the cores
# (tests/conftest.py); TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= 2

.PHONY: setup run test test-fast lint docs headless-test bench screenshot sample-data xvfb clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

xvfb:
	@if [ -z "$(DISPLAY)" ] && ! command -v xvfb-run >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(XVFB_PKGS) >/dev/null; \
		else echo "Install Xvfb for the viewer tests: sudo apt-get install $(XVFB_PKGS)"; exit 2; fi; fi

run: setup
	$(PY) scripts/launch.py

test: setup xvfb
	$(XVFB) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# the inner loop: every package's tests without viewers and without the slow ones (about a minute on
# 2 cores); `make test` stays the whole suite
test-fast: setup
	$(PY) -m pytest -m "not slow and not gui" -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports --no-cache

# the documentation site (docs/*.md, mkdocs.yml) into site/; --strict: a warning or a broken link fails
docs: setup
	$(VENV)/bin/mkdocs build --strict -d site

$(HEADLESS_VENV)/.installed: pyproject.toml
	test -x $(HPY) || python3 -m venv $(HEADLESS_VENV)
	echo '*' > $(HEADLESS_VENV)/.gitignore
	$(HPY) -m pip install -q $(HEADLESS_PINS) . pytest pytest-timeout
	touch $@

# `pip install napari-seglab` without extras: the CLI trains, predicts and runs a batch on a Dask
# cluster with napari and Qt absent. The package is reinstalled from this tree (as a wheel, not
# editable) on every run so the test sees the current code.
headless-test: $(HEADLESS_VENV)/.installed
	rm -rf build  # setuptools never deletes stale modules from build/lib; a wheel would keep them
	$(HPY) -m pip install -q --no-deps --force-reinstall .
	@if $(HPY) -c "import napari" 2>/dev/null; then \
		echo "napari is importable in $(HEADLESS_VENV): the headless install is not headless"; exit 1; fi
	$(HPY) -m pytest -p no:cacheprovider tests/headless

# maximised under a window manager (openbox, installed when root), as a user sees it
screenshot: setup xvfb
	@command -v openbox >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq openbox >/dev/null; } || true
	$(XVFB) $(PY) scripts/screenshot.py docs/screenshot.png

sample-data: setup
	$(PY) scripts/make_sample_data.py

bench: setup xvfb
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	for b in benchmarks/*.py; do echo "== $$b"; $(XVFB) $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(HEADLESS_VENV) build dist site src/*.egg-info .pytest_cache
