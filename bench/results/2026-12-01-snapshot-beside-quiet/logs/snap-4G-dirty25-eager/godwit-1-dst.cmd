/tmp/godwit-bench/build-bench/src/cli/godwit run --api-socket /tmp/gwb-nwnzx_2z/gw-dst.sock --serial stdio --name bench-dst --restore /tmp/snap-final/snapshots/snap-godwit --restore-mode eager
