// Package integration holds Berth's integration tests: the real agentd and
// agentctl binaries, a real Docker engine and a real registry on 127.0.0.1.
// Its tests skip without an engine, except in CI (or under scripts/test.sh),
// where a missing engine is a failure.
package integration
