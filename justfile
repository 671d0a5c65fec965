# kafka-infer tasks. `just` with no arguments lists them.
set shell := ["bash", "-euo", "pipefail", "-c"]

default:
    @just --list

# Run every test (installs the tansu broker first if missing)
test *ARGS:
    scripts/test {{ARGS}}

# Criterion benchmarks: preprocessing, inference per batch size, JSON decoding
bench:
    cargo bench --bench preprocess --bench inference --bench json_decode

# Drain benchmark on a local tansu broker: real model vs pass-through (default 1,000,000 tweets)
drain-bench TWEETS="1000000":
    DRAIN_TWEETS={{TWEETS}} cargo bench --bench drain

# Retrain the model in a venv and rewrite model/ (then run `just test`: golden parity must pass).
# Plain: CV + final fit, 1-2 min; `just train --search`: hyper-parameter search first, ~20-25 min
train *ARGS:
    python3 -m venv model/.venv
    model/.venv/bin/pip install -q -r model/requirements.txt
    model/.venv/bin/python model/train.py {{ARGS}}

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

# The same stack without Docker: a local tansu broker, topics, and the worker in the background
up-local *ARGS:
    scripts/up-local {{ARGS}}

# Stop exactly what up-local started
down-local:
    scripts/down-local

# Open-loop load against whichever stack is up, e.g. `just loadgen 2000 30s` (extra flags pass through)
loadgen RATE="1000" DURATION="30s" *ARGS:
    cargo run --release -q -p loadgen -- --rate {{RATE}} --duration {{DURATION}} {{ARGS}}
