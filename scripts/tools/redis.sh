#!/usr/bin/env bash
# redis-server: the real Redis the quota tests run against. Prints the path of redis-server.
#
#   TOLLWAY_REDIS_SERVER set   use that binary; install nothing.
#   redis-server on PATH       (or in /usr/bin, /usr/sbin, /usr/local/bin) use it.
#   otherwise, as root         install Debian's package: apt-get update && apt-get install -y redis-server
#                              (the package's own service is not started; the tests start their own
#                              redis-server on a free port).
#   TOLLWAY_TOOLS_NO_BUILD=1   fail instead of installing (the test harness sets it).
set -euo pipefail

die() {
	echo "redis.sh: error: $*" >&2
	echo "redis.sh: redis-server (Redis >= 6.2): run 'bash scripts/tools/redis.sh' (or 'make tools') as root on Debian/Ubuntu, install it yourself ('apt-get install redis-server', 'brew install redis'), or set TOLLWAY_REDIS_SERVER to its path." >&2
	exit 1
}

find_redis() {
	if [[ -n "${TOLLWAY_REDIS_SERVER:-}" ]]; then
		[[ -x "$TOLLWAY_REDIS_SERVER" ]] || die "TOLLWAY_REDIS_SERVER=$TOLLWAY_REDIS_SERVER is not an executable file"
		echo "$TOLLWAY_REDIS_SERVER"
		return 0
	fi
	local found
	found="$(command -v redis-server 2>/dev/null || true)"
	if [[ -z "$found" ]]; then
		for candidate in /usr/bin/redis-server /usr/sbin/redis-server /usr/local/bin/redis-server; do
			if [[ -x "$candidate" ]]; then
				found="$candidate"
				break
			fi
		done
	fi
	[[ -n "$found" ]] || return 1
	echo "$found"
}

if path="$(find_redis)"; then
	echo "$path"
	exit 0
fi

# shellcheck source=lib/apt.sh
source "$(dirname "$0")/lib/apt.sh"
apt_install "redis-server" redis-server

path="$(find_redis)" || die "redis-server was installed but cannot be found"
echo "$path"
