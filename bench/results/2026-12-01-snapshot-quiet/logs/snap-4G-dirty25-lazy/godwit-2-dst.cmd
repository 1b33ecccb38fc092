/tmp/godwit-bench/build-bench/src/cli/godwit run --api-socket /tmp/gwb-nqg9v3pv/gw-dst.sock --serial stdio --name bench-dst --restore /tmp/q-snap4/snapshots/snap-godwit --restore-mode lazy
