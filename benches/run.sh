#!/usr/bin/env bash
# The benchmark, in one command: builds in release, starts verifyiam (generated config, its own
# store, a local RS256 JWK-set server, the development issuer) and the no-op baseline on 127.0.0.1,
# runs the scenarios alternating the two servers, and writes BENCHMARKS.md and benches/latency.svg.
#
#   bash benches/run.sh              # full run (about 15 minutes on 2 cores, a cold release build included)
#   bash benches/run.sh --quick      # short windows, fewer tokens (about 3 minutes)
#   bash benches/run.sh --soak 10m   # also the soak at 5,000 Checks/s (RSS every 10 s); --soak 60s for a short one
#
# Other flags: --out FILE (default BENCHMARKS.md), --chart FILE (default benches/latency.svg),
# --no-h2load (skip the h2load rounds), --bin-dir DIR (measure binaries already built there,
# e.g. a copy of an earlier commit's target/release, instead of building),
# --only LIST (comma-separated sections: closed, h2load, open, cold, invalid, deployments,
# instructions, postgres, propagation, memory; prints the results instead of writing the report).
# Every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

QUICK=0
SOAK=""
OUT=BENCHMARKS.md
CHART=benches/latency.svg
H2LOAD=1
BIN_DIR=""
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --soak) SOAK=${2:?--soak needs a duration such as 10m or 60s}; shift ;;
        --out) OUT=${2:?}; shift ;;
        --chart) CHART=${2:?}; shift ;;
        --no-h2load) H2LOAD=0 ;;
        --bin-dir) BIN_DIR=${2:?}; shift ;;
        --only) ONLY=${2:?}; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "benches/run.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    DURATION=2s; WARMUP=1s; ROUNDS=1
    COLD_K=4000; INVALID_K=4000; DEPLOY_N=50; RSS_TOKENS=100000; H2LOAD_N=40000; H2_ROUNDS=1
    CG_N=5000; CG_COLD=300; CG_IP=500; PROP_N=20
else
    DURATION=10s; WARMUP=2s; ROUNDS=3
    COLD_K=30000; INVALID_K=20000; DEPLOY_N=100; RSS_TOKENS=1000000; H2LOAD_N=300000; H2_ROUNDS=5
    CG_N=20000; CG_COLD=1000; CG_IP=2000; PROP_N=120
fi
RATES="1000 2000 5000 10000 20000"
CONNECTIONS=2      # closed loop: HTTP/2 connections ...
STREAMS=32         # ... times concurrent streams on each
OPEN_CONNECTIONS=2
H2_CONNECTIONS=4   # h2load: connections ...
H2_STREAMS=16      # ... times concurrent streams on each

log() { printf '\n== %s\n' "$*" >&2; }

# want SECTION: whether this run measures SECTION.
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

if [ -n "$BIN_DIR" ]; then
    BIN=$(cd "$BIN_DIR" && pwd)
else
    log "building (release)"
    # Two builds on purpose: the examples pull in dev-dependencies whose features (tokio's test-util
    # among them) would otherwise be unified into the measured verifyiam binary.
    cargo build --release --bin verifyiam
    cargo build --release --examples
    BIN=$ROOT/target/release
fi
VI=$BIN/verifyiam
LG=$BIN/examples/loadgen
NOOP=$BIN/examples/noop_server

if [ "$H2LOAD" = 1 ] && ! command -v h2load >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing h2load (nghttp2-client)"
        timeout 300 apt-get update -qq >/dev/null 2>&1 || true
        timeout 300 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null 2>&1 || true
    fi
    command -v h2load >/dev/null 2>&1 ||
        echo "benches/run.sh: h2load is not installed and could not be (needs root and apt-get): the h2load cross-check is skipped" >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/verifyiam-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RESULTS=$WORK/results.jsonl
META=$WORK/meta.env
DATA=$WORK/data
mkdir -p "$DATA"
: >"$RESULTS"

PORTS=$("$LG" free-ports 3 | tr '\n' ' ')
read -r P_EXT P_ADM P_NOOP <<<"$PORTS"

# The RS256 issuer's JWK set, served locally; verifyiam trusts it as a [[token.jwt]] issuer.
"$LG" serve-jwks --key "$WORK/rsa.pem" --port-file "$WORK/jwks.port" --exit-after 4h \
    >"$WORK/jwks.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 200); do [ -s "$WORK/jwks.port" ] && break; sleep 0.1; done
