/tmp/godwit-bench/build-bench/src/cli/godwit run --api-socket /tmp/gwb-z7tjv59c/gw-dst.sock --serial stdio --name bench-dst --restore /tmp/q-snap/snapshots/snap-godwit --restore-mode eager
