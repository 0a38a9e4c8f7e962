#!/usr/bin/env bash
# Tail latency when the load generator shares the server's cores (issue 17,
# item 5): forkless with 2 workers, as it is and steering connections by CPU
# (FORKLESS_INCOMING_CPU=1, `Builder::incoming_cpu`), beside tokio
# multi-thread and the hand-written per-core server, each on cores 0-1 with
# `wrk -t2 -c128` on the same two cores, in alternating rounds; for
# forkless, how the 128 keep-alive connections split between the slots
# (from the control socket).
#
# Needs: Linux with 2 cores or more, wrk, curl, taskset; cargo to build.
#
#   apt-get install -y wrk curl && benches/uneven_load.sh [ROUNDS]
#
# UNEVEN_SLICE_NS=n (Linux 6.12 or later, python3) also runs forkless with
# a custom EEVDF slice of n ns on its worker threads (sched_setattr's
# sched_runtime for SCHED_OTHER: a shorter slice lets a woken worker
# preempt sooner), as a third server, "forkless-slice".
#
# Other settings:
# - UNEVEN_LOAD=new-connection: `loadgen -t2 -c64 --new-connection` (this
#   repo's load generator, a new connection per request) instead of wrk.
# - UNEVEN_CLIENT_CORES (default 0,1) and UNEVEN_CLIENT_THREADS (default 2):
#   where the load runs and on how many threads; `0` and `1` put all
#   connections' packets on core 0, what steering must be kept away from.
# - UNEVEN_SERVERS: the servers, in turn (default: forkless
#   forkless-steered tokio-mt per-core); any with `-steered` appended runs
#   with FORKLESS_INCOMING_CPU=1, e.g. `fl-min-steered`.
# - BENCH_WORK_US=n: every answer but forkless's `hello` (so `fl-min`,
#   forkless with the peers' handler) spins n us first: a server-bound load.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo bench --bench http_per_core --no-run 2>/dev/null
cargo build -p forkless-ctl --quiet
load=${UNEVEN_LOAD:-wrk}
[ "$load" = new-connection ] && cargo build --release -p forkless-loadgen --quiet
bench=$(ls -t target/release/deps/http_per_core-* | grep -v '\.d$' | head -1)
ctl=target/debug/forkless-ctl
client_cores=${UNEVEN_CLIENT_CORES:-0,1}
threads=${UNEVEN_CLIENT_THREADS:-2}
kinds=${UNEVEN_SERVERS:-forkless forkless-steered tokio-mt per-core}
[ -n "${UNEVEN_SLICE_NS:-}" ] && kinds="forkless forkless-slice tokio-mt"
# Runs the measured load against port $1; prints "req/s p50 p99".
measure() {
  local url="http://127.0.0.1:$1/"
  if [ "$load" = new-connection ]; then
    taskset -c "$client_cores" target/release/loadgen -t"$threads" -c64 --new-connection \
      -w2s -d8s "$url" | python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_ms"]
print(r["requests_per_sec"], "%.2fms" % l["p50"], "%.2fms" % l["p99"])'
  else
    taskset -c "$client_cores" wrk -t"$threads" -c128 -d2s "$url" >/dev/null
    taskset -c "$client_cores" wrk -t"$threads" -c128 -d8s --latency "$url" |
      awk '/Requests\/sec/{r=$2} / 50%/{a=$2} / 99%/{b=$2} END{print r, a, b}'
  fi
}
# Sets a custom slice (ns) on every thread of process $1 named forkless-w*.
set_slice() {
  python3 - "$1" "$2" <<'PY'
import ctypes, os, struct, sys
pid, ns = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
SYS_sched_setattr = 314  # x86_64
for tid in os.listdir(f"/proc/{pid}/task"):
    if not open(f"/proc/{pid}/task/{tid}/comm").read().startswith("forkless-w"):
        continue
    # struct sched_attr: size, policy (SCHED_OTHER), flags, nice, priority,
    # runtime (the slice), deadline, period
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQ", 48, 0, 0, 0, 0, ns, 0, 0))
    if libc.syscall(SYS_sched_setattr, int(tid), attr, 0) != 0:
        sys.exit(f"sched_setattr: {os.strerror(ctypes.get_errno())}")
PY
}
for round in $(seq "$rounds"); do
  i=0
  for kind in $kinds; do
    i=$((i + 1))
    port=$((21000 + round * 10 + i))
    name="uneven-$$-$round-$i"
    serve=$kind steer=0
    case $kind in
      forkless-slice) serve=forkless ;;
      *-steered) serve=${kind%-steered} steer=1 ;;
    esac
    FORKLESS_INCOMING_CPU=$steer FORKLESS_NAME=$name taskset -c 0,1 "$bench" --serve "$serve" "$port" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -s "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
    [ "$kind" = forkless-slice ] && set_slice "$pid" "$UNEVEN_SLICE_NS"
    read -r rps p50 p99 < <(measure "$port")
    split=""
    if [ "$serve" = forkless ] || [ "$serve" = fl-min ]; then
      split=$("$ctl" --name "$name" --json status |
        python3 -c 'import json,sys; print("accepted per slot:", "/".join(str(w["accepted"]) for w in json.load(sys.stdin)["workers"]))')
    fi
    printf 'round %s %-16s %10s req/s  p50 %8s  p99 %8s  %s\n' "$round" "$kind" "$rps" "$p50" "$p99" "$split"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
