// Package swarm holds the integration tests of Berth's Swarm backend
// (projects.NAME.backend: swarm): agentd and agentctl against a one-node
// swarm on the test engine, and against a three-node swarm of engines in
// containers (internal/dindswarm). They skip without Docker unless
// BERTH_REQUIRE_DOCKER (or CI) is set.
package swarm
