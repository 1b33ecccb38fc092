"""godwit benchmark harness: godwit beside QEMU on the same guest kit, link and workload."""
