#!/usr/bin/env bash
# Scaling across cores: forkless, tokio multi-thread and actix-web beside the
# hand-written per-core server, on 1, 2, 4 and 8 server cores, the load on
# the remaining cores. Three modes; what each needs:
#
#   benches/scaling.sh --build DIR     needs cargo and strip (binutils), here.
#       Builds, in release, stripped, into DIR (under 64 MiB, checked):
#       DIR/servers (the http_per_core bench binary, which serves any of the
#       four with `--serve NAME PORT`), DIR/loadgen (benches/loadgen) and a
#       copy of this script.
#   DIR/scaling.sh --prebuilt DIR      needs only bash, coreutils and taskset
#       (util-linux): no cargo, no wrk, no compiler. For each size N that
#       leaves a core for the load: the server on the first N cores the
#       process may use (taskset), loadgen on the others (one pinned thread
#       per core, 64 connections per server core, 2 s warm-up, 5 s
#       measured). Prints req/s and p99 per server, how busy the server's
#       cores were (its CPU time over the run; well under 100% means the
#       load generator was the limit, and the table says so), and each
#       one's ratio to the per-core server. About 2 minutes on 16 cores.
#   benches/scaling.sh                 (the original mode) needs cargo and wrk:
#       the http_per_core bench with BENCH_WORKERS=N (clamped to the cores
#       minus one), wrk as the load.
#
# Settings (--prebuilt), in the environment: SCALING_SIZES (default
# "1 2 4 8"), SCALING_SECS (5), SCALING_WARMUP (2), SCALING_SERVERS
# (default "per-core forkless tokio-mt actix-web"; per-core first, the
# baseline), SCALING_PORT (first port, 23000).
#
# The load generator needs more CPU per request than a server: where the
# load cores are fewer than, or as many as, the server cores, the load may be
# what limits, and every server then shows the same figure. The figures are
# the network stack's as much as the servers': on a sandbox's stack (gVisor)
# they are not Linux's; say which beside them.
set -euo pipefail

usage() {
  echo "usage: $0 [--build DIR | --prebuilt DIR]" >&2
  exit 2
}

