#!/usr/bin/env bash
# Install the tools the deploy tests run, once; a no-op when they are already there.
#   promtool + prometheus  Debian's `prometheus` package (rule checks, rule unit tests, and a
#                          real server scraping a real worker in an integration test)
#   kustomize              built from the Go module proxy into .venv/bin (renders the
#                          Kubernetes overlays exactly as `kubectl apply -k` would)
#   composecheck           our Go program (deploy/tools/composecheck) that loads
#                          docker-compose.yml with compose-go, as `docker compose config` does
# Runs from the Makefile's test target; CI runs as root. Tests fail (never skip) without them.
set -euo pipefail

KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.1}"
BIN_DIR="${1:-.venv/bin}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "install-test-tools: need root (or sudo) to run: $*" >&2; return 1; fi
}

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "install-test-tools: installing Debian's prometheus package (promtool + server)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
  # The package enables a system service; the tests start their own server on a free port.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif command -v service >/dev/null; then
    as_root service prometheus stop >/dev/null 2>&1 || true
  fi
fi

need_go() {
  if ! command -v go >/dev/null; then
    echo "install-test-tools: kustomize and composecheck are built with Go; install Go 1.24+" >&2
    exit 1
  fi
}

if ! "$BIN_DIR/kustomize" version 2>/dev/null | grep -qx "$KUSTOMIZE_VERSION"; then
  need_go
  echo "install-test-tools: building kustomize $KUSTOMIZE_VERSION into $BIN_DIR"
  mkdir -p "$BIN_DIR"
  GOBIN="$(cd "$BIN_DIR" && pwd)" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

CHECKER_SRC="$(dirname "$0")/composecheck"
CHECKER_BIN="$(cd "$BIN_DIR" && pwd)/composecheck"
if [ ! -x "$CHECKER_BIN" ] || [ "$CHECKER_SRC/main.go" -nt "$CHECKER_BIN" ] \
    || [ "$CHECKER_SRC/go.sum" -nt "$CHECKER_BIN" ]; then
  need_go
  echo "install-test-tools: building composecheck into $BIN_DIR"
  (cd "$CHECKER_SRC" && go build -o "$CHECKER_BIN" .)
fi
