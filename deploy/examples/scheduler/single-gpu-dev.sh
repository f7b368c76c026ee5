#!/bin/sh
# Seed 000, Example 1: single GPU development (command-line flags only).
exec infermesh-scheduler \
  --model-path /models/llama3-8b \
  --total-blocks 1000 \
  --max-batch-size 64 \
  --log-level debug \
  "$@"
