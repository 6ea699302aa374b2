#!/usr/bin/env bash
# Installs the Debian packages two tests drive when they are missing: chromium (the dashboard's
# browser test) and prometheus (its promtool checks the alert rules). Quiet when both are there.
# Without root and apt-get, or on a host that runs systemd (where installing prometheus would
# start a server), it only says so, and those tests skip with the reason.
set -euo pipefail

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || [ -d /run/systemd/system ]; then
    echo "note: ${missing[*]} missing; install with apt-get (Debian) to run the tests that need it" >&2
    exit 0
fi
echo "installing ${missing[*]} (Debian) for the browser and alert-rules tests" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null; then
    echo "note: could not install ${missing[*]}; the tests that need it will skip" >&2
fi
