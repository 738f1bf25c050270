#!/usr/bin/env bash
# demo.sh: Berth deploying the reference Django stack (examples/django:
# Django + gunicorn, Celery worker and beat, PostgreSQL, RabbitMQ, nginx) on
# this machine, the way CI would. It installs what is missing
# (scripts/setup-host.sh) and runs scripts/e2e.sh, which builds the images
# on a Debian base image, pushes them to a local registry, starts agentd,
# and then: deploys v1 over SSH; deploys v2 (with a migration) through the
# pipeline's GitLab deploy job under steady HTTP load and Celery work;
# deploys a broken v3, which is rolled back; runs `agentctl rollback` to
# v1; shows status and history after each step and a table at the end.
#
# Everything is removed at the end; BERTH_DEMO_KEEP=1 leaves the stack,
# agentd and the registry running (it prints where), to look at with
# agentctl, docker and curl http://127.0.0.1:8080/orders/.
# Usage: sudo scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
E2E_KEEP=${BERTH_DEMO_KEEP:-0} exec scripts/e2e.sh
