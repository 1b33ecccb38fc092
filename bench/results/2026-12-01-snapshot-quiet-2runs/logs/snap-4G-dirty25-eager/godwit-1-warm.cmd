/tmp/godwit-bench/build-bench/src/cli/godwit run --api-socket /tmp/gwb-z7tjv59c/gw-warm.sock --serial stdio --name bench-warm --restore /tmp/q-snap/snapshots/snap-godwit --restore-mode eager
