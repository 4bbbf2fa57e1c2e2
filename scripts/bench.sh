#!/usr/bin/env bash
# Side-by-side benchmark of our Rust approvals service and the ADR v1 FastAPI peer.
#
# In one run: builds `approvals` and `approvals-bench` (release), then for each target in turn
# (never both at once, so they do not compete for the cores) starts a private redis-server on a
# free loopback port, the target itself on another, reading one generated config TOML, drives
# the same load at it with target/release/approvals-bench (lean raw-socket HTTP/1.1 clients),
# and stops everything. Per target:
#   commands       Redis commands sent per submit, accept and read (MONITOR, scripts' own
#                  commands excluded, the background loops' idle rate subtracted)
#   submit, submit-decide, read
#                  closed-loop throughput, p50/p99, and the cores Redis, the target and the load
#                  generator used (so the bound shows), Redis CPU per 1,000 requests
#   submit-paced   submits at half of the measured submit throughput (open loop): p99 there
#   wakeup         decision -> waiting agent latency, BENCH_WAITERS long-polls on as many
#                  approvals, timed at the first response byte
#   fanout         (ours) BENCH_FANOUT long-polls on one approval, one accept: time to the last
#                  answer (waiters keep their connections until all are answered), memory per
#                  waiting long-poll, Redis connections held while waiting
#   fanout-h2      (ours, floor) the same, the long-polls as streams of BENCH_FANOUT_H2_CONNECTIONS
#                  HTTP/2 connections (prior knowledge), as a proxy or an HTTP/2 client sends them
# Target `floor` (approvals-floor, bench/src/bin/floor.rs) runs only wakeup and fanout against
# the same HTTP stack with nothing of ours in it: the floor this machine and client allow.
# Targets `ours-rules100` and `ours-shadow` run ours with the tenant's own 100-rule bundle
# active, or the default active and that bundle as the candidate (shadow evaluation), uploaded
# with `approvals policy push` after start: a policy table compares their submit throughput
# with the default bundle's in the same run (e.g. BENCH_TARGETS="ours ours-rules100
# ours-shadow" BENCH_SCENARIOS=submit). `ours-rules100-inproc` and `ours-shadow-inproc` do the
# same with `policy.sandbox.enabled = false` (tenants' bundles in the service's own process):
# what the sandbox costs, in the same run.
# then, with BENCH_SCALE (e.g. "1 2 4"), submit throughput of 1, 2, 4 instances of ours on one
# Redis. Ends with summary tables (ratios against the peer) and the issue's targets. All
# children are stopped on exit, including Ctrl-C, within a bounded time.
#
# Usage: scripts/bench.sh
# Environment (all optional):
#   BENCH_SECS=10          measured seconds per throughput scenario (after BENCH_WARMUP)
#   BENCH_WARMUP=1         warm-up seconds per throughput scenario, not counted
#   BENCH_CONCURRENCY=64   closed-loop workers (connections) per throughput scenario
#   BENCH_WAITERS=200      long-polls in the wake-up scenario
#   BENCH_FANOUT=10000     long-polls on one approval in the fan-out scenarios (0: skip)
#   BENCH_FANOUT_H2_CONNECTIONS=40   HTTP/2 connections carrying them in fanout-h2 (at most
#                          server.max_streams_per_connection, 256, streams each)
#   BENCH_SCALE=""         instance counts for the scale-out runs, e.g. "1 2 4" (ours only)
#   BENCH_TARGETS="ours peer"   which targets to run, in order
#   BENCH_SCENARIOS=""     only these scenarios (e.g. "submit submit-paced fanout"); default all
#   BENCH_ROUNDS=1         repeat the targets this often, even rounds in reverse order; the
#                          summary shows medians (use an even count for ratios)
#   BENCH_THREADS=1        worker threads of the load generator
#   PEER_DIR=<repo>/../shared/peers/adr_fastapi   the ADR peer (run.sh, app.py)
#   BENCH_PEER_WORKERS=2   uvicorn workers of the peer (passed to its run.sh as WORKERS; set
#                          here, not inherited from a WORKERS the caller's shell may hold)
#   BENCH_KEEP=1           keep the temp dir (configs, logs, RESULT lines) after a good run
#   BENCH_STRICT=1         exit 1 when a target of the issue is missed
#   BENCH_ADOPT_INTERVAL=1h    ours' approvals.adopt_interval: how often it scans approval:* for
#                          ADR v1 records (none here; the runs leave ~300,000 of ours). 1h, as
#                          the README advises once no v1 service writes; 10s is the default
#   BENCH_BUILD=0          skip the cargo build and use the release binaries already built
#   BENCH_RESULTS=file     print only the summary of a kept run's results.txt (no build, no run)
#   BENCH_BEFORE_BIN=path  an earlier build's `approvals` binary: adds the target `before` (run
#                          exactly like `ours`) and a before/after table, to show what a change
#                          did to throughput in the same run
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEER_DIR=${PEER_DIR:-$(dirname "$repo")/shared/peers/adr_fastapi}
BENCH_SECS=${BENCH_SECS:-10}
BENCH_WARMUP=${BENCH_WARMUP:-1}
BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-64}
BENCH_WAITERS=${BENCH_WAITERS:-200}
BENCH_FANOUT=${BENCH_FANOUT:-10000}
BENCH_FANOUT_H2_CONNECTIONS=${BENCH_FANOUT_H2_CONNECTIONS:-40}
BENCH_SCALE=${BENCH_SCALE:-}
export BENCH_THREADS=${BENCH_THREADS:-1}
BENCH_PEER_WORKERS=${BENCH_PEER_WORKERS:-2}
# The peer's run.sh reads WORKERS: set from here, so a WORKERS in the caller's shell cannot
# change the denominator of every ratio unseen.
export WORKERS=$BENCH_PEER_WORKERS
BENCH_TARGETS=${BENCH_TARGETS:-ours peer}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_BUILD=${BENCH_BUILD:-1}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
BENCH_ADOPT_INTERVAL=${BENCH_ADOPT_INTERVAL:-1h}
if [ -n "${BENCH_BEFORE_BIN:-}" ]; then
  case " $BENCH_TARGETS " in *" before "*) ;; *) BENCH_TARGETS="before $BENCH_TARGETS" ;; esac
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}
tenant=bench

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench.sh: %s\n' "$*" >&2; exit 1; }