build() {
  local dir=$1
  command -v cargo >/dev/null || { echo "scaling.sh --build: needs cargo" >&2; exit 1; }
  command -v strip >/dev/null || { echo "scaling.sh --build: needs strip (binutils)" >&2; exit 1; }
  local script
  script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  cd "$(dirname "$0")/.."
  local exe
  exe=$(cargo bench --bench http_per_core --no-run --message-format=json \
    | grep -o '"executable":"[^"]*http_per_core[^"]*"' | tail -n1 | cut -d'"' -f4)
  [ -x "$exe" ] || { echo "scaling.sh --build: no http_per_core bench binary" >&2; exit 1; }
  cargo build --release -p forkless-loadgen
  cp "$exe" "$dir/servers"
  cp target/release/loadgen "$dir/loadgen"
  cp "$script" "$dir/scaling.sh"
  strip "$dir/servers" "$dir/loadgen"
  local mib
  mib=$(du -sm "$dir" | cut -f1)
  du -sh "$dir"/*
  if [ "$mib" -gt 64 ]; then
    echo "scaling.sh --build: $dir is $mib MiB, over 64" >&2
    exit 1
  fi
  echo "$dir: $mib MiB. Run: $dir/scaling.sh --prebuilt $dir"
}

# The CPUs this process may run on, one per line, from `taskset -p`.
allowed_cpus() {
  local list part
  list=$(taskset -pc $$)
  list=${list##*: }
  IFS=',' read -ra parts <<<"$list"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
      seq "${part%-*}" "${part#*-}"
    else
      echo "$part"
    fi
  done
}

# Waits (10 s at most) until something accepts on 127.0.0.1:$1, while
# process $2 runs.
wait_listening() {
  local i
  for i in $(seq 1 500); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.02
  done
  return 1
}

# Exits with a message unless $2 is a whole number from $3 to $4.
check_number() {
  if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$((10#$2))" -lt "$3" ] || [ "$((10#$2))" -gt "$4" ]; then
    echo "scaling.sh: $1 must be a whole number from $3 to $4, not '$2'" >&2
    exit 2
  fi
}

# The server running now, stopped on exit; the --prebuilt run's temporary
# directory (the forkless server's control socket).
server_pid=
runtime_dir=

# "123456.7" -> "123456"
int() { echo "${1%%.*}"; }

# A process's CPU time so far (user + system, all threads), in clock ticks.
cpu_ticks() {
  local stat
  read -r -a stat <"/proc/$1/stat"
  echo $((stat[13] + stat[14]))
}

prebuilt() {
  local dir=$1
  local clk_tck
  clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)
  for f in servers loadgen; do
    [ -x "$dir/$f" ] || { echo "scaling.sh: $dir/$f is missing (run --build first)" >&2; exit 1; }
  done
  command -v taskset >/dev/null || { echo "scaling.sh: needs taskset (util-linux)" >&2; exit 1; }
  local sizes=${SCALING_SIZES:-1 2 4 8}
  local secs=${SCALING_SECS:-5}
  local warmup=${SCALING_WARMUP:-2}
  local servers=${SCALING_SERVERS:-per-core forkless tokio-mt actix-web}
  local port=${SCALING_PORT:-23000}
  local n name
  for n in $sizes; do check_number "SCALING_SIZES" "$n" 1 4096; done
  [ -n "${sizes// /}" ] || { echo "scaling.sh: SCALING_SIZES is empty" >&2; exit 2; }
  check_number SCALING_SECS "$secs" 1 3600
  check_number SCALING_WARMUP "$warmup" 0 3600
  check_number SCALING_PORT "$port" 1024 60000
  for name in $servers; do
    case $name in
      per-core | forkless | tokio-mt | actix-web | fl-min | fl-sel) ;;
      *)
        echo "scaling.sh: SCALING_SERVERS: unknown server '$name' (per-core forkless tokio-mt actix-web)" >&2
        exit 2
        ;;
    esac
  done
  [ -n "${servers// /}" ] || { echo "scaling.sh: SCALING_SERVERS is empty" >&2; exit 2; }
  local cpus
  mapfile -t cpus < <(allowed_cpus)
  runtime_dir=$(mktemp -d)
  trap 'if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null; fi; rm -rf "$runtime_dir"' EXIT
  echo "scaling: ${#cpus[@]} CPUs (${cpus[*]}), $(uname -srm), ${secs}s measured after ${warmup}s warm-up"
  for n in $sizes; do
    if [ "$n" -ge "${#cpus[@]}" ]; then
      echo "== $n server core(s): skipped, needs $((n + 1)) CPUs =="
      continue
    fi
    local server_cores load_cores threads connections
    server_cores=$(IFS=,; echo "${cpus[*]:0:n}")
    load_cores=$(IFS=,; echo "${cpus[*]:n}")
    threads=$((${#cpus[@]} - n))
    connections=$((64 * n))
    if [ "$threads" -gt "$connections" ]; then threads=$connections; fi
    echo "== $n server core(s) ($server_cores), loadgen -t$threads -c$connections on $load_cores =="
    local names=() rps=() p99=() errors=() busy=()
    for name in $servers; do
      port=$((port + 1))
      while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
      XDG_RUNTIME_DIR=$runtime_dir RUST_LOG=warn \
        taskset -c "$server_cores" "$dir/servers" --serve "$name" "$port" >/dev/null &
      server_pid=$!
      if ! wait_listening "$port" "$server_pid"; then
        echo "scaling.sh: $name did not start listening on $port" >&2
        exit 1
      fi
      local json t0 ticks
      t0=$(cpu_ticks "$server_pid")
      json=$(taskset -c "$load_cores" "$dir/loadgen" -c "$connections" -t "$threads" \
        --cores "$load_cores" -w "${warmup}s" -d "${secs}s" "http://127.0.0.1:$port/")
      ticks=$(( $(cpu_ticks "$server_pid") - t0 ))
      # The server's CPU over the run (warm-up included), as a share of its
      # cores: well under 100%, the load generator was the limit.
      local b=$(( ticks * 100 / (clk_tck * (warmup + secs) * n) ))
      kill -TERM "$server_pid"
      wait "$server_pid" || true
      server_pid=
      [[ $json =~ \"requests_per_sec\":([0-9.]+) ]] || { echo "bad loadgen output: $json" >&2; exit 1; }
      local r=${BASH_REMATCH[1]}
      local p="-"
      [[ $json =~ \"p99\":([0-9.]+) ]] && p=${BASH_REMATCH[1]}
      local e=0 kind
      for kind in connect read_write non_2xx timeout; do
        [[ $json =~ \"$kind\":([0-9]+) ]] && e=$((e + BASH_REMATCH[1]))
      done
      names+=("$name"); rps+=("$r"); p99+=("$p"); errors+=("$e"); busy+=("$b")
      echo "  $name: $r req/s, p99 $p ms, $e errors, server CPU $b% of its cores"
    done
    local base=0 i
    for i in "${!names[@]}"; do
      [ "${names[$i]}" = per-core ] && base=$(int "${rps[$i]}")
    done
    echo
    echo "| server | req/s | p99 ms | errors | server CPU busy | vs per-core |"
    echo "|---|---:|---:|---:|---:|---:|"
    for i in "${!names[@]}"; do
      local ratio="-"
      if [ "$base" -gt 0 ]; then
        local milli=$(( $(int "${rps[$i]}") * 1000 / base ))
        ratio=$(printf '%d.%03dx' $((milli / 1000)) $((milli % 1000)))
      fi
      echo "| ${names[$i]} | $(int "${rps[$i]}") | ${p99[$i]} | ${errors[$i]} | ${busy[$i]}% | $ratio |"
    done
    echo
    for i in "${!busy[@]}"; do
      if [ "${busy[$i]}" -lt 90 ]; then
        echo "(a server under 90% busy: loadgen, not the server, may have been the limit at this size)"
        break
      fi
    done
    echo
  done
}

case "${1:-}" in
  --build) [ $# -eq 2 ] || usage; build "$2" ;;
  --prebuilt) [ $# -eq 2 ] || usage; prebuilt "$2" ;;
  "")
    # The first mode: cargo and wrk.
    cd "$(dirname "$0")/.."
    cargo bench --bench http_per_core --no-run
    for n in 1 2 4 8; do
      echo "== $n server core(s) =="
      BENCH_SERVERS=forkless,per-core,tokio-mt,actix-web \
      BENCH_WORKERS=$n BENCH_SECS=5 BENCH_ROUNDS=1 \
        cargo bench --bench http_per_core 2>/dev/null | sed -n '/^| server/,$p'
    done
    ;;
  *) usage ;;
esac
