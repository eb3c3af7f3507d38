#!/bin/bash
# Runs pgtenant under callgrind for a fixed pgbench workload; prints the top functions.
# usage: bench/profile.sh <binary> <simple|extended|prepared> <transactions per client> <callgrind out file>
# Needs bench/profile-setup.sh first (throwaway PostgreSQL on 55432) and token.txt from
#   pgtenant token --tenant aaaaaaaa-0000-4000-8000-00000000000a --config bench/profile-proxy.toml --ttl 1d > bench/token.txt
BIN=$(realpath "$1"); MODE=$2; N=$3; OUT=$(realpath -m "$4")
cd "$(dirname "$0")"
valgrind --tool=callgrind --callgrind-out-file=$OUT $BIN serve --config profile-proxy.toml > proxy.log 2>&1 &
VP=$!
for i in $(seq 1 200); do (echo > /dev/tcp/127.0.0.1/56432) 2>/dev/null && break; sleep 0.2; done
sleep 1
PGPASSWORD=$(cat token.txt) pgbench -h 127.0.0.1 -p 56432 -U bench -n -S -M $MODE -c 4 -j 2 -t $N app 2>&1 | grep -E "tps|latency|failed"
kill -INT $VP; wait $VP