[ -s "$WORK/jwks.port" ] || { echo "benches/run.sh: the JWK-set server did not start" >&2; cat "$WORK/jwks.log" >&2; exit 3; }
P_JWKS=$(cat "$WORK/jwks.port")

ADMIN_EMAIL=admin@bench-admin.example
PROJECT=bench-project
# Makes the development issuer's key in $DATA; verifyiam trusts it through [token.dev].
ADMIN_TOKEN=$("$LG" mint --data-dir "$DATA" --email "$ADMIN_EMAIL")

cat >"$WORK/verifyiam.toml" <<EOF
[server]
extauthz_addr = "127.0.0.1:$P_EXT"
admin_addr = "127.0.0.1:$P_ADM"

[iam]
project = "$PROJECT"
store = "$WORK/store"
bootstrap_admins = ["user:$ADMIN_EMAIL"]

[token.dev]
issuer = "verifyiam-dev"
key_file = "$DATA/dev-issuer-key.pem"

[[token.jwt]]
issuer = "https://rs256.loadgen.example"
jwks_uri = "http://127.0.0.1:$P_JWKS/jwks"
EOF

log "starting verifyiam on 127.0.0.1:$P_EXT (admin $P_ADM) and the no-op server on 127.0.0.1:$P_NOOP"
start_verifyiam() {
    RUST_LOG=warn "$VI" serve --config "$WORK/verifyiam.toml" >>"$WORK/verifyiam.log" 2>&1 &
    VI_PID=$!
    PIDS+=("$VI_PID")
    for _ in $(seq 1 300); do
        curl -fsS "http://127.0.0.1:$P_ADM/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$VI_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "benches/run.sh: verifyiam did not become ready" >&2
    cat "$WORK/verifyiam.log" >&2
    exit 3
}
# Stops verifyiam (SIGTERM, then waits for it, bounded) and starts it again on the same store.
restart_verifyiam() {
    local keep=() p
    kill "$VI_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$VI_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$VI_PID" 2>/dev/null || true
    wait "$VI_PID" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$VI_PID" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    start_verifyiam
}
start_verifyiam
"$NOOP" --addr "127.0.0.1:$P_NOOP" >"$WORK/noop.log" 2>&1 &
NOOP_PID=$!
PIDS+=("$NOOP_PID")

# Grants, through the admin REST API: the load generator's hot, cold and RS256 principals
# (domain:loadgen.example) on the project; the deployment mix's principal on each deployment.
admin_post() {
    curl -fsS -o /dev/null --max-time 10 "http://127.0.0.1:$P_ADM$1" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' --data "$2"
}
log "granting roles/apigee.deploymentInvoker (project: domain:loadgen.example; $DEPLOY_N deployment policies)"
admin_post "/v1/projects/$PROJECT:setIamPolicy" \
    '{"policy":{"bindings":[{"role":"roles/apigee.deploymentInvoker","members":["domain:loadgen.example"]}]}}'
for i in $(seq 0 $((DEPLOY_N - 1))); do
    admin_post "/v1/organizations/$PROJECT/environments/prod/deployments/api-$i:setIamPolicy" \
        '{"policy":{"bindings":[{"role":"roles/apigee.deploymentInvoker","members":["user:mixer@deployments-mix.example"]}]}}'
done

RSS_IDLE=$(awk '/^VmRSS/ {print $2}' "/proc/$VI_PID/status")
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M')"
    echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock examples 2>/dev/null || echo ' (with local changes)')"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "cores=$(nproc)"
    echo "memory=$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    echo "rustc=$(rustc --version 2>/dev/null || echo unknown)"
    echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "h2load=$(if command -v h2load >/dev/null 2>&1; then h2load --version 2>/dev/null | head -1; else echo 'not available: cross-check skipped'; fi)"
    echo "quick=$QUICK"
    echo "connections=$CONNECTIONS"
    echo "streams=$STREAMS"
    echo "open_connections=$OPEN_CONNECTIONS"
    echo "h2_connections=$H2_CONNECTIONS"
    echo "h2_streams=$H2_STREAMS"
    echo "h2_rounds=$H2_ROUNDS"
    echo "h2load_n=$H2LOAD_N"
    echo "duration=$DURATION"
    echo "warmup=$WARMUP"
    echo "rounds=$ROUNDS"
    echo "rss_idle_kib=$RSS_IDLE"
} >"$META"

