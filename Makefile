# Entrain — every entry point. `make help` lists them.
# Set-up is automatic: targets that need the virtualenv or the broker create/start them.

SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/services:$(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1
export PATH := $(PATH):$(HOME)/.cargo/bin
NATIVE := native/entrain_avro

.DEFAULT_GOAL := help
.PHONY: s3-up s3-down bench-media bench-music bench-attribution bench-soundfont test-cluster cluster-up cluster-down registry-up registry-down bench-ledger replay-plays chaos train generate bench-adapt bench-watermark bench-inference help venv dev-secrets bench-ingest bench-royalty crash-royalty statement up down kafka-up kafka-down kafka-status topics test test-unit test-integration lint bench-kafka demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml $(NATIVE)/Cargo.toml $(NATIVE)/Cargo.lock $(NATIVE)/pyproject.toml $(wildcard $(NATIVE)/src/*.rs)
	@command -v java >/dev/null && command -v mvn >/dev/null && command -v promtool >/dev/null && command -v docker-compose >/dev/null && command -v ffmpeg >/dev/null && command -v chromium >/dev/null || deploy/local/install-system-packages.sh
	@command -v cargo >/dev/null || { echo "make: the Avro encoder ($(NATIVE)) is Rust: install cargo (rustup) first" >&2; exit 1; }
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r requirements.lock  # the lock is complete; pyaudio is not wanted
	$(PY) -m pip install -q --no-deps ./$(NATIVE)  # builds with maturin and the crates in Cargo.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP) ## create the virtualenv and install the pinned dependencies

kafka-up: venv ## start the local single-node Kafka (KRaft) unless one answers or KAFKA_BOOTSTRAP_SERVERS is set
	$(PY) deploy/local/kafka.py up

kafka-down: venv ## stop the local Kafka (data is kept in .state/kafka)
	$(PY) deploy/local/kafka.py down

kafka-status: venv ## does the configured Kafka answer?
	$(PY) deploy/local/kafka.py status

cluster-up: venv ## start a local three-node KRaft cluster (RF 3, min ISR 2) on 127.0.0.1:29092,29094,29096
	$(PY) deploy/local/cluster.py up

cluster-down: venv ## stop the local three-node cluster (data is kept in .state/cluster)
	$(PY) deploy/local/cluster.py down

registry-up: venv ## start the local schema registry (Apicurio 3.3.3, in memory) unless ENTRAIN_SCHEMA_REGISTRY_URL is set
	$(PY) deploy/local/registry.py up

registry-down: venv ## stop the local schema registry (it forgets every schema; `make topics` registers them again)
	$(PY) deploy/local/registry.py down

s3-up: venv ## start the local S3-compatible segment store (s3proxy 4.0.0 on .state/s3) unless AWS_ENDPOINT_URL is set
	$(PY) deploy/local/s3.py up

s3-down: venv ## stop the local S3-compatible server (objects are kept in .state/s3/data)
	$(PY) deploy/local/s3.py down

topics: kafka-up registry-up ## create every topic and DLQ from schemas/ and register their schemas (idempotent)
	$(PY) -m kit.topics

dev-secrets: venv ## create local API keys and the pseudonymisation secret in .state/ingest (once)
	$(PY) deploy/local/dev_secrets.py

up: topics dev-secrets ## start Kafka, create topics, start the services (ingest on :8080)
	$(PY) deploy/local/services.py up

down: venv ## stop the services and the local Kafka
	$(PY) deploy/local/services.py down
	$(PY) deploy/local/s3.py down
	$(PY) deploy/local/registry.py down
	$(PY) deploy/local/kafka.py down

BROWSER_DEPS := tests/browser/node_modules/.package-lock.json
$(BROWSER_DEPS): tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund  # playwright-core only: it drives Debian's chromium

test: topics dev-secrets s3-up $(BROWSER_DEPS) ## install what is missing, start Kafka, the registry and the S3 server, run unit, contract and integration tests
	$(PY) -m pytest -q

test-unit: venv ## tests that need no broker
	$(PY) -m pytest -q -m "not integration"

lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check services tests bench deploy/local
	$(VENV)/bin/mypy

bench-kafka: topics ## producer/consumer throughput: raw confluent-kafka vs the kit
	$(PY) bench/bench_kafka.py

train: venv ## retrain the music model on the opt-in demo catalog (writes services/inference/model/)
	$(PY) -m inference.train

generate: venv ## render a segment: make generate BPM=128 ENERGY=0.7 MODE=major KEY=G BARS=8 SEED=1
	$(PY) -m inference.cli --bpm $(or $(BPM),120) --energy $(or $(ENERGY),0.5) --mode $(or $(MODE),major) \
	  --key $(or $(KEY),C) --bars $(or $(BARS),8) --seed $(or $(SEED),1) -o artifacts/segment.wav

bench-watermark: venv ## watermark SNR, bit accuracy and detection under the 18 attacks of #5 and one combined, false positives, speed (ARGS="--clips 10 --attacks none" for a short run)
	$(PY) bench/bench_watermark.py $(ARGS)

bench-adapt: topics dev-secrets ## adaptation delay (step change, N listeners) and one soundtrack worker's events/s
	$(PY) bench/bench_adapt.py

profile-worker: topics dev-secrets ## one soundtrack worker's events/s sampled by py-spy: where its CPU goes (about 3 minutes)
	$(PY) bench/bench_adapt.py --only-throughput --profile

bench-media: venv s3-up ## the delivered AAC stream of a real session: bandwidth, encode speed, gaplessness decoded by ffmpeg, S3 vs filesystem latency
	$(PY) bench/bench_media.py $(ARGS)

bench-music: venv ## the music from its audio against the engine before it: loudness range, joins, energy vs onsets and brightness, tempo, render speed
	$(PY) bench/bench_music.py $(ARGS)

bench-soundfont: venv ## render cost and spectrum of each General MIDI SoundFont on one session (the default's choice)
	$(PY) bench/bench_soundfont.py $(ARGS)

bench-attribution: venv ## influence weights against retraining: 12 groups of works left out x 3 seeds (~25 min)
	$(PY) bench/bench_attribution.py $(ARGS)

bench-inference: venv ## music engine real-time factor, latency and listeners per core (one core)
	$(PY) bench/bench_inference.py

chaos: topics dev-secrets ## the whole pipeline for 6 minutes under load, SIGKILLs, a broker restart and hostile input; RESULT with violations
	$(PY) -m tests.chaos.pipeline_chaos --listeners 200 --seconds 360

test-cluster: topics ## scale-out on the local three-broker cluster: 2 instances of every service, a broker and one instance of each killed, a worker added; RESULT
	$(PY) -m tests.cluster.scale_out --listeners 30 --generating 4 --seconds 180

crash-royalty: topics ## the full royalty crash test: 2 instances, 100,000 plays, 6 SIGKILLs, one broker restart
	$(PY) -m tests.chaos.royalty_crash --plays 100000 --kills 6 --instances 2

replay-plays: topics ## produce royalty's dead-lettered plays back to listener.plays.v1 (after their cause is fixed)
	$(PY) -m royalty.replay

bench-ledger: topics ## royalty's duplicate-play state: load time on assignment, extrapolated to a 30-day window
	$(PY) bench/bench_ledger_load.py

bench-royalty: topics ## royalty plays/s with transactions vs at-least-once, p99 commit time
	$(PY) bench/bench_royalty.py

statement: venv ## royalty statements for PERIOD=YYYY-MM (default: this month) with reconciliation
	$(PY) -m royalty.statement --period $(or $(PERIOD),$(shell date -u +%Y-%m))

bench-ingest: topics dev-secrets ## ingest HTTP throughput and latency vs the raw producer
	$(PY) bench/bench_ingest.py

demo: topics dev-secrets ## the whole platform with a simulated cohort; writes artifacts/demo/
	$(PY) deploy/local/demo.py

clean: ## stop the broker and delete local state (topics, data, logs)
	-$(PY) deploy/local/kafka.py down
	rm -rf .state
