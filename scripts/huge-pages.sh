#!/bin/sh
# Runs a command with glibc's malloc asking for transparent huge pages (GLIBC_TUNABLES
# glibc.malloc.hugetlb=1), unless GLIBC_TUNABLES already says glibc.malloc.hugetlb=<anything>:
# on a virtual machine, fresh 4 KiB pages cost several times the CPU of the work done in them
# (cli/huge-pages.ts, docs/nbd-gateway.md "Huge pages"). Every process the command starts
# inherits it. glibc before 2.35 ignores the tunable.
case ":${GLIBC_TUNABLES:-}:" in
  *:glibc.malloc.hugetlb=*) ;;
  *) GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"; export GLIBC_TUNABLES ;;
esac
exec "$@"
