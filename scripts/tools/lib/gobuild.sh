# shellcheck shell=bash
# Shared by kube.sh and jaeger.sh (sourced, not run): building a pinned Go tool once into the tools
# cache. Source it after defining log, die, MIN_GO_MINOR and cache.

# The local Go toolchain (>= 1.$MIN_GO_MINOR) on PATH; $1 names what is built, for the error.
need_go() {
	local what="$1" v minor
	# A non-interactive shell may lack the profile that puts the toolchain on PATH.
	if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
		PATH="/usr/local/go/bin:$PATH"
	fi
	command -v go >/dev/null 2>&1 || die "'go' is not on PATH; building $what needs Go >= 1.$MIN_GO_MINOR"
	v="$(go env GOVERSION 2>/dev/null || true)"
	minor="$(sed -nE 's/^go1\.([0-9]+).*/\1/p' <<<"$v")"
	[[ -n "$minor" && "$minor" -ge "$MIN_GO_MINOR" ]] || die "Go >= 1.$MIN_GO_MINOR is needed to build $what, found '${v:-none}'"
}

# One build of tool $1 at a time: hold "$cache/.$1.lock" on fd 9, waiting for another build first.
# shellcheck disable=SC2154 # cache is the sourcing script's
build_lock() {
	mkdir -p "$cache"
	exec 9>"$cache/.$1.lock"
	if ! flock -n 9; then
		log "another $1.sh is building; waiting for it"
		flock 9
	fi
}

# Put the folder of built binaries $1 in place as $2, in one rename.
install_build() {
	rm -rf "$2.tmp" "$2"
	mv "$1" "$2.tmp"
	mv "$2.tmp" "$2"
}
