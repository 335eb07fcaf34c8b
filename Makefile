# The two commands of the README. Each sets up .venv first (quick when it is already there).
PY := .venv/bin/python
SNAKEMAKE := .venv/bin/snakemake
DEMO_TARGET := results/demo/video.mp4

.PHONY: setup lock demo test clean-demo

## The venv from requirements/lock/ (TORCH_BUILD=cuda for the CUDA torch).
setup:
	@scripts/setup.sh

## Re-make requirements/lock/ from the direct dependencies in requirements/*.txt (after editing them).
lock:
	@scripts/lock.sh

## Build the demo subject end to end on the tiny profile (CPU).
demo: setup
	$(SNAKEMAKE) $(DEMO_TARGET) --cores 2 --configfile configs/tiny.yaml

## Run the test suite (tests on real clips need ../shared/data; REQUIRE_SHARED_DATA=1 makes them mandatory).
test: setup
	@scripts/setup_test_deps.sh
	$(PY) -m pytest -q

clean-demo:
	rm -rf results/demo logs/*/demo.log benchmarks/*/demo.tsv data/demo
