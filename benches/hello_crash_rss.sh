#!/usr/bin/env bash
# Resident memory of `hello` (2 workers) before and after N crashes.
#
#   cargo build --release --example hello
#   benches/hello_crash_rss.sh target/release/examples/hello 500
#
# Each round: GET /crash (that worker answers, then panics), then GET / until
# a worker answers again. Needs curl. Loopback only; the port is $PORT
# (18080). Run it with and without RUST_BACKTRACE=1 to see the one-time cost
# of symbolizing the first panic's backtrace.
set -euo pipefail
bin=${1:?usage: hello_crash_rss.sh HELLO_BINARY [CRASHES]}
n=${2:-500}
port=${PORT:-18080}
FORKLESS_WORKERS=2 FORKLESS_THROTTLE_DELAY=1ms FORKLESS_MAX_RESTARTS=4000000000 \
  FORKLESS_MAX_BACKOFF=10ms "$bin" --port "$port" >/dev/null 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
rss() { awk '/VmRSS/ {printf "%.1f MB", $2 / 1024}' "/proc/$pid/status"; }
threads() { awk '/Threads/ {print $2}' "/proc/$pid/status"; }
echo "start: RSS $(rss), threads $(threads)"
start=$(date +%s.%N)
for _ in $(seq "$n"); do
  curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$port/crash" || true
  for _ in $(seq 200); do curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$port/" && break; done
done
end=$(date +%s.%N)
echo "after $n crashes: RSS $(rss), threads $(threads) ($(echo "$end - $start" | bc) s)"
