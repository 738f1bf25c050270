// Package packaging holds the files Berth's .deb and .rpm carry, and the
// tests that build and install them.
//
// The files: agentd.yaml (the commented default config, installed as
// /etc/berth/agentd.yaml), berth.sysusers and berth.tmpfiles (the user,
// group and state directory), and the maintainer scripts postinstall.sh,
// preremove.sh and postremove.sh. ../goreleaser.yaml builds the packages and
// the release archives; ../scripts/install.sh installs an archive on hosts
// without the packages.
//
// config_test.go checks the default config against agent/config on every
// run. packaging_test.go runs `goreleaser check`, builds a snapshot release
// (linux, this machine's architecture) and installs the .deb and the archive
// in containers of the Debian base image; it installs tools and builds
// images, so it runs only when CI or BERTH_REQUIRE_DOCKER is set, and then
// fails rather than skips when something it needs is missing.
package packaging
