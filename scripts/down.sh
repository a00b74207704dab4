#!/usr/bin/env bash
# Stops the six services and the local stack.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$SAGAPAY_ROOT/scripts/services.sh" stop
"$SAGAPAY_ROOT/scripts/stack.sh" down
