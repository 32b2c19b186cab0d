#!/usr/bin/env bash
# PostgreSQL: the real database the ledger tests run against. Prints the bin directory holding
# initdb, pg_ctl and postgres (the tests make a private cluster with initdb on a free port).
#
#   TOLLWAY_POSTGRES_BIN set   use that directory; install nothing.
#   initdb found               in /usr/lib/postgresql/<newest>/bin (Debian) or on PATH: use it.
#   otherwise, as root         install Debian's package: apt-get update && apt-get install -y postgresql
#                              (the package's own cluster and service are not started).
#   TOLLWAY_TOOLS_NO_BUILD=1   fail instead of installing (the test harness sets it).
set -euo pipefail

die() {
	echo "postgres.sh: error: $*" >&2
	echo "postgres.sh: PostgreSQL (>= 13; initdb, pg_ctl, postgres): run 'bash scripts/tools/postgres.sh' (or 'make tools') as root on Debian/Ubuntu, install it yourself ('apt-get install postgresql', 'brew install postgresql'), or set TOLLWAY_POSTGRES_BIN to its bin directory." >&2
	exit 1
}

find_postgres() {
	if [[ -n "${TOLLWAY_POSTGRES_BIN:-}" ]]; then
		[[ -x "$TOLLWAY_POSTGRES_BIN/initdb" && -x "$TOLLWAY_POSTGRES_BIN/pg_ctl" ]] \
			|| die "TOLLWAY_POSTGRES_BIN=$TOLLWAY_POSTGRES_BIN holds no initdb and pg_ctl"
		echo "$TOLLWAY_POSTGRES_BIN"
		return 0
	fi
	local dir
	# Debian keeps each major version's binaries apart; the newest one wins.
	for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
			echo "$dir"
			return 0
		fi
	done
	local found
	found="$(command -v initdb 2>/dev/null || true)"
	[[ -n "$found" ]] || return 1
	dir="$(dirname "$(readlink -f "$found")")"
	[[ -x "$dir/pg_ctl" && -x "$dir/postgres" ]] || return 1
	echo "$dir"
}

if path="$(find_postgres)"; then
	echo "$path"
	exit 0
fi

# shellcheck source=lib/apt.sh
source "$(dirname "$0")/lib/apt.sh"
apt_install "PostgreSQL" postgresql

path="$(find_postgres)" || die "PostgreSQL was installed but initdb cannot be found"
echo "$path"
