#!/usr/bin/env bash
# chromium: the headless browser the console's browser test loads each page in. Prints its path.
#
#   TOLLWAY_CHROMIUM set       use that binary; install nothing.
#   chromium on PATH           (or chromium-browser, or in /usr/bin) use it.
#   otherwise, as root         install Debian's package: apt-get update && apt-get install -y chromium
#   TOLLWAY_TOOLS_NO_BUILD=1   fail instead of installing (the test harness sets it).
set -euo pipefail

die() {
	echo "chromium.sh: error: $*" >&2
	echo "chromium.sh: chromium: run 'bash scripts/tools/chromium.sh' (or 'make tools') as root on Debian/Ubuntu, install it yourself ('apt-get install chromium'), or set TOLLWAY_CHROMIUM to its path." >&2
	exit 1
}

find_chromium() {
	if [[ -n "${TOLLWAY_CHROMIUM:-}" ]]; then
		[[ -x "$TOLLWAY_CHROMIUM" ]] || die "TOLLWAY_CHROMIUM=$TOLLWAY_CHROMIUM is not an executable file"
		echo "$TOLLWAY_CHROMIUM"
		return 0
	fi
	local found=""
	for name in chromium chromium-browser; do
		found="$(command -v "$name" 2>/dev/null || true)"
		[[ -n "$found" ]] && break
	done
	if [[ -z "$found" && -x /usr/bin/chromium ]]; then found=/usr/bin/chromium; fi
	[[ -n "$found" ]] || return 1
	echo "$found"
}

if path="$(find_chromium)"; then
	echo "$path"
	exit 0
fi

# shellcheck source=lib/apt.sh
source "$(dirname "$0")/lib/apt.sh"
apt_install "chromium" chromium

path="$(find_chromium)" || die "chromium was installed but cannot be found"
echo "$path"
