#!/usr/bin/env bash
# loadgen beside wrk: the same server measured by both, in turns, in one run.
# Needs bash, coreutils, taskset, wrk, and a DIR filled by
# `benches/scaling.sh --build DIR` (DIR/servers, DIR/loadgen).
#
#   benches/loadgen/vs_wrk.sh DIR
#
# The server (VS_SERVER, default per-core; any name `servers --serve`
# takes) on the first CPU this process may use; wrk -t1 and loadgen -t1,
# VS_CONNECTIONS (64) connections each, on the second. VS_ROUNDS (5) rounds
# of wrk then loadgen, each a VS_WARMUP (2) s run not counted, then a
# VS_SECS (10) s run measured. Prints each round's req/s, p99, the ratio
# loadgen / wrk, and the CPU time (user + system) each tool spent per
# request in its measured run, and the server's: how busy its CPU was (its
# user + system time over the run's length) and its CPU per request.
# BENCH_WORK_US=n (passed to the server) makes each answer spin n us first,
# so that the server, not the tool, is the limit: then both tools must
# measure the same req/s. VS_TOGETHER=1 runs both tools at the same time,
# half the connections each, instead of in turns: the same server at the
# same moment, so the machine's drift between two runs drops out of the
# ratio (the CPU-per-request columns are left out then).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
for tool in wrk taskset; do
  command -v "$tool" >/dev/null || { echo "vs_wrk.sh: needs $tool" >&2; exit 1; }
done
for f in servers loadgen; do
  [ -x "$dir/$f" ] || { echo "vs_wrk.sh: $dir/$f is missing (benches/scaling.sh --build $dir)" >&2; exit 1; }
done
server=${VS_SERVER:-per-core}
connections=${VS_CONNECTIONS:-64}
rounds=${VS_ROUNDS:-5}
warmup=${VS_WARMUP:-2}
secs=${VS_SECS:-10}
port=${VS_PORT:-24000}
together=${VS_TOGETHER:-0}

