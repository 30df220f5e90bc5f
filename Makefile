# mnist_spark: `make run` sets up .venv and runs the main job on local Spark;
# `make test` sets up .venv and runs the whole test suite.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# Executors use the venv's interpreter, and Spark reads this project's conf/.
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export SPARK_CONF_DIR := $(abspath conf)

.PHONY: install run ingest export-png train test test-unit test-fast test-connect lint mypy-baseline bench clean

# TensorFlow through the [cpu] extra (EXTRAS=gpu,test for the tensorflow package instead);
# CONSTRAINTS=constraints.txt installs the exact versions of the last full test run (Python 3.11).
EXTRAS      ?= cpu,test
CONSTRAINTS ?=

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

run: train

train: install
	$(BIN)/spark-submit jobs/train_cnn.py $(ARGS)

ingest: install
	$(BIN)/spark-submit jobs/ingest.py $(ARGS)

export-png: install
	$(BIN)/spark-submit jobs/export_png.py $(ARGS)

.PHONY: transfer
transfer: install
	$(BIN)/spark-submit jobs/transfer.py $(ARGS)

# The pipeline end to end, each step reading the previous step's output in Spark formats:
# IDX files -> ingest (Parquet) -> export_png (PNG set) -> train_cnn -> predict, and transfer
# learning from the trained network on the ingested Parquet. Each step is skipped when its
# output is complete, so a re-run after a failure does only what is left.
# Small: make pipeline PIPELINE=runs/small LIMIT=2000 EPOCHS=1
PIPELINE ?= runs/pipeline
LIMIT    ?=
EPOCHS   ?= 2
STEP     := $(BIN)/spark-submit
SKIP     := --if-exists skip
.PHONY: pipeline
pipeline: install
	$(STEP) jobs/ingest.py --output $(PIPELINE)/ingest $(if $(LIMIT),--limit $(LIMIT)) $(SKIP)
	$(STEP) jobs/export_png.py --input $(PIPELINE)/ingest --output $(PIPELINE)/pngs --sample 12 $(SKIP)
	$(STEP) jobs/train_cnn.py --input $(PIPELINE)/pngs --output $(PIPELINE)/model --epochs $(EPOCHS) \
		--resume auto $(SKIP)
	$(STEP) jobs/predict.py --model-file $(PIPELINE)/model --input $(PIPELINE)/pngs --output $(PIPELINE)/predictions $(SKIP)
	$(STEP) jobs/transfer.py --input $(PIPELINE)/ingest --base-model $(PIPELINE)/model \
		--output $(PIPELINE)/transfer $(SKIP)

# Headless Chromium from the system's packages, for the browser test of report.html.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: cluster-demo cluster-up cluster-down
# A standalone master and two one-core workers on 127.0.0.1; runs train_cnn and transfer on them.
cluster-demo: install
	$(BIN)/python tests/standalone_cluster.py

# The same cluster, left running at spark://127.0.0.1:7077 (web UI :8080) until cluster-down.
cluster-up: install
	$(BIN)/python tests/standalone_cluster.py up

cluster-down:
	$(BIN)/python tests/standalone_cluster.py down

.PHONY: dist dist-env
# The library as a zip for spark-submit --py-files.
dist: dist/mnist_spark.zip
dist/mnist_spark.zip: $(wildcard mnist_spark/*.py mnist_spark/jobs/*.py)
	mkdir -p dist && rm -f $@
	$(PYTHON) -c "import zipfile, glob; z = zipfile.ZipFile('$@', 'w'); [z.write(f) for f in sorted(glob.glob('mnist_spark/**/*.py', recursive=True))]"

# A packed virtualenv with mnist_spark and its dependencies, for spark-submit --archives.
# Nodes need the same Python at the same path as this machine (venv-pack keeps the link to it).
dist-env: dist/mnist_spark_env.tar.gz
dist/mnist_spark_env.tar.gz: pyproject.toml $(wildcard mnist_spark/*.py mnist_spark/jobs/*.py)
	rm -rf build/env && $(PYTHON) -m venv build/env
	build/env/bin/python -m pip install --quiet --upgrade pip
	build/env/bin/python -m pip install --quiet '.[cpu]' venv-pack
	mkdir -p dist && rm -f $@
	build/env/bin/venv-pack --quiet --prefix build/env --output $@

.PHONY: browser
browser:
	command -v chromium >/dev/null || ($(SUDO) apt-get update && \
		$(SUDO) apt-get install -y --no-install-recommends chromium)

# make test, test-fast and test-connect run the test files in TEST_PROCESSES pytest processes
# (pytest-xdist), each with its own local[2] session (or Connect server, on a free port): while
# one process waits on a job it started in a subprocess, which keeps about one core busy, the
# other uses the second core. A file's tests stay in one process, so a module's fixtures (the
# standalone cluster) start once. TEST_PROCESSES=0: one process, the tests in order.
TEST_PROCESSES ?= 2
PYTEST_SPLIT   := -n $(TEST_PROCESSES) --dist loadfile

test: install browser
	$(BIN)/python -m pytest $(PYTEST_SPLIT) $(ARGS)

# The inner loop: tests without Spark (under a minute), then all but the slow, cluster and browser ones.
test-unit: install
	$(BIN)/python -m pytest -m unit $(ARGS)

test-fast: install
	$(BIN)/python -m pytest $(PYTEST_SPLIT) -m "not slow and not cluster and not browser" $(ARGS)

# The same tests on Spark Connect: the shared session is a client of a local[2] Connect server
# in the test process; the tests marked classic (they need a SparkContext) are deselected.
test-connect: install
	MNIST_SPARK_TEST_CONNECT=1 $(BIN)/python -m pytest $(PYTEST_SPLIT) -m "not slow and not cluster and not browser" $(ARGS)

# Style and types, before the tests in CI: ruff's lint and format, mypy against its baseline.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy | $(BIN)/mypy-baseline filter --no-colors

# After fixing type errors: rewrite the baseline without them (it may only shrink).
mypy-baseline: install
	$(BIN)/mypy | $(BIN)/mypy-baseline sync

bench: install
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/train_cnn.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