for tool in cargo redis-server redis-cli curl python3 sha256sum setsid; do
  command -v "$tool" >/dev/null || die "needs $tool on PATH"
done
for target in $BENCH_TARGETS; do
  case $target in
    ours | ours-rules100 | ours-shadow | ours-rules100-inproc | ours-shadow-inproc | floor) ;;
    peer) [ -x "$PEER_DIR/run.sh" ] || die "no ADR peer at $PEER_DIR (set PEER_DIR)" ;;
    before) [ -x "${BENCH_BEFORE_BIN:-}" ] || die "target 'before' needs BENCH_BEFORE_BIN" ;;
    *) die "unknown target '$target' in BENCH_TARGETS (ours, ours-rules100, ours-shadow, ours-rules100-inproc, ours-shadow-inproc, peer, before, floor)" ;;
  esac
done

# The generated config file is the whole configuration: no APPROVALS_* variable of the caller
# may change (or, being unknown, break) the service under test.
while IFS= read -r var; do
  case $var in APPROVALS_*) unset "$var" ;; esac
done < <(compgen -e)
unset RUST_LOG

work=$(mktemp -d "${TMPDIR:-/tmp}/approvals-bench.XXXXXX")
results="$work/results.txt"
: >"$results"

# Children run in their own process groups (setsid), so stopping one stops what it spawned
# (uvicorn's workers). `live` holds the ones not yet stopped.
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
  local pid
  for pid in "${live[@]}"; do stop_group "$pid"; done
  if [ "$rc" -eq 0 ] && [ "$BENCH_KEEP" != 1 ]; then
    rm -rf "$work"
  else
    printf 'bench.sh: configs and logs kept in %s\n' "$work" >&2
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
sha256_hex() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
toml_string() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

# --- build -----------------------------------------------------------------------------------
packages=(-p approvals-bench)
# Every target but the peer and the floor runs this build's `approvals` (the bundle targets
# push with it too, and so does a scale-out run): built whenever one is asked for.
uses_ours=0
for target in $BENCH_TARGETS; do
  case $target in ours*) uses_ours=1 ;; esac
done
[ -n "$BENCH_SCALE" ] && uses_ours=1
[ "$uses_ours" = 1 ] && packages+=(-p approvals)
if [ "$BENCH_BUILD" = 1 ] && [ -z "${BENCH_RESULTS:-}" ]; then
  say "cargo build --release ${packages[*]}"
  (cd "$repo" && cargo build --release "${packages[@]}")
