#!/usr/bin/env bash
# The demo: four users decoding together.  Uses MODEL (first argument) or
# $GPT_DIR when set; otherwise makes a small built-in model with random weights
# and the real tokenizer under models/tiny.
set -eu
cd "$(dirname "$0")/.."
model=${1:-${GPT_DIR:-}}
if [ -z "$model" ]; then
    model=models/tiny
    if [ ! -f "$model/config.json" ]; then
        echo "demo: making a tiny random-weight model in $model" >&2
        rm -rf "$model"
        build/gptoss mkmodel --preset tiny --out "$model" --seed 1
    fi
    cat >&2 <<'MSG'

  NOTE: this demo runs a tiny model with RANDOM weights, so the answers below are
  meaningless text.  For real answers download gpt-oss-20b (or 120b) yourself and run
      make demo MODEL=/path/to/gpt-oss-20b     (or: export GPT_DIR=/path/to/gpt-oss-20b)

MSG
fi
exec build/gptoss generate -m "$model" --max-tokens "${DEMO_TOKENS:-64}" --temperature 0 \
    -p "How many r's in the word 'strawberry'?" \
    -p "Write a short story about space exploration" \
    -p "Explain quantum computing in simple terms" \
    -p "What are the benefits of renewable energy?"
