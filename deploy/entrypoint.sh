#!/bin/sh
# shipper's container entrypoint: `docker run IMAGE check --print` runs `shipper check --print`.
# With CAP_DAC_READ_SEARCH in the bounding set (cap_add: [DAC_READ_SEARCH]) the interpreter that holds it as a
# file capability runs shipper, so a non-root user reads Docker's root-only json-file logs; without it that
# interpreter would not start (the kernel refuses a file capability it cannot grant), so the plain one does.
umask 077
bounding=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
if [ "$(id -u)" != 0 ] && [ -n "$bounding" ] && [ $(( 0x$bounding & 4 )) -ne 0 ]; then
    exec /opt/shipper/bin/python-caps -m shipper "$@"
fi
exec /opt/shipper/bin/python3 -m shipper "$@"