fi
bench_bin="$target_dir/release/approvals-bench"
floor_bin="$target_dir/release/approvals-floor"
approvals_bin="$target_dir/release/approvals"
if [ "$uses_ours" = 1 ] && [ -z "${BENCH_RESULTS:-}" ]; then
  "$approvals_bin" serve --help >/dev/null 2>&1 ||
    die "$approvals_bin has no 'serve' command yet (run only the peer with BENCH_TARGETS=peer)"
fi

# --- tokens: random each run, configured by digest only --------------------------------------
agent_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
reviewer_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
admin_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
export BENCH_AGENT_TOKEN=$agent_token BENCH_REVIEWER_TOKEN=$reviewer_token BENCH_TENANT=$tenant

# One config format for both: the peer reads server.listen, redis.url, approvals.* and
# [[auth.tokens]] with tomllib and ignores the rest ([policy], [log]).
write_config() { # file http_port redis_port
  cat >"$1" <<EOF
# Written by scripts/bench.sh for one benchmark target; read by the Rust service and the ADR peer.
[server]
listen = "127.0.0.1:$2"
# Room for the fan-out scenario's long-polls (one token's long-polls and requests at most
# half of it, or start-up warns).
max_connections = 25000

[redis]
url = "redis://127.0.0.1:$3/0"

[approvals]
default_ttl = "1h"
# A throughput run parks hundreds of thousands of approvals in one tenant: no quota here.
max_pending_per_tenant = 1000000000
# How often adoption passes scan approval:* for ADR v1 records (BENCH_ADOPT_INTERVAL): no
# ADR v1 service writes here.
adopt_interval = "$BENCH_ADOPT_INTERVAL"

[limits]
# The fan-out scenario waits 10,000 times with one token.
max_long_polls_per_caller = 12000

[policy]
dir = $(toml_string "$repo/policies")

[log]
filter = "warn"

[[auth.tokens]]
subject = "bench-agent"
tenant = "$tenant"
role = "agent"
sha256 = "$(sha256_hex "$agent_token")"

[[auth.tokens]]
subject = "bench-reviewer"
tenant = "$tenant"
role = "reviewer"
sha256 = "$(sha256_hex "$reviewer_token")"

[[auth.tokens]]
subject = "bench-admin"
tenant = "$tenant"
role = "admin"
sha256 = "$(sha256_hex "$admin_token")"
EOF
}

# A tenant bundle of 100 rules, each a condition on the action (50 that would hold it, 49 that
# would deny it, one that holds finance reads): the benchmark's submits run all 100 bodies and
# still end in require_approval, as with the default bundle. With one test of its own.
write_bundle100() { # dir
  mkdir -p "$1"
  python3 - "$1" <<'PY'
import sys, pathlib
out = pathlib.Path(sys.argv[1])
rules = []
for n in range(50):
    rules.append(f'held contains "rule {n:03}: under zone-{n:03}/" if startswith(input.action.resource, "zone-{n:03}/")')
for n in range(50, 99):
    rules.append(f'denied contains "rule {n:03}: type op_{n:03}" if input.action.type == "op_{n:03}"')
rules.append('held contains "rule 099: finance data needs a human" if contains(input.action.resource, "finance")')
(out / "approvals.rego").write_text("""package approvals
import rego.v1

default decision := {"decision": "require_approval", "reasons": ["rules100: nothing matched; held"]}

decision := {"decision": "deny", "reasons": sort(denied)} if count(denied) > 0

decision := {"decision": "require_approval", "reasons": sort(held)} if {
\tcount(denied) == 0
\tcount(held) > 0
}

""" + "\n".join(rules) + "\n")
(out / "approvals_test.rego").write_text("""package approvals_test
import rego.v1

test_finance_reads_are_held if {
\td := data.approvals.decision with input as {"action": {"type": "document_read", "resource": "finance/q3"}}
\td.decision == "require_approval"
}
""")
PY
}

# --- one target: redis, server, the scenarios, stop ------------------------------------------
start_redis() { # dir -> sets redis_port, redis_pid
  redis_port=$(free_port)
  say "redis-server on 127.0.0.1:$redis_port"
  spawn "$1/redis.out" redis-server --bind 127.0.0.1 --port "$redis_port" --save "" \
    --appendonly no --dir "$1" --logfile "$1/redis.log" --maxclients 20000
  redis_pid=$spawned
  wait_until "$redis_pid" 10 "$1/redis.log" "redis-server" redis_ok "$redis_port"
}

start_ours() { # bin config log url -> sets server_pid
  say "$1 serve on $4"
  spawn "$3" "$1" serve --config "$2"
  server_pid=$spawned
  # Ready, not only alive: an instance answers submits once it has read the tenants' policies.
  wait_until "$server_pid" 60 "$3" "approvals serve" http_ok "$4/readyz"
}

