#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting, builds, runs every test.
# The tests start their own throwaway PostgreSQL cluster; with CI=true a missing server fails the
# run instead of skipping the database tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
swift format lint --strict --recursive Package.swift Sources Tests Benchmarks/Package.swift Benchmarks/Benchmarks Benchmarks/Support
swift build --build-tests
swift test --skip-build
