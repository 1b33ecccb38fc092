/tmp/godwit-bench/build-bench/src/cli/godwit run --api-socket /tmp/gwb-nwnzx_2z/gw-warm.sock --serial stdio --name bench-warm --restore /tmp/snap-final/snapshots/snap-godwit --restore-mode lazy
