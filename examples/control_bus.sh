#!/usr/bin/env bash
# Control bus: drive a running broker from the outside with warrenctl (the admin plane) —
# inject a test message, look inside a queue, stop and start deliveries, switch a wire tap and
# a detour on and off, read statistics. The application's bindings never change.
#
#   WARREN_ADMIN   admin plane address (default http://127.0.0.1:15680)
#   WARRENCTL      the warrenctl binary (default: warrenctl on PATH)
set -euo pipefail

ctl() { "${WARRENCTL:-warrenctl}" --server "${WARREN_ADMIN:-http://127.0.0.1:15680}" "$@"; }
# must <text> <command...>: runs the command and fails unless its output contains <text>.
must() {
    local want=$1 out
    shift
    out=$("$@")
    grep -qF -- "$want" <<<"$out" || { echo "expected '$want' from '$*', got: $out" >&2; exit 1; }
}

# The application: orders are routed to shipping.
ctl declare exchange cb.orders --type direct >/dev/null
ctl declare queue cb.shipping >/dev/null
ctl purge cb.shipping >/dev/null
ctl bind cb.orders cb.shipping -k new >/dev/null

# Inject a test message and see where it went (after fsync: --confirm).
must "routed to cb.shipping (confirmed)" ctl publish cb.orders new 'test order 1' --persistent --confirm
# Look inside without consuming.
must "test order 1" ctl peek cb.shipping

# Stop deliveries (publishes are still accepted), then start them again.
ctl pause cb.shipping >/dev/null
must '"paused": true' ctl --json list queues
ctl resume cb.shipping >/dev/null

# Wire tap: copy what passes cb.orders to an audit exchange, then stop.
ctl declare exchange cb.audit --type fanout >/dev/null
ctl declare queue cb.audit.q >/dev/null
ctl purge cb.audit.q >/dev/null
ctl bind cb.audit cb.audit.q >/dev/null
tap=$(ctl --json tap start --exchange cb.orders --to cb.audit | grep -o '"id": [0-9]*' | grep -o '[0-9]*$')
must "routed to cb.shipping, cb.audit.q" ctl publish cb.orders new 'tapped order'
ctl tap stop "$tap" >/dev/null
must "routed to cb.shipping" ctl publish cb.orders new 'untapped order'
must "tapped order" ctl peek cb.audit.q
must "1 ready left" ctl peek cb.audit.q

# Detour: send the orders -> shipping route through a validation step, then back.
ctl declare exchange cb.validate --type fanout >/dev/null
ctl declare queue cb.validation >/dev/null
ctl purge cb.validation >/dev/null
ctl bind cb.validate cb.validation >/dev/null
ctl detour start cb.orders cb.shipping --via cb.validate >/dev/null
must "routed to cb.validation" ctl publish cb.orders new 'detoured order'
ctl detour stop cb.orders cb.shipping >/dev/null
must "routed to cb.shipping" ctl publish cb.orders new 'direct order'

# Statistics.
must "cb.shipping" ctl list queues
# (Captured rather than piped into `head`, which may close the pipe while warrenctl writes.)
overview=$(ctl overview)
head -3 <<<"$overview"
echo "control bus: ok"