# Whether scenario $1 is to run (BENCH_SCENARIOS, default all).
wants() { [ -z "${BENCH_SCENARIOS:-}" ] || [[ " $BENCH_SCENARIOS " == *" $1 "* ]]; }

# A RESULT field of the last line of scenario $2 for target $1.
result_field() {
  { grep "^RESULT target=$1 scenario=$2 " "$results" || true; } | tail -n 1 | tr ' ' '\n' | sed -n "s/^$3=//p"
}

run_target() {
  local target=$1 dir="$work/$1"
  mkdir -p "$dir"
  local http_port redis_port redis_pid server_pid
  http_port=$(free_port)
  start_redis "$dir"
  local config="$dir/config.toml"
  write_config "$config" "$http_port" "$redis_port"
  case $target in
    *-inproc) printf '\n[policy.sandbox]\nenabled = false\n' >>"$config" ;;
  esac
  # A build from before the per-caller limits refuses their section: leave it out there.
  if [ "$target" = before ] && ! grep -qa max_long_polls_per_caller "$BENCH_BEFORE_BIN"; then
    sed -i '/^\[limits\]/,/^$/d' "$config"
  fi

  local url="http://127.0.0.1:$http_port"
  # Starts the target's server (again, for a scenario that needs a fresh process).
  start_target() {
    case $target in
      ours | before | ours-rules100 | ours-shadow | ours-rules100-inproc | ours-shadow-inproc)
        local bin=$approvals_bin
        [ "$target" = before ] && bin=$BENCH_BEFORE_BIN
        start_ours "$bin" "$config" "$dir/server.log" "$url"
        if [ "$target" != ours ] && [ "$target" != before ]; then
          local how=--activate
          case $target in ours-shadow*) how=--candidate ;; esac
          write_bundle100 "$dir/bundle100"
          say "$target: approvals policy push $how (100-rule bundle)"
          APPROVALS_TOKEN=$admin_token "$approvals_bin" policy push --tenant "$tenant" --url "$url" \
            $how "$dir/bundle100" >&2 || die "$target: policy push failed"
        fi
        ;;
      floor)
        say "approvals-floor on $url"
        spawn "$dir/server.log" "$floor_bin" --listen "127.0.0.1:$http_port"
        server_pid=$spawned
        wait_until "$server_pid" 30 "$dir/server.log" "approvals-floor" http_ok "$url/healthz"
        ;;
      peer)
        # The first run creates the peer's virtualenv (pip install), hence the long wait.
        say "peer: $PEER_DIR/run.sh on $url, $WORKERS uvicorn workers"
        spawn "$dir/server.log" "$PEER_DIR/run.sh" "$config"
        server_pid=$spawned
        wait_until "$server_pid" 300 "$dir/server.log" "ADR peer" http_ok "$url/readyz"
        ;;
    esac
  }
  start_target

  # A failed scenario (its reason is on stderr) does not stop the others; the exit status says.
  local bench=("$bench_bin" --target "$target" --url "$url" --pgid "$server_pid") scenario
  # The floor has no Redis: nothing to count there.
  [ "$target" = floor ] || bench+=(--redis "127.0.0.1:$redis_port")
  local load=(--duration "${BENCH_SECS}s" --warmup "${BENCH_WARMUP}s" --concurrency "$BENCH_CONCURRENCY")
  scenario_run() {
    run_child "${bench[@]}" "$@" >>"$results" || {
      say "$target: scenario $1 failed"
      failed=1
    }
  }
  # The floor answers only the long-poll scenarios.
  if [ "$target" != floor ]; then
    if wants commands; then scenario_run commands --ops 1000 --idle 5s; fi
    for scenario in submit submit-decide read; do
      if wants "$scenario"; then scenario_run "$scenario" "${load[@]}"; fi
    done
  fi
  local max_rate
  max_rate=$(result_field "$target" submit ops_per_sec)
  if wants submit-paced && [ -n "$max_rate" ]; then
    scenario_run submit "${load[@]}" --rate "$(awk -v r="$max_rate" 'BEGIN { printf "%.0f", r / 2 }')"
  fi
  if wants wakeup; then scenario_run wakeup --waiters "$BENCH_WAITERS"; fi
  if wants fanout && [ "$target" != peer ] && [ "$BENCH_FANOUT" -gt 0 ]; then
    # A fresh process here too: one that served the throughput scenarios keeps memory
    # resident for reuse, and the waiters would seem to cost less than they do (the floor,
    # which ran only the wake-up, would not be compared like for like).
    if [ "$target" != floor ]; then
      stop_group "$server_pid"
      start_target
      bench[4]=$url bench[6]=$server_pid
    fi
    scenario_run fanout --waiters "$BENCH_FANOUT"
  fi
  # The peer speaks only HTTP/1.1. A fresh process: one that served the HTTP/1.1 fan-out
  # keeps that memory resident for reuse, and the new waiters would seem to cost nothing.
  if wants fanout-h2 && [ "$target" != peer ] && [ "$BENCH_FANOUT" -gt 0 ]; then
    if wants fanout; then
      stop_group "$server_pid"
      start_target
      bench[4]=$url bench[6]=$server_pid
    fi
    scenario_run fanout --waiters "$BENCH_FANOUT" --http2-connections "$BENCH_FANOUT_H2_CONNECTIONS"
  fi

  stop_group "$server_pid"
  stop_group "$redis_pid"
}