list=$(taskset -pc $$)
list=${list##*: }
cpus=()
IFS=',' read -ra parts <<<"$list"
for part in "${parts[@]}"; do
  if [[ $part == *-* ]]; then
    mapfile -t -O "${#cpus[@]}" cpus < <(seq "${part%-*}" "${part#*-}")
  else
    cpus+=("$part")
  fi
done
[ "${#cpus[@]}" -ge 2 ] || { echo "vs_wrk.sh: needs 2 CPUs" >&2; exit 1; }
server_cpu=${cpus[0]}
load_cpu=${cpus[1]}

while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
runtime_dir=$(mktemp -d)
XDG_RUNTIME_DIR=$runtime_dir RUST_LOG=warn taskset -c "$server_cpu" "$dir/servers" --serve "$server" "$port" >/dev/null &
server_pid=$!
hog_pid=
if [ "${VS_HOG:-0}" = 1 ]; then
  taskset -c "$server_cpu" bash -c 'while :; do :; done' &
  hog_pid=$!
fi
trap 'kill -TERM "$server_pid" $hog_pid 2>/dev/null; wait "$server_pid" 2>/dev/null; rm -rf "$runtime_dir"' EXIT
for _ in $(seq 1 500); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.02
done
url=http://127.0.0.1:$port/
if [ "$together" = 1 ]; then
  mode="both tools at once, -c$((connections / 2)) -t1 each"
else
  mode="wrk then loadgen, -c$connections -t1"
fi
echo "vs_wrk: $server server on CPU $server_cpu${hog_pid:+ beside a busy loop}, load on CPU $load_cpu, $mode, ${warmup}s warm-up + ${secs}s, $rounds rounds, $(uname -srm)"
echo
if [ "$together" = 1 ]; then
  echo "| round | wrk req/s ($((connections / 2)) connections) | loadgen req/s ($((connections / 2)) connections) | loadgen / wrk | wrk p99 ms | loadgen p99 ms | server busy | errors wrk / loadgen |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
else
echo "| round | wrk req/s | loadgen req/s | loadgen / wrk | wrk p99 ms | loadgen p99 ms | wrk CPU us/req (user+sys) | loadgen CPU us/req (user+sys) | server busy, under wrk / loadgen | server CPU us/req, under wrk / loadgen | errors wrk / loadgen |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
fi
# wrk's latency ("850.00us", "1.23ms", "1.01s": two decimals) -> ms.
to_ms() {
  local v=$1 unit n whole frac us
  unit=${v//[0-9.]/}
  n=${v%"$unit"}
  whole=${n%.*}
  frac=${n#*.}
  [ "$frac" = "$n" ] && frac=00
  frac=${frac}00
  local h=$((10#$whole * 100 + 10#${frac:0:2}))
  case $unit in
    us) us=$((h / 100)) ;;
    ms) us=$((h * 10)) ;;
    s) us=$((h * 10000)) ;;
    *) echo "?"; return ;;
  esac
  printf '%d.%03d' $((us / 1000)) $((us % 1000))
}
# Runs "$@" with its output in $out and its CPU time in $cpu_user and
# $cpu_sys (ms).
timed() {
  local t TIMEFORMAT='%3U %3S'
  { t=$( { time "$@" >"$runtime_dir/out" 2>/dev/null; } 2>&1 ); } || return 1
  out=$(<"$runtime_dir/out")
  read -r cpu_user cpu_sys <<<"$t"
  cpu_user=$((10#${cpu_user/./})) cpu_sys=$((10#${cpu_sys/./}))
}
# CPU ms and req/s -> "user+sys" in us per request.
per_request() {
  local requests=$(( ${3%%.*} * secs ))
  printf '%d.%d+%d.%d' $(( $1 * 1000 / requests )) $(( $1 * 10000 / requests % 10 )) \
    $(( $2 * 1000 / requests )) $(( $2 * 10000 / requests % 10 ))
}
# The server's CPU time so far, in clock ticks (1/100 s).
server_ticks() {
  local stat
  read -r -a stat <"/proc/$server_pid/stat"
  echo $((stat[13] + stat[14]))
}
# Ticks over the measured run -> "busy %", and with req/s -> "us/req".
server_use() {
  local ticks=$1 requests=$(( ${2%%.*} * secs ))
  busy="$((ticks / secs))%"
  per_req=$(printf '%d.%d' $((ticks * 10000 / requests)) $((ticks * 100000 / requests % 10)))
}
# wrk's output -> $wrk_rps, $wrk_p99 (ms), $wrk_errors.
parse_wrk() {
  local out=$1
  [[ $out =~ Requests/sec:\ *([0-9.]+) ]] || { echo "bad wrk output: $out" >&2; exit 1; }
  wrk_rps=${BASH_REMATCH[1]}
  [[ $out =~ \ 99%\ *([0-9.]+[a-z]+) ]] && wrk_p99=$(to_ms "${BASH_REMATCH[1]}") || wrk_p99=-
  wrk_errors=0
  [[ $out =~ Non-2xx\ or\ 3xx\ responses:\ *([0-9]+) ]] && wrk_errors=$((wrk_errors + BASH_REMATCH[1]))
  if [[ $out =~ Socket\ errors:\ connect\ ([0-9]+),\ read\ ([0-9]+),\ write\ ([0-9]+),\ timeout\ ([0-9]+) ]]; then
    wrk_errors=$((wrk_errors + BASH_REMATCH[1] + BASH_REMATCH[2] + BASH_REMATCH[3] + BASH_REMATCH[4]))
  fi
}
# loadgen's JSON -> $lg_rps, $lg_p99 (ms), $lg_errors.
parse_loadgen() {
  local json=$1 kind
  [[ $json =~ \"requests_per_sec\":([0-9.]+) ]] || { echo "bad loadgen output: $json" >&2; exit 1; }
  lg_rps=${BASH_REMATCH[1]}
  [[ $json =~ \"p99\":([0-9.]+) ]] && lg_p99=${BASH_REMATCH[1]} || lg_p99=-
  lg_errors=0
  for kind in connect read_write non_2xx timeout; do
    [[ $json =~ \"$kind\":([0-9]+) ]] && lg_errors=$((lg_errors + BASH_REMATCH[1]))
  done
}
sum_wrk=0 sum_lg=0
if [ "$together" = 1 ]; then
  # Both tools at once, half the connections each, on the load CPU: the
  # same server at the same moment. When the server is the limit it
  # shares its time between the connections alike, so a tool that
  # measures right reports the same req/s as the other.
  half=$((connections / 2))
  for round in $(seq 1 "$rounds"); do
    taskset -c "$load_cpu" wrk -t1 -c"$half" -d"${warmup}s" "$url" >/dev/null &
    wrk_pid=$!
    taskset -c "$load_cpu" "$dir/loadgen" -t1 -c"$half" -d "${warmup}s" "$url" >/dev/null &
    lg_pid=$!
    wait "$wrk_pid" "$lg_pid"
    t0=$(server_ticks)
    taskset -c "$load_cpu" wrk -t1 -c"$half" -d"${secs}s" --latency "$url" >"$runtime_dir/wrk.out" 2>/dev/null &
    wrk_pid=$!
    taskset -c "$load_cpu" "$dir/loadgen" -t1 -c"$half" -d "${secs}s" "$url" >"$runtime_dir/loadgen.out" 2>/dev/null &
    lg_pid=$!
    wait "$wrk_pid" "$lg_pid"
    ticks=$(( $(server_ticks) - t0 ))
    parse_wrk "$(<"$runtime_dir/wrk.out")"
    parse_loadgen "$(<"$runtime_dir/loadgen.out")"
    w=${wrk_rps%%.*} l=${lg_rps%%.*}
    sum_wrk=$((sum_wrk + w)) sum_lg=$((sum_lg + l))
    milli=$((l * 1000 / w))
    printf '| %d | %d | %d | %d.%03dx | %s | %s | %s%% | %d / %d |\n' "$round" "$w" "$l" \
      $((milli / 1000)) $((milli % 1000)) "$wrk_p99" "$lg_p99" $((ticks / secs)) "$wrk_errors" "$lg_errors"
  done
else
for round in $(seq 1 "$rounds"); do
  taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${warmup}s" "$url" >/dev/null
  t0=$(server_ticks)
  timed taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${secs}s" --latency "$url"
  wrk_ticks=$(( $(server_ticks) - t0 ))
  wrk_cpu_user=$cpu_user wrk_cpu_sys=$cpu_sys
  parse_wrk "$out"
  taskset -c "$load_cpu" "$dir/loadgen" -t1 -c"$connections" -d "${warmup}s" "$url" >/dev/null
  t0=$(server_ticks)
  timed taskset -c "$load_cpu" "$dir/loadgen" -t1 -c"$connections" -d "${secs}s" "$url"
  lg_ticks=$(( $(server_ticks) - t0 ))
  parse_loadgen "$out"
  w=${wrk_rps%%.*} l=${lg_rps%%.*}
  sum_wrk=$((sum_wrk + w)) sum_lg=$((sum_lg + l))
  milli=$((l * 1000 / w))
  server_use "$wrk_ticks" "$w"
  wrk_busy=$busy wrk_per_req=$per_req
  server_use "$lg_ticks" "$l"
  printf '| %d | %d | %d | %d.%03dx | %s | %s | %s | %s | %s / %s | %s / %s | %d / %d |\n' "$round" "$w" "$l" \
    $((milli / 1000)) $((milli % 1000)) "$wrk_p99" "$lg_p99" \
    "$(per_request "$wrk_cpu_user" "$wrk_cpu_sys" "$w")" \
    "$(per_request "$cpu_user" "$cpu_sys" "$l")" "$wrk_busy" "$busy" "$wrk_per_req" "$per_req" \
    "$wrk_errors" "$lg_errors"
done
fi
milli=$((sum_lg * 1000 / sum_wrk))
printf '\nall rounds: wrk %d req/s, loadgen %d req/s (means), loadgen / wrk %d.%03dx\n' \
  $((sum_wrk / rounds)) $((sum_lg / rounds)) $((milli / 1000)) $((milli % 1000))
