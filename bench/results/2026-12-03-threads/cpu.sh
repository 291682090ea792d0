#!/usr/bin/env bash
# cpu.sh PID URL LUA [SECS]: wrk -t1 -c64, prints req/s and server CPU µs per request
pid=$1; url=$2; lua=$3; secs=${4:-10}
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
out=$(wrk -t1 -c64 -d${secs}s -s $lua --latency "$url")
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
reqs=$(echo "$out" | awk '/requests in/{print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
p99=$(echo "$out" | awk '$1=="99%"{print $2}')
non2xx=$(echo "$out" | awk '/Non-2xx/{print $NF}')
echo "rps=$rps p99=$p99 non2xx=${non2xx:-0} cpu_us_per_req=$(python3 -c "print(round(($t1-$t0)*10000/$reqs,2))")"