# N instances of ours on one Redis, submits spread over them.
run_scale() {
  local n=$1 dir="$work/scale-$1" i
  mkdir -p "$dir"
  local redis_port redis_pid server_pid urls=() pgids=()
  start_redis "$dir"
  for ((i = 1; i <= n; i++)); do
    local port
    port=$(free_port)
    write_config "$dir/config-$i.toml" "$port" "$redis_port"
    start_ours "$approvals_bin" "$dir/config-$i.toml" "$dir/server-$i.log" "http://127.0.0.1:$port"
    urls+=("http://127.0.0.1:$port")
    pgids+=("$server_pid")
  done
  local IFS=,
  run_child "$bench_bin" --target "scale-$n" --url "${urls[*]}" --redis "127.0.0.1:$redis_port" \
    --pgid "${pgids[*]}" submit --duration "${BENCH_SECS}s" --warmup "${BENCH_WARMUP}s" \
    --concurrency "$BENCH_CONCURRENCY" >>"$results" || failed=1
  unset IFS
  for server_pid in "${pgids[@]}"; do stop_group "$server_pid"; done
  stop_group "$redis_pid"
}

# One submit run of ours whose results go nowhere (bash scoping: run_target sees this local).
warm_up() {
  local results="$work/warm-up.txt"
  BENCH_SCENARIOS=submit run_target ours
}

run_all() {
  # The fan-out scenario holds one socket per long-poll on both sides.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  say "$(redis-server --version | cut -d' ' -f1-3)"
  say "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); ${BENCH_ROUNDS} round(s) of: ${BENCH_SECS}s x ${BENCH_CONCURRENCY} workers per throughput scenario, ${BENCH_WAITERS} waiters, fan-out ${BENCH_FANOUT}"
  local round target n
  # The first measured run of a fresh machine came out ~40% slow, every time, whatever the
  # target: a discarded submit run warms the machine up first.
  # (Only before throughput scenarios, which are what it distorts.)
  if [[ " $BENCH_TARGETS " == *" ours "* ]] && { wants submit || wants submit-decide || wants read; }; then
    say "warm-up (discarded)"
    warm_up
  fi
  # Even rounds run the targets in reverse: a target's place in the round moved throughput by
  # up to a third on this machine (docs/performance.md), always in the same direction when the
  # order was fixed. Use an even BENCH_ROUNDS for ratios.
  local order
  for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    order=$BENCH_TARGETS
    if ((round % 2 == 0)); then
      order=$(printf '%s\n' $BENCH_TARGETS | tac | tr '\n' ' ')
    fi
    ((BENCH_ROUNDS == 1)) || say "round $round of $BENCH_ROUNDS: $order"
    for target in $order; do
      run_target "$target"
    done
  done
  for n in $BENCH_SCALE; do
    run_scale "$n"
  done
}

failed=0
if [ -n "${BENCH_RESULTS:-}" ]; then
  # Only the summary, of a kept run's RESULT lines.
  cp "$BENCH_RESULTS" "$results"
else
  run_all
fi