# lg SERVER SECONDS_BOUND ARGS...: one load-generator run against SERVER, bounded in time.
lg() {
    local server=$1 bound=$2 addr pid
    shift 2
    case "$server" in
        verifyiam) addr=127.0.0.1:$P_EXT; pid=$VI_PID ;;
        noop) addr=127.0.0.1:$P_NOOP; pid=$NOOP_PID ;;
    esac
    timeout "$bound" "$LG" run --addr "$addr" --server "$server" --server-pid "$pid" \
        --data-dir "$DATA" --rsa-key "$WORK/rsa.pem" --json-out "$RESULTS" "$@" >/dev/null
}
secs() { case "$1" in *m) echo $(( ${1%m} * 60 )) ;; *s) echo "${1%s}" ;; *) echo "$1" ;; esac; }
BOUND=$(( $(secs "$DURATION") + $(secs "$WARMUP") + 120 ))

if want closed; then
    log "(a) closed loop, maximum throughput, hot token: $ROUNDS round(s), alternating"
    for round in $(seq 1 "$ROUNDS"); do
        for server in verifyiam noop; do
            lg "$server" "$BOUND" --scenario max-throughput --mode closed --mix hot \
                --connections "$CONNECTIONS" --streams "$STREAMS" --duration "$DURATION" --warmup "$WARMUP"
        done
    done
