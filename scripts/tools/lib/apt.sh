# shellcheck shell=bash
# Shared by redis.sh and postgres.sh (sourced, not run): installing one of Debian's packages for a
# test tool that is not on the machine yet. Source it after defining die.

# Install Debian package $2 for the tool named $1 (for the messages), as root, without letting the
# package start or enable its own system service: the tests start their own servers on free ports.
apt_install() {
	local what="$1" package="$2"
	[[ "${TOLLWAY_TOOLS_NO_BUILD:-}" == "1" ]] && die "$what is not installed (TOLLWAY_TOOLS_NO_BUILD=1: not installing it now)"
	[[ "$(id -u)" == "0" ]] || die "$what is not installed and installing Debian's package needs root"
	command -v apt-get >/dev/null 2>&1 || die "$what is not installed and apt-get is not available here"

	echo "$(basename "$0"): installing Debian's $package package" >&2
	export DEBIAN_FRONTEND=noninteractive
	# policy-rc.d 101: the package must not start (or enable) its own system service.
	local policy=/usr/sbin/policy-rc.d created_policy=0
	if [[ ! -e "$policy" ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		created_policy=1
	fi
	local rc=0
	{ apt-get update >&2 && apt-get install -y --no-install-recommends "$package" >&2; } || rc=$?
	# An `if`, not `[[ … ]] && rm`: a false test as the last command would become the exit code.
	if [[ "$created_policy" == "1" ]]; then rm -f "$policy"; fi
	[[ "$rc" == "0" ]] || die "apt-get install $package failed"
}
