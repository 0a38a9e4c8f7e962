#!/usr/bin/env bash
# Scaling on a 16-core machine: forkless, tokio multi-thread and actix-web,
# beside the hand-written per-core server, on 1, 2, 4 and 8 server cores, wrk
# on the remaining cores (up to 8 threads, 64 connections per server core).
# About 2 minutes once built: 4 sizes x 4 servers x (2 s warm-up + 5 s).
# Needs wrk and a Linux network stack (not a gVisor sandbox).
#
#   apt-get install -y wrk && benches/scaling.sh
#
# Prints one table per size; the figure to check: forkless at 8 workers is
# at least 90% of 8x its 1-worker figure.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench http_per_core --no-run
for n in 1 2 4 8; do
  echo "== $n server core(s) =="
  BENCH_SERVERS=forkless,per-core,tokio-mt,actix-web \
  BENCH_WORKERS=$n BENCH_SECS=5 BENCH_ROUNDS=1 \
    cargo bench --bench http_per_core 2>/dev/null | sed -n '/^| server/,$p'
done