fi

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# h2load_round SCENARIO LABEL PORT PID: one h2load run of $H2LOAD_N hot Checks, appended to the
# results.
h2load_round() {
    local scenario=$1 label=$2 port=$3 pid=$4 before after out rps wall ok done_n cpu
    before=$(cpu_ticks "$pid")
    out=$(timeout 300 h2load -n "$H2LOAD_N" -c "$H2_CONNECTIONS" -m "$H2_STREAMS" --data="$WORK/frame.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$port/envoy.service.auth.v3.Authorization/Check" 2>&1) || true
    after=$(cpu_ticks "$pid")
    # "finished in 2.31s, 129870.13 req/s, ..." (in ms under a second).
    rps=$(printf '%s\n' "$out" | sed -n 's/^finished in [0-9.]*m\{0,1\}s, \([0-9.]*\) req\/s.*/\1/p')
    wall=$(printf '%s\n' "$out" | sed -n 's/^finished in \([0-9.]*\)m\{0,1\}s,.*/\1/p')
    if printf '%s\n' "$out" | grep -q '^finished in [0-9.]*ms,'; then
        wall=$(awk -v ms="$wall" 'BEGIN {printf "%.6f", ms / 1000}')
    fi
    ok=$(printf '%s\n' "$out" | sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p')
    done_n=$(printf '%s\n' "$out" | sed -n 's/^requests: .* \([0-9]*\) done, .*/\1/p')
    if [ -n "$rps" ] && [ -n "$wall" ]; then
        cpu=$(awk -v a="$before" -v b="$after" -v w="$wall" 'BEGIN {printf "%.1f", (b - a) / w}')
        printf '{"scenario":"%s","server":"%s","mode":"closed","mix":"hot","connections":%s,"streams":%s,"achieved_rps":%s,"requests":%s,"allowed":%s,"denied":0,"errors":%s,"server_cpu_pct":%s}\n' \
            "$scenario" "$label" "$H2_CONNECTIONS" "$H2_STREAMS" "$rps" "${done_n:-0}" "${ok:-0}" "$(( ${done_n:-0} - ${ok:-0} ))" "$cpu" >>"$RESULTS"
        echo "h2load [$label]: $rps req/s ($ok of $done_n answered 2xx), server CPU $cpu%" >&2
    else
        echo "benches/run.sh: h2load against $label gave no result:" >&2
        printf '%s\n' "$out" | tail -5 >&2
    fi
}
HAVE_H2LOAD=0
if [ "$H2LOAD" = 1 ] && command -v h2load >/dev/null 2>&1; then HAVE_H2LOAD=1; fi
"$LG" run --data-dir "$DATA" --mix hot --write-grpc-frame "$WORK/frame.bin"

if want h2load && [ "$HAVE_H2LOAD" = 1 ]; then
    log "(a) h2load: $H2LOAD_N Checks, $H2_CONNECTIONS connections x $H2_STREAMS streams, $H2_ROUNDS rounds, alternating"
    for round in $(seq 1 "$H2_ROUNDS"); do
        h2load_round h2load verifyiam "$P_EXT" "$VI_PID"
        h2load_round h2load noop "$P_NOOP" "$NOOP_PID"
    done
fi

if want open; then
    log "(b) open loop, hot token, at $RATES Checks/s, alternating; 5,000/s (the target's point) in $ROUNDS rounds"
    for rate in $RATES; do
        rounds=1
        [ "$rate" = 5000 ] && rounds=$ROUNDS
        for round in $(seq 1 "$rounds"); do
            for server in verifyiam noop; do
                lg "$server" "$BOUND" --scenario open-loop --mode open --rate "$rate" --mix hot \
                    --connections "$OPEN_CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP"
            done
        done
    done
fi

if want cold; then
    log "(c) cold path: every Check a new RS256 token ($COLD_K tokens), and warm rounds beside it"
    "$LG" rs256-verify-rate --key "$WORK/rsa.pem" --duration 3s --json-out "$RESULTS" >/dev/null
    # Each round mints its tokens anew (they carry `iat`), so every round's are new to the
    # server. The warm Check's CPU is measured the same way right after, for the cold path's
    # extra cost.
    for round in $(seq 1 "$ROUNDS"); do
        lg verifyiam 900 --scenario cold-rs256 --mode closed --mix "rs256:$COLD_K" --once \
            --chunk "$COLD_K" --connections "$CONNECTIONS" --streams "$STREAMS" --duration 120s
        lg verifyiam "$BOUND" --scenario warm-beside-cold --mode closed --mix hot \
            --connections "$CONNECTIONS" --streams "$STREAMS" --duration "$DURATION" --warmup "$WARMUP"
    done
fi

if want invalid; then
    log "(d) invalid tokens: one repeated, then $INVALID_K distinct ones each once"
    lg verifyiam "$BOUND" --scenario invalid-repeated --mode closed --mix invalid:1 \
        --connections "$CONNECTIONS" --streams "$STREAMS" --duration "$DURATION" --warmup "$WARMUP"
    lg verifyiam 600 --scenario invalid-distinct --mode closed --mix "invalid:$INVALID_K" --once \
        --chunk "$INVALID_K" --connections "$CONNECTIONS" --streams "$STREAMS" --duration 120s
fi

if want deployments; then
    log "(e) deployment mix over $DEPLOY_N deployments"
    lg verifyiam "$BOUND" --scenario deployments --mode closed --mix "deployments:$DEPLOY_N" \
        --connections "$CONNECTIONS" --streams "$STREAMS" --duration "$DURATION" --warmup "$WARMUP"
fi

# totals FILE: the instruction count in a callgrind dump.
totals() { awk '/^totals:/ {print $2; exit}' "$1"; }
# under_callgrind NAME CMD...: starts CMD under callgrind, its dumps under $WORK/cg-NAME.
under_callgrind() {
    local name=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-$name.%p" "$@" >>"$WORK/cg-$name.log" 2>&1 &
    CG_PID=$!
    PIDS+=("$CG_PID")
}
# count_checks NAME N CMD...: zeroes the counters of the process under callgrind, runs CMD (which
# sends N Checks), dumps them and records instructions per Check.
count_checks() {
    local name=$1 n=$2 dump total
    shift 2
    callgrind_control -z "$CG_PID" >/dev/null
    "$@" >/dev/null 2>&1
    callgrind_control -d "$CG_PID" >/dev/null
    # Dumps are the output file's name with .1, .2, ... added.
    dump=$(ls -t "$WORK"/cg-"${name%%-*}".*.* 2>/dev/null | head -1 || true)
    total=$([ -n "$dump" ] && totals "$dump")
    if [ -n "$total" ]; then
        printf '{"scenario":"instructions","server":"%s","kind":"%s","checks":%s,"instructions":%s}\n' \
            "${name%%-*}" "${name#*-}" "$n" "$total" >>"$RESULTS"
        echo "instructions [$name]: $(( total / n )) per Check ($total over $n)" >&2
    else
        echo "benches/run.sh: no callgrind totals for $name" >&2
    fi
    rm -f "$dump"
}
# stop PID: stops a process this script started and forgets it.
stop() {
    local keep=() p
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
h2load_n() {
    h2load -n "$1" -c "$H2_CONNECTIONS" -m "$H2_STREAMS" --data="$WORK/frame.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$2/envoy.service.auth.v3.Authorization/Check"
}
if want instructions && command -v valgrind >/dev/null 2>&1 && [ "$HAVE_H2LOAD" = 1 ]; then
    log "(h) instructions per Check under callgrind: $CG_N warm Checks (h2load), $CG_COLD cold ones (loadgen), in-process"
    stop "$VI_PID"
    RUST_LOG=warn under_callgrind verifyiam "$VI" serve --config "$WORK/verifyiam.toml"
    for _ in $(seq 1 600); do curl -fsS "http://127.0.0.1:$P_ADM/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
    h2load_n 2000 "$P_EXT" >/dev/null 2>&1
    count_checks verifyiam-warm-grpc "$CG_N" h2load_n "$CG_N" "$P_EXT"
    # Cold: the key set fetched first; tokens carry `iat`, so a second later they are all new.
    cold_run() {
        "$LG" run --addr "127.0.0.1:$P_EXT" --data-dir "$DATA" --rsa-key "$WORK/rsa.pem" \
            --scenario cold-rs256 --mode closed --mix "rs256:$1" --once --chunk "$1" \
            --connections "$CONNECTIONS" --streams "$STREAMS" --duration 900s
    }
    cold_run 5 >/dev/null 2>&1
    sleep 1.1
    # The generator mints before it sends: the idle server's few instructions meanwhile count too.
    count_checks verifyiam-cold-grpc "$CG_COLD" cold_run "$CG_COLD"
    stop "$CG_PID"
    stop "$NOOP_PID"
    under_callgrind noop "$NOOP" --addr "127.0.0.1:$P_NOOP"
    for _ in $(seq 1 300); do h2load_n 1 "$P_NOOP" 2>/dev/null | grep -q '^status codes: 1 2xx' && break; sleep 0.2; done
    h2load_n 2000 "$P_NOOP" >/dev/null 2>&1
    count_checks noop-warm-grpc "$CG_N" h2load_n "$CG_N" "$P_NOOP"
    stop "$CG_PID"
    "$NOOP" --addr "127.0.0.1:$P_NOOP" >>"$WORK/noop.log" 2>&1 &
    NOOP_PID=$!
    PIDS+=("$NOOP_PID")
    # In process: only the measured Checks are counted (`instructions_counted_here` in the examples).
    "$BIN/examples/check_instructions" prepare "$WORK/ci" $(( CG_IP + 1 )) >/dev/null
    counted() {
        valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*instructions_counted_here*' --callgrind-out-file="$WORK/cg-ip.%p" "$@" 2>&1 >/dev/null |
            sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
    }
    for kind in warm cold noop; do
        total=$(counted "$BIN/examples/check_instructions" "$kind" "$WORK/ci" "$CG_IP")
        if [ -n "$total" ]; then
            server=verifyiam; what=$kind
            [ "$kind" = noop ] && { server=noop; what=warm; }
            printf '{"scenario":"instructions","server":"%s","kind":"%s-in-process","checks":%s,"instructions":%s}\n' \
                "$server" "$what" "$CG_IP" "$total" >>"$RESULTS"
            echo "instructions [$kind in process]: $(( total / CG_IP )) per Check" >&2
        fi
    done
    total=$(counted "$BIN/examples/verify_instructions" rs256 "$CG_IP")
    if [ -n "$total" ]; then
        printf '{"scenario":"instructions","server":"-","kind":"rs256-verify-in-process","checks":%s,"instructions":%s}\n' \
            "$CG_IP" "$total" >>"$RESULTS"
        echo "instructions [one RS256 verification]: $(( total / CG_IP ))" >&2
    fi
    rm -f "$WORK"/cg-ip.*
    start_verifyiam
fi

PG_URL=${VERIFYIAM_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_DB=verifyiam_bench_$$
# psql_admin SQL: runs SQL on the server's maintenance database.
psql_admin() { psql "$PG_URL" -v ON_ERROR_STOP=1 -qAtc "$1" >/dev/null; }
if { want postgres || want propagation; } && command -v psql >/dev/null 2>&1 && psql_admin 'select 1' 2>/dev/null; then
    psql_admin "create database $PG_DB"
    PG_STORE="${PG_URL%/*}/$PG_DB"
    cleanup_pg() { psql_admin "drop database if exists $PG_DB with (force)" 2>/dev/null || true; }
    trap 'cleanup; cleanup_pg' EXIT
    PG_PORTS=$("$LG" free-ports 4 | tr '\n' ' ')
    read -r P_EXT_A P_ADM_A P_EXT_B P_ADM_B <<<"$PG_PORTS"
    # replica NAME EXT ADMIN: a verifyiam on the PostgreSQL store, otherwise configured as above.
    replica() {
        sed -e "s|^extauthz_addr = .*|extauthz_addr = \"127.0.0.1:$2\"|" \
            -e "s|^admin_addr = .*|admin_addr = \"127.0.0.1:$3\"|" \
            -e "s|^store = .*|store = \"$PG_STORE\"|" "$WORK/verifyiam.toml" >"$WORK/$1.toml"
        RUST_LOG=warn "$VI" serve --config "$WORK/$1.toml" >>"$WORK/$1.log" 2>&1 &
        PIDS+=($!)
        eval "PID_$1=$!"
        for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$3/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
        echo "benches/run.sh: replica $1 did not become ready" >&2
        cat "$WORK/$1.log" >&2
        exit 3
    }
    replica pg_a "$P_EXT_A" "$P_ADM_A"
    curl -fsS -o /dev/null --max-time 10 "http://127.0.0.1:$P_ADM_A/v1/projects/$PROJECT:setIamPolicy" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        --data '{"policy":{"bindings":[{"role":"roles/apigee.deploymentInvoker","members":["domain:loadgen.example"]}]}}'
    if want postgres; then
        log "(i) warm Checks with the PostgreSQL store beside the embedded one: $ROUNDS round(s), alternating"
        for round in $(seq 1 "$ROUNDS"); do
            for store in embedded postgres; do
                case "$store" in
                    embedded) port=$P_EXT; pid=$VI_PID ;;
                    postgres) port=$P_EXT_A; pid=$PID_pg_a ;;
                esac
                timeout "$BOUND" "$LG" run --addr "127.0.0.1:$port" --server "verifyiam-$store" --server-pid "$pid" \
                    --data-dir "$DATA" --rsa-key "$WORK/rsa.pem" --json-out "$RESULTS" \
                    --scenario store --mode closed --mix hot \
                    --connections "$CONNECTIONS" --streams "$STREAMS" --duration "$DURATION" --warmup "$WARMUP" >/dev/null
                if [ "$HAVE_H2LOAD" = 1 ]; then
                    h2load_round h2load-store "verifyiam-$store" "$port" "$pid"
                fi
            done
        done
    fi
    if want propagation; then
        log "(j) propagation between two replicas on one PostgreSQL: $PROP_N changes written through one, seen by the other"
        replica pg_b "$P_EXT_B" "$P_ADM_B"
        "$LG" propagation --admin "http://127.0.0.1:$P_ADM_A" --admin-token "$ADMIN_TOKEN" \
            --check "127.0.0.1:$P_EXT_B" --data-dir "$DATA" --project "$PROJECT" \
            --changes "$PROP_N" --json-out "$RESULTS" >/dev/null
    fi
elif want postgres || want propagation; then
    echo "benches/run.sh: no PostgreSQL at $PG_URL (set VERIFYIAM_BENCH_DATABASE_URL): the PostgreSQL store is not measured" >&2
fi

if want memory; then
    # The open loop past saturation leaves both servers' heaps grown (allocator high-water mark);
    # memory is measured from a fresh verifyiam on the same store.
    log "restarting verifyiam for the memory scenarios"
    restart_verifyiam

    if [ -n "$SOAK" ]; then
        log "(g) soak: $SOAK at 5,000 Checks/s, RSS every 10 s"
        lg verifyiam $(( $(secs "$SOAK") + 180 )) --scenario soak --mode open --rate 5000 --mix hot \
            --connections "$OPEN_CONNECTIONS" --duration "$SOAK" --warmup 5s --rss-every 10s
    fi

    log "(f) RSS after $RSS_TOKENS distinct valid ES256 tokens (minted in chunks of 50,000)"
    lg verifyiam 3600 --scenario rss-distinct-tokens --mode closed --mix "cold:$RSS_TOKENS" --once \
        --chunk 50000 --connections "$CONNECTIONS" --streams "$STREAMS" --duration 1800s
fi

echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"

if [ -n "$ONLY" ]; then
    cat "$RESULTS"
    exit 0
fi

log "writing $OUT and $CHART"
cp "$RESULTS" benches/results.jsonl
cp "$META" benches/meta.env
"$BIN/examples/bench_chart" --results benches/results.jsonl --out "$CHART" \
    --subtitle "$(grep '^cpu=' "$META" | cut -d= -f2-), $(nproc) cores shared by server and load generator; $(grep '^date=' "$META" | cut -d= -f2-) UTC"
"$BIN/examples/bench_report" --results benches/results.jsonl --meta benches/meta.env \
    --chart "$CHART" --out "$OUT"
echo "benches/run.sh: done; see $OUT" >&2
