# mirpatch: every target does the set-up it needs, so a fresh clone can run `make train` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := data/demo
COVERS := data/covers
COVERS_LARGE := data/covers_large
LARGE_WORKS ?= 2000
STORES := stores
RUNS   := runs
EXP    ?= configs/experiments/demo_instrument.yaml
JOBS   ?= 2
FEATURES ?= lms cqt hcqt
# pytest workers (pytest-xdist): one per core; PYTEST_JOBS=0 runs the suite in one process
PYTEST_JOBS ?= auto
# librosa compiles its numba code at its first use and caches it in the venv: that is paid once,
# at install (beside the last pip install), not by every first run and test process after it
COMPILE := import numpy as np; from common.features import make_feature; from train.baselines \
	import beat_chroma; y = np.random.default_rng(0).standard_normal(88200).astype(np.float32); \
	make_feature("lms").compute(y); cqt = make_feature("cqt"); beat_chroma(cqt.compute(y)[:, 0], cqt)
# mirdata's dependencies but smart_open's extras (which cannot resolve with these pins)
MIRDATA_DEPS := smart_open pretty_midi Deprecated openpyxl pandas chardet

.PHONY: install demo-data cover-demo cover-large features train test bench lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,demo,jams,lightning,s3]'
	$(BIN)/pip install --quiet --no-deps -c constraints.txt mirdata
	$(BIN)/pip install --quiet -c constraints.txt $(MIRDATA_DEPS) & $(PY) -c '$(COMPILE)'; wait
	touch $(STAMP)

demo-data: $(DEMO)/demo.pyjama

$(DEMO)/demo.pyjama: $(STAMP)
	$(BIN)/precompute demo-data --out $(DEMO)

# the cover demo (200 works x 5 versions) and its CQT store, for configs/experiments/demo_cover*.yaml
cover-demo: $(COVERS)/covers.pyjama
	$(BIN)/precompute run --dataset $(COVERS)/covers.pyjama --feature cqt --stores $(STORES) --jobs $(JOBS)

$(COVERS)/covers.pyjama: $(STAMP)
	$(BIN)/precompute demo-data --cover --out $(COVERS) --jobs $(JOBS)

# the large cover set (2,000 works x 4 versions, none of the cover demo's works) and its float16
# CQT store, for configs/experiments/cover_large.yaml
cover-large: $(COVERS_LARGE)/covers.pyjama
	$(BIN)/precompute run --dataset $(COVERS_LARGE)/covers.pyjama --feature configs/features/cqt_f16.yaml --stores $(STORES) --jobs $(JOBS)

$(COVERS_LARGE)/covers.pyjama: $(STAMP)
	$(BIN)/precompute demo-data --cover --works $(LARGE_WORKS) --versions 4 --after 200 --out $(COVERS_LARGE) --jobs $(JOBS)

features: $(DEMO)/demo.pyjama
	@for f in $(FEATURES); do \
		$(BIN)/precompute run --dataset $(DEMO)/demo.pyjama --feature $$f --stores $(STORES) --jobs $(JOBS) || exit $$?; \
	done

train: features
	$(BIN)/train run --config $(EXP) --out $(RUNS)

test: $(STAMP)
	$(BIN)/pytest -q -n $(PYTEST_JOBS) --dist worksteal

# the benchmarks of the demo data (docs/BENCHMARKS.md; reads from disk need root to drop the
# page cache, and are left out without it)
bench: features
	$(PY) benchmarks/bench_precompute.py --dataset $(DEMO)/demo.pyjama
	$(PY) benchmarks/bench_reads_warm.py $$($(BIN)/precompute run --dataset $(DEMO)/demo.pyjama \
		--feature hcqt --stores $(STORES) -q | tail -n 1) --target pitchmidi
	$(PY) benchmarks/bench_reads_warm.py $$($(BIN)/precompute run --dataset $(DEMO)/demo.pyjama \
		--feature lms --stores $(STORES) -q | tail -n 1)
	if [ "$$(id -u)" = 0 ]; then $(PY) benchmarks/bench_reads_cold.py $$($(BIN)/precompute run \
		--dataset $(DEMO)/demo.pyjama --feature hcqt --stores $(STORES) -q | tail -n 1); fi
	$(PY) benchmarks/bench_rebuild.py
	$(PY) benchmarks/bench_train.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(STORES) $(RUNS) $(DEMO) $(COVERS) $(COVERS_LARGE)
