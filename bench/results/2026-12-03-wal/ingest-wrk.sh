#!/usr/bin/env bash
# ingest-wrk.sh BIN [ROUNDS] [SECS]: durable POST /comment rate of a standalone livecomments
# (BIN, fresh data dir, per-user limit lifted) against nchan's in-memory /pub/ (started with
# scripts/nchan-setup start 8090 1), side by side in each round, with the same wrk client as
# issue 16: wrk -t1 -c64, 1,000 users' JWTs over 100 posts, one pre-formatted request per
# (user, post) pair sent in turn. Prints one line per system and round: rps, p50, p99, non-2xx,
# server CPU µs per request.
set -euo pipefail
bin=$1; rounds=${2:-3}; secs=${3:-10}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/ingest-wrk.XXXX)
secret=benchsecret-0123456789abcdef
python3 - "$secret" > "$work/reqs.lua" <<'PY'
import base64, hmac, hashlib, json, sys, time
secret = sys.argv[1].encode()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
exp = int(time.time()) + 3600
print("tokens = {")
for u in range(1000):
    body = b64(json.dumps({"sub": f"user{u}", "exp": exp}).encode())
    sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
    print(f'  "{head}.{body}.{sig}",')
print("}")
PY
cat >> "$work/reqs.lua" <<'LUA'
local reqs = {}
local n = 0
local i = 0
init = function(args)
  local prefix = args[1]
  for k, t in ipairs(tokens) do
    local post = "p" .. ((k - 1) % 100)
    local path = prefix == "nchan" and ("/pub/" .. post) or ("/comment?post_id=" .. post)
    n = n + 1
    reqs[n] = wrk.format("POST", path, { ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. t }, '{"text":"hello from wrk, a comment of typical length"}')
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
LUA
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
measure() { # NAME PIDS URL ARG
  local name=$1 pids=$2 url=$3 arg=$4
  local t0 t1 out
  t0=$(for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | paste -sd+ | bc)
  out=$(wrk -t1 -c64 -d${secs}s --latency -s "$work/reqs.lua" "$url" -- "$arg")
  t1=$(for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | paste -sd+ | bc)
  local reqs rps p50 p99 non2xx
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p50=$(echo "$out" | awk '$1=="50%"{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/{print $NF}')
  echo "$name round=$r rps=$rps p50=$p50 p99=$p99 non2xx=${non2xx:-0} cpu_us_per_req=$(python3 -c "print(round(($t1-$t0)*10000/$reqs,2))")"
}
nchan_pids=$("$here/../../../scripts/nchan-setup" pids | tr ',' ' ')
for r in $(seq 1 "$rounds"); do
  rm -rf "$work/data"
  "$bin" standalone --listen "127.0.0.1:$port" --data-dir "$work/data" --jwt-secret "$secret" \
    --rate-limit 1000000000 > "$work/server.log" 2>&1 &
  spid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  if (( r % 2 )); then
    measure lc "$spid" "http://127.0.0.1:$port" lc
    measure nchan "$nchan_pids" "http://127.0.0.1:8090" nchan
  else
    measure nchan "$nchan_pids" "http://127.0.0.1:8090" nchan
    measure lc "$spid" "http://127.0.0.1:$port" lc
  fi
  kill "$spid"; wait "$spid" || true
done
rm -rf "$work"