# --- summary: medians over the rounds ------------------------------------------------------
echo
cat "$results"
echo
awk -v cores="$(nproc)" -v loadavg="$(cut -d' ' -f1-3 /proc/loadavg)" -v strict="$BENCH_STRICT" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return "-"
    for (i = 2; i <= n; i++) {
      t = a[i] + 0
      for (j = i - 1; j > 0 && a[j] + 0 > t; j--) a[j + 1] = a[j]
      a[j + 1] = t
    }
    return (n % 2) ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function med(key, field) { return ((key, field) in vals) ? median(vals[key, field]) : "-" }
  function fmt(v, spec) { return v == "-" ? "-" : sprintf(spec, v) }
  function per_op(cores, ops) { return (cores == "-" || ops == "-" || ops == 0) ? "-" : cores * 1e6 / ops }
  function ratio(a, b) { return (a == "-" || b == "-" || b + 0 == 0) ? "-" : sprintf("%.2fx", a / b) }
  function target(name, cond, shown) {
    printf "target: %-58s %s (%s)\n", name, cond ? "MET" : "MISSED", shown
    missed += !cond
  }
  $1 == "RESULT" {
    delete f
    for (i = 2; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v = $i; sub(/^[^=]*=/, "", v); f[k] = v }
    scn = f["scenario"]
    if (scn == "submit" && ("rate" in f)) scn = "submit-paced"
    key = f["target"] SUBSEP scn
    have[key] = 1
    for (k in f) if (k != "target" && k != "scenario" && f[k] != "nan" && f[k] != "-") vals[key, k] = vals[key, k] " " f[k]
    err[key] += f["errors"]
  }
  END {
    printf "%-14s %11s %11s %8s %17s %17s %10s %10s\n", "scenario", "ours ops/s", "peer ops/s", "ratio",
      "ours p50/p99 ms", "peer p50/p99 ms", "redis ms/1k", "errors o/p"
    n = split("submit submit-decide read submit-paced wakeup", sc, " ")
    for (i = 1; i <= n; i++) {
      o = "ours" SUBSEP sc[i]; p = "peer" SUBSEP sc[i]
      if (sc[i] == "wakeup" || sc[i] == "submit-paced") {
        oo = "-"; po = "-"; r = ratio(med(p, "p99_ms"), med(o, "p99_ms")) " p99"
      } else {
        oo = med(o, "ops_per_sec"); po = med(p, "ops_per_sec"); r = ratio(oo, po)
      }
      printf "%-14s %11s %11s %8s %17s %17s %10s %10s\n", sc[i], fmt(oo, "%.1f"), fmt(po, "%.1f"), r,
        fmt(med(o, "p50_ms"), "%.2f") "/" fmt(med(o, "p99_ms"), "%.2f"),
        fmt(med(p, "p50_ms"), "%.2f") "/" fmt(med(p, "p99_ms"), "%.2f"),
        fmt(med(o, "redis_cpu_ms_per_1k"), "%.1f") "/" fmt(med(p, "redis_cpu_ms_per_1k"), "%.1f"),
        ((o in have) ? err[o] : "-") "/" ((p in have) ? err[p] : "-")
    }
    printf "\n%-14s %12s %12s %12s %12s %12s\n", "cores used", "ours redis", "ours service", "ours client", "peer redis", "peer service"
    n2 = split("submit submit-decide read", sc2, " ")
    for (i = 1; i <= n2; i++) {
      o = "ours" SUBSEP sc2[i]; p = "peer" SUBSEP sc2[i]
      printf "%-14s %12s %12s %12s %12s %12s\n", sc2[i], fmt(med(o, "redis_cores"), "%.2f"),
        fmt(med(o, "target_cores"), "%.2f"), fmt(med(o, "client_cores"), "%.2f"),
        fmt(med(p, "redis_cores"), "%.2f"), fmt(med(p, "target_cores"), "%.2f")
    }
    # What the throughput ratio would approach if each service had the cores to itself: the
    # CPU the service process used per operation (medians of cores used and of throughput).
    printf "\n%-14s %12s %12s %10s\n", "service CPU", "ours us/op", "peer us/op", "peer/ours"
    for (i = 1; i <= n2; i++) {
      o = "ours" SUBSEP sc2[i]; p = "peer" SUBSEP sc2[i]
      ou = per_op(med(o, "target_cores"), med(o, "ops_per_sec")); pu = per_op(med(p, "target_cores"), med(p, "ops_per_sec"))
      printf "%-14s %12s %12s %10s\n", sc2[i], fmt(ou, "%.0f"), fmt(pu, "%.0f"),
        (ou == "-" || pu == "-" || ou == 0) ? "-" : sprintf("%.2fx", pu / ou)
    }
    printf "\n%-22s %8s %8s\n", "Redis commands sent", "ours", "peer"
    n3 = split("submit accept read", sc3, " ")
    for (i = 1; i <= n3; i++) {
      o = "ours" SUBSEP "commands-" sc3[i]; p = "peer" SUBSEP "commands-" sc3[i]
      printf "%-22s %8s %8s\n", "per " sc3[i], fmt(med(o, "redis_commands_per_op"), "%.2f"), fmt(med(p, "redis_commands_per_op"), "%.2f")
    }
    fo = "ours" SUBSEP "fanout"
    if (fo in have) {
      printf "\nfan-out: %s long-polls on one approval: last answered %s ms after the accept was sent (p99 %s ms); %s kB per waiting long-poll (connection included); %s Redis clients while waiting; errors %s\n",
        med(fo, "waiters"), fmt(med(fo, "max_ms"), "%.1f"), fmt(med(fo, "p99_ms"), "%.1f"), fmt(med(fo, "kb_per_waiter"), "%.1f"),
        med(fo, "redis_clients_while_waiting"), err[fo]
    }
    fh = "ours" SUBSEP "fanout-h2"
    if (fh in have) {
      printf "fan-out over HTTP/2: %s long-polls as streams of %s connections: last answered %s ms after the accept (p99 %s ms); %s kB per waiting long-poll; %s Redis clients while waiting; errors %s\n",
        med(fh, "waiters"), med(fh, "http2_connections"), fmt(med(fh, "max_ms"), "%.1f"), fmt(med(fh, "p99_ms"), "%.1f"),
        fmt(med(fh, "kb_per_waiter"), "%.1f"), med(fh, "redis_clients_while_waiting"), err[fh]
    }
    ff = "floor" SUBSEP "fanout"; fw = "floor" SUBSEP "wakeup"; ow = "ours" SUBSEP "wakeup"
    if (ff in have || fw in have || ("floor" SUBSEP "fanout-h2") in have) {
      printf "\nfloor (approvals-floor: the same HTTP stack answering one pre-rendered body, no auth, policy or Redis)\n"
      if (ff in have) printf "  fan-out: last answered %s ms after the accept (ours %s ms); %s kB per waiting long-poll (ours %s kB)\n",
        fmt(med(ff, "max_ms"), "%.1f"), fmt(med(fo, "max_ms"), "%.1f"), fmt(med(ff, "kb_per_waiter"), "%.1f"), fmt(med(fo, "kb_per_waiter"), "%.1f")
      fhf = "floor" SUBSEP "fanout-h2"
      if (fhf in have) printf "  fan-out over HTTP/2: last answered %s ms after the accept (ours %s ms); %s kB per waiting long-poll (ours %s kB)\n",
        fmt(med(fhf, "max_ms"), "%.1f"), fmt(med(fh, "max_ms"), "%.1f"), fmt(med(fhf, "kb_per_waiter"), "%.1f"), fmt(med(fh, "kb_per_waiter"), "%.1f")
      if (fw in have) printf "  wake-up p50/p99: %s/%s ms (ours %s/%s ms)\n", fmt(med(fw, "p50_ms"), "%.2f"),
        fmt(med(fw, "p99_ms"), "%.2f"), fmt(med(ow, "p50_ms"), "%.2f"), fmt(med(ow, "p99_ms"), "%.2f")
    }
    scaled = 0
    for (k in have) if (index(k, "scale-") == 1) scaled = 1
    if (scaled) {
      printf "\n%-10s %11s %12s %14s %12s\n", "instances", "submit/s", "redis cores", "service cores", "client cores"
      for (i = 1; i <= 16; i++) {
        s = "scale-" i SUBSEP "submit"
        if (s in have) printf "%-10s %11s %12s %14s %12s\n", i, fmt(med(s, "ops_per_sec"), "%.1f"),
          fmt(med(s, "redis_cores"), "%.2f"), fmt(med(s, "target_cores"), "%.2f"), fmt(med(s, "client_cores"), "%.2f")
      }
    }
    if (("before" SUBSEP "submit") in have) {
      printf "\n%-14s %11s %11s %10s %19s %19s\n", "scenario", "ours ops/s", "before ops/s", "ratio",
        "ours p50/p99 ms", "before p50/p99 ms"
      n4 = split("submit submit-decide read", sc4, " ")
      for (i = 1; i <= n4; i++) {
        o = "ours" SUBSEP sc4[i]; b = "before" SUBSEP sc4[i]
        printf "%-14s %11s %11s %10s %19s %19s\n", sc4[i], fmt(med(o, "ops_per_sec"), "%.1f"),
          fmt(med(b, "ops_per_sec"), "%.1f"), ratio(med(o, "ops_per_sec"), med(b, "ops_per_sec")),
          fmt(med(o, "p50_ms"), "%.2f") "/" fmt(med(o, "p99_ms"), "%.2f"),
          fmt(med(b, "p50_ms"), "%.2f") "/" fmt(med(b, "p99_ms"), "%.2f")
      }
    }
    if ((("ours-rules100" SUBSEP "submit") in have) || (("ours-shadow" SUBSEP "submit") in have) ||
        (("ours-rules100-inproc" SUBSEP "submit") in have) || (("ours-shadow-inproc" SUBSEP "submit") in have)) {
      printf "\n%-52s %11s %9s %17s\n", "policy (submit)", "ops/s", "vs ours", "p50/p99 ms"
      n5 = split("ours ours-rules100 ours-rules100-inproc ours-shadow ours-shadow-inproc", pt, " ")
      split("default bundle|tenant bundle, 100 rules (sandboxed)|tenant bundle, 100 rules (in-process)|default + 100-rule candidate (sandboxed)|default + 100-rule candidate (in-process)", label, "|")
      for (i = 1; i <= n5; i++) {
        t = pt[i] SUBSEP "submit"
        if (t in have) printf "%-52s %11s %9s %17s\n", label[i], fmt(med(t, "ops_per_sec"), "%.1f"),
          ratio(med(t, "ops_per_sec"), med("ours" SUBSEP "submit", "ops_per_sec")),
          fmt(med(t, "p50_ms"), "%.2f") "/" fmt(med(t, "p99_ms"), "%.2f")
      }
    }
    printf "\nnproc=%s load_average=%s (medians over the rounds; the machine is shared, compare ratios)\n", cores, loadavg
    missed = 0
    o = "ours" SUBSEP "submit"; p = "peer" SUBSEP "submit"
    if ((o in have) && (p in have) && med(p, "ops_per_sec") + 0 > 0) {
      x = med(o, "ops_per_sec") / med(p, "ops_per_sec")
      target("submit throughput >= 5x the peer", x >= 5 && err[o] == 0, sprintf("%.2fx, %d errors", x, err[o]))
    }
    o = "ours" SUBSEP "submit-decide"; p = "peer" SUBSEP "submit-decide"
    if ((o in have) && (p in have) && med(p, "ops_per_sec") + 0 > 0) {
      x = med(o, "ops_per_sec") / med(p, "ops_per_sec")
      target("submit + accept throughput >= 5x the peer", x >= 5 && err[o] == 0, sprintf("%.2fx, %d errors", x, err[o]))
    }
    for (i = 1; i <= n3; i++) {
      o = "ours" SUBSEP "commands-" sc3[i]
      if (o in have) {
        x = med(o, "redis_commands_per_op")
        target("<= 1.1 Redis commands sent per " sc3[i], x + 0 <= 1.1, x)
      }
    }
    o = "ours" SUBSEP "wakeup"
    if (o in have) {
      x = med(o, "p99_ms")
      # A waiter that was never woken drops out of the percentiles: it counts as an error.
      target("decision -> waiting agent p99 <= 1 ms (" med(o, "waiters") " waiters)", x != "-" && x + 0 <= 1 && err[o] == 0, fmt(x, "%.3f") " ms, " err[o] " errors")
    }
    if (fo in have) {
      x = med(fo, "max_ms")
      target(med(fo, "waiters") " long-polls on one approval answered within 100 ms (HTTP/1.1)", x != "-" && x + 0 <= 100 && err[fo] == 0, fmt(x, "%.1f") " ms, " err[fo] " errors")
    }
    if (fh in have) {
      x = med(fh, "max_ms")
      target(med(fh, "waiters") " long-polls on one approval answered within 100 ms (HTTP/2)", x != "-" && x + 0 <= 100 && err[fh] == 0, fmt(x, "%.1f") " ms, " err[fh] " errors")
      x = med(fh, "kb_per_waiter")
      target("a waiting long-poll costs <= 10 kB (HTTP/2)", x != "-" && x + 0 <= 10, fmt(x, "%.1f") " kB")
    }
    if (fo in have) {
      x = med(fo, "kb_per_waiter")
      target("a waiting long-poll costs <= 10 kB (HTTP/1.1)", x != "-" && x + 0 <= 10, fmt(x, "%.1f") " kB")
    }
    o = "ours" SUBSEP "submit-paced"
    if (o in have) {
      x = med(o, "p99_ms")
      target("submit p99 <= 10 ms at half the maximum throughput", x != "-" && x + 0 <= 10 && err[o] == 0, fmt(x, "%.2f") " ms at " med(o, "rate") "/s, " err[o] " errors")
    }
    exit (strict == 1 && missed > 0) ? 1 : 0
  }
' "$results"
[ "$failed" = 0 ] || die "some scenarios failed (see above)"
